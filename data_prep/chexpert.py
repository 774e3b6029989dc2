"""CheXpert (Stanford AIMI, Irvin et al. 2019), its five findings as the MedGemma report scored them, as downloaded:

    RAW/CheXpert-v1.0/ (or CheXpert-v1.0-small/)
        train.csv, valid.csv   Path, Sex, Age, Frontal/Lateral, AP/PA, then 14 labels; Path relative to RAW
                               (CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg)
        train/patientNNNNN/studyN/viewN_frontal.jpg (_lateral.jpg), valid/...
    RAW/CheXpert/              the test set of the CheXlocalize release, when present:
        test_labels.csv        Path (test/patient64741/study1/view1_frontal.jpg, relative to CheXpert/), 14 labels;
                               no Sex, Age or view columns: the view is read from the file name
        test/patientNNNNN/studyN/viewN_*.jpg

One row per image: the film, stored as `mimic_cxr` stores films, and its labels for atelectasis, cardiomegaly,
consolidation, edema and pleural effusion (the columns Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural
Effusion), coded 1.0 / 0.0 / -1.0 (uncertain, train.csv only: valid.csv and the test set are radiologists' 0 or 1) /
blank (not mentioned) and read by --uncertain and --unmentioned (data_prep/_findings.py). Frontal films only by
default (--views all keeps the lateral ones).

Splits: train.csv -> train, valid.csv -> validation, the test set -> test: the MedGemma report's CheXpert figure
(MedGemma 4B IT 48.1 macro F1, "the original condition labels") is on its 668 images (500 patients, every view: with
--views frontal the test split holds fewer). Without the test set, valid.csv becomes test and validation is 10% of
train's patients (--seed), as the report's notes say. Patients (patientNNNNN) are stored as keyed hashes and never in
two splits: a patient the publisher put in several keeps its test (else validation) films, its others are skipped and
listed. Image paths hold the patient: skipped images are listed by keyed hash, in clear on the terminal only.
"""
from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep import _findings
from data_prep._common import PrepError, PrepReport
from data_prep._findings import CHEXPERT_COLUMNS, Candidate, Film, LabelPolicy, read_codes, write_csv
from data_prep.mimic_cxr import read_csv
from medtune.tasks.cxr_findings import FIVE_FINDINGS

DATASET_DIRS = ("CheXpert-v1.0", "CheXpert-v1.0-small")  # full size first where both are there
TEST_DIR, TEST_CSV = "CheXpert", "test_labels.csv"
PUBLISHED_TEST = 668  # images of the CheXlocalize test set, frontal and lateral
REPORT_TABLE_2 = "the MedGemma technical report (Table 2)"
VIEW_COLUMNS = ("Frontal/Lateral", "AP/PA")
_PATIENT_STUDY = re.compile(r"(patient\d+)/(study\d+)/")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _findings.add_arguments(parser, draws_validation=True)
    parser.add_argument("--views", choices=("frontal", "all"), default="frontal",
                        help="frontal films only (default), or lateral ones too (the report's 668 test images are "
                             "every view)")


# ----------------------------------------------------------------------------- the download
def dataset_dir(src: Path) -> Path:
    for name in DATASET_DIRS:
        if (src / name / "train.csv").is_file():
            return src / name
    raise PrepError(f"{src} has no {' or '.join(f'{name}/train.csv' for name in DATASET_DIRS)}: point --src at the "
                    "folder that holds the CheXpert download (its CSVs' paths are relative to that folder)")


def csv_films(csv_path: Path, root: Path, split: str, policy: LabelPolicy, args: argparse.Namespace,
              report: PrepReport, laterals: Counter) -> list[Film]:
    """A film for each row of a CheXpert CSV (paths relative to `root`) with a readable label and a wanted view;
    lateral films left out are counted in `laterals`."""
    has_views = split != "test"  # test_labels.csv has no view columns (they were removed against re-identification)
    rows = read_csv(csv_path, ("Path",), report,
                    may_be_empty=(*(VIEW_COLUMNS if has_views else ()), *CHEXPERT_COLUMNS.values()))
    films = []
    for row in rows:
        path = row["Path"]
        kind = row["Frontal/Lateral"] if has_views else ("Lateral" if "_lateral" in Path(path).name else "Frontal")
        if args.views == "frontal" and kind != "Frontal":
            laterals[split] += 1
            continue
        found = _PATIENT_STUDY.search(path)
        if not found:
            report.skip_hashed("image ", path, "no patientNNNNN/studyN/ in its Path")
            continue
        labels, problem = read_codes(policy, row, tuple(CHEXPERT_COLUMNS.values()))
        if problem:
            report.skip_hashed("image ", path, problem)
            continue
        view = (row["AP/PA"] if has_views else "") or kind
        films.append(Film(split, found[1], f"{found[1]}/{found[2]}", path, (Candidate(root / path, path, view),),
                          labels))
    return films


def list_films(src: Path, has_test: bool, policy: LabelPolicy, args: argparse.Namespace,
               report: PrepReport) -> list[Film]:
    """The films of train.csv, valid.csv and the test set (without it, valid.csv as test and validation drawn from
    train), each patient in one split."""
    folder, laterals = dataset_dir(src), Counter()
    films = [*csv_films(folder / "train.csv", src, "train", policy, args, report, laterals),
             *csv_films(folder / "valid.csv", src, "validation" if has_test else "test", policy, args, report,
                        laterals)]
    if has_test:
        films += csv_films(src / TEST_DIR / TEST_CSV, src / TEST_DIR, "test", policy, args, report, laterals)
    else:
        report.notes.append(f"test: valid.csv (radiologists' labels): CheXpert's test set ({TEST_DIR}/{TEST_CSV} "
                            "and its images, from the CheXlocalize release) is not in the source, so this is not the "
                            f"report's {PUBLISHED_TEST} images; validation: 10% of train.csv's patients "
                            f"(seed {args.seed})")
    if laterals:
        report.notes.append("lateral films left out (--views frontal): " +
                            ", ".join(f"{split} {n}" for split, n in sorted(laterals.items())))
    films = _findings.one_split_per_patient(films, report)
    return films if has_test else _findings.draw_validation(films, args.seed)


# ----------------------------------------------------------------------------- prepare
def prepare(src: Path, out: Path, args: argparse.Namespace) -> PrepReport:
    task = _findings.findings_task(FIVE_FINDINGS, args.protocol)
    has_test = (src / TEST_DIR / TEST_CSV).is_file()
    report = _findings.new_report("chexpert", src, task, args, views=args.views, seed=args.seed,
                                  test=f"{TEST_DIR}/{TEST_CSV}" if has_test else "valid.csv")
    films = list_films(src, has_test, LabelPolicy.of(args), args, report)
    what = "images" if args.views == "all" else "frontal images (the report's count every view: --views all)"
    return _findings.write_films(films, task, out, args, report,
                                 published_test=(PUBLISHED_TEST, what, REPORT_TABLE_2) if has_test else None)


# ----------------------------------------------------------------------------- synthetic stand-in
LABEL_COLUMNS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                 "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                 "Fracture", "Support Devices")  # CheXpert's CSVs' label columns, in their order
FIRST_PATIENT = {"train": 1, "valid": 64541, "test": 64741}  # the publisher's numbering of each split's patients


def _labels(present: list[int], codes: list[str]) -> list[str]:
    five = dict(zip(CHEXPERT_COLUMNS.values(), codes))
    return [five.get(column, "" if any(present) or column != "No Finding" else "1.0") for column in LABEL_COLUMNS]


def synthesize(out: Path, seed: int = 0, size: int = 96, patients: dict[str, int] | None = None) -> None:
    """CheXpert-v1.0-small's train.csv and valid.csv, the CheXlocalize test set (CheXpert/test_labels.csv), their
    images (a lateral view beside some frontal ones), and the broken entries a download can hold. train.csv's labels
    hold uncertain and blank codes; valid's and test's are 0 or 1, as the radiologists' are."""
    rng = np.random.default_rng(seed)
    patients = patients or {"train": 20, "valid": 6, "test": 8}
    rows: dict[str, list[list[str]]] = {part: [] for part in patients}
    written = []

    def add_image(part: str, patient: int, study: int, view: int, lateral: bool, present: list[int],
                  codes: list[str]) -> None:
        name = f"{part}/patient{patient:05d}/study{study}/view{view}_{'lateral' if lateral else 'frontal'}.jpg"
        path = out / (TEST_DIR if part == "test" else DATASET_DIRS[1]) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        film = _findings.synthetic_film(present, rng, size)
        (film.transpose(Image.Transpose.TRANSPOSE) if lateral else film).save(path, quality=90)
        written.append(path)
        labels = _labels(present, codes)
        if part == "test":
            rows[part].append([name, *labels])
        else:
            rows[part].append([f"{DATASET_DIRS[1]}/{name}", str(rng.choice(["Female", "Male"])),
                               str(int(rng.integers(20, 90))), "Lateral" if lateral else "Frontal",
                               "" if lateral else str(rng.choice(["AP", "PA"])), *labels])

    for part, count in patients.items():
        for i in range(count):
            for study in range(1, 2 + (i % 3 == 0)):
                present = _findings.synthetic_findings(len(CHEXPERT_COLUMNS), rng)
                codes = (_findings.synthetic_codes(present, rng) if part == "train"
                         else [f"{p:.1f}" for p in present])
                if part == "train" and i == 0 and study == 1:  # an uncertain and a blank label, not shown
                    present[:2], codes[:2] = [0, 0], ["-1.0", ""]
                add_image(part, FIRST_PATIENT[part] + i, study, 1, False, present, codes)
                if (i + study) % 3 == 0:
                    add_image(part, FIRST_PATIENT[part] + i, study, 2, True, present, codes)
    _break_some(add_image, written, FIRST_PATIENT["train"] + patients["train"])
    header = ["Path", "Sex", "Age", *VIEW_COLUMNS, *LABEL_COLUMNS]
    write_csv(out / DATASET_DIRS[1] / "train.csv", header, rows["train"],
              extra_lines=(f"{DATASET_DIRS[1]}/train/patient00002/study9/view1_frontal.jpg,Male,40",))  # malformed
    write_csv(out / DATASET_DIRS[1] / "valid.csv", header, rows["valid"])
    write_csv(out / TEST_DIR / TEST_CSV, ["Path", *LABEL_COLUMNS], rows["test"])


def _break_some(add_image, written: list[Path], free: int) -> None:
    """The broken entries of a download, each a train image of a patient of its own (from number `free`) but the
    last, a patient of valid.csv whom train.csv lists too."""
    nothing, negative = [0] * len(CHEXPERT_COLUMNS), ["0.0"] * len(CHEXPERT_COLUMNS)
    add_image("train", free, 1, 1, False, nothing, [""] * len(CHEXPERT_COLUMNS))  # all unmentioned
    add_image("train", free + 1, 1, 1, False, nothing, ["0.0", "0.0", "2.0", "0.0", "0.0"])  # not a CheXpert code
    add_image("train", free + 2, 1, 1, False, nothing, negative)
    _findings.truncate(written[-1])
    add_image("train", free + 3, 1, 1, False, nothing, negative)
    written[-1].unlink()  # listed, missing on disk
    add_image("train", FIRST_PATIENT["valid"], 5, 1, False, nothing, negative)
