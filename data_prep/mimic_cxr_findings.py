"""MIMIC-CXR-JPG v2.x (PhysioNet, credentialed), its five findings as the MedGemma report scored them, as downloaded:

    RAW/files/pXX/pSUBJECT/sSTUDY/<dicom_id>.jpg
    RAW/mimic-cxr-2.0.0-split.csv.gz           dicom_id, study_id, subject_id, split (train/validate/test)
    RAW/mimic-cxr-2.0.0-metadata.csv.gz        dicom_id, subject_id, study_id, ..., ViewPosition, ...
    RAW/mimic-cxr-2.0.0-chexpert.csv.gz        subject_id, study_id, 14 labels (the CheXpert labeler's), or with
    RAW/mimic-cxr-2.0.0-negbio.csv.gz          --labeler negbio the NegBio labeler's (the same columns)
    RAW/mimic-cxr-2.1.0-test-set-labeled.csv   --test-labels radiologist: study_id, 14 labels of the test split's
                                               studies read by one radiologist (v2.1.0; it names Lung Opacity
                                               "Airspace Opacity", which none of the five findings is)

(each CSV gzipped as published, or unzipped; no reports needed). One row per study: its frontal film (PA before AP,
--views; the first readable one), stored as `mimic_cxr` stores films, and its labels for atelectasis, cardiomegaly,
consolidation, edema and pleural effusion (the columns Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural
Effusion), coded 1.0 / 0.0 / -1.0 (uncertain) / blank (not mentioned) and read by --uncertain and --unmentioned
(data_prep/_findings.py). The official split is kept (`validate` becomes `validation`). A study without a label row
is skipped; subject, study and image ids are stored as keyed hashes, and skipped studies and images are listed by
hash in prep_report.json and in clear on the terminal only.

The MedGemma report's figure on these labels (MedGemma 4B IT 40.5 macro F1) is on the MAIRA test set: 2,461 studies
of the official test split, selected as MAIRA-1 (Hyland et al. 2023) selected them, uncertain and unmentioned labels
read as negative (this reader's defaults). That selection is not public: the test split here holds every usable test
study, compared with 2,461 in a note. The report's other MIMIC-CXR figure (88.9), on the Med-Gemini test set of
1,532 studies, used radiologists' adjudicated labels (Yang et al. 2024), which are not public either: it cannot be
reproduced from this download.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep import _findings
from data_prep._common import PrepError, PrepReport
from data_prep._findings import CHEXPERT_COLUMNS, Candidate, Film, LabelPolicy, read_codes, write_csv
from data_prep.mimic_cxr import (METADATA_CSV, SPLIT_CSV, find_csv, list_studies, read_csv, study_folder,
                                synthetic_dicom_id)
from medtune.tasks.cxr_findings import FIVE_FINDINGS

LABEL_CSVS = {"chexpert": "mimic-cxr-2.0.0-chexpert.csv.gz", "negbio": "mimic-cxr-2.0.0-negbio.csv.gz"}
RADIOLOGIST_CSV = "mimic-cxr-2.1.0-test-set-labeled.csv"
PUBLISHED_TEST = (2461, "studies of the official test split (one frontal film each)",
                  "the MedGemma technical report (Table 2), on the MAIRA test set: Hyland et al. 2023's selection from "
                  "the official test split, which is not public,")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _findings.add_arguments(parser)
    parser.add_argument("--labeler", choices=tuple(LABEL_CSVS), default="chexpert",
                        help=f"whose labels: chexpert ({LABEL_CSVS['chexpert']}, default: the report's 'original "
                             f"labels') or negbio ({LABEL_CSVS['negbio']})")
    parser.add_argument("--test-labels", choices=("labeler", "radiologist"), default="labeler",
                        help=f"the test split's labels: the labeler's (default, as the report) or radiologist: "
                             f"{RADIOLOGIST_CSV} (MIMIC-CXR-JPG 2.1.0; a test study it does not list is skipped)")
    parser.add_argument("--views", default="PA,AP", help="ViewPositions a study's film may have, in order of "
                                                         "preference (default PA,AP: frontal views)")


# ----------------------------------------------------------------------------- labels and films
def read_labels(src: Path, name: str, report: PrepReport) -> dict[str, dict[str, str]]:
    """study_id -> its row of the label CSV `name`."""
    rows = read_csv(find_csv(src, name), ("study_id",), report, may_be_empty=tuple(CHEXPERT_COLUMNS.values()))
    return {row["study_id"]: row for row in rows}


def list_films(src: Path, views: list[str], label_csvs: dict[str, str], policy: LabelPolicy,
               report: PrepReport) -> list[Film]:
    """A film for each study with a frontal image and a readable label row (`label_csvs`: split -> its label CSV);
    the others skipped and listed."""
    labels = {name: read_labels(src, name, report) for name in set(label_csvs.values())}
    films = []
    for study in list_studies(src, views, report):
        row = labels[label_csvs[study.split]].get(study.study)
        if row is None:
            report.skip_hashed("study ", study.name, f"no row in {label_csvs[study.split]}")
            continue
        read, problem = read_codes(policy, row, tuple(CHEXPERT_COLUMNS.values()))
        if problem:
            report.skip_hashed("study ", study.name, problem)
            continue
        candidates = tuple(Candidate(study.image_dir / f"{dicom_id}.jpg", f"{study.study}/{dicom_id}", view)
                           for dicom_id, view in study.images)
        films.append(Film(study.split, study.subject, study.study, study.name, candidates, read, prefix="study "))
    return films


# ----------------------------------------------------------------------------- prepare
def prepare(src: Path, out: Path, args: argparse.Namespace) -> PrepReport:
    views = [v.strip().upper() for v in args.views.split(",") if v.strip()]
    if not views:
        raise PrepError("--views names no view: use e.g. PA,AP")
    task = _findings.findings_task(FIVE_FINDINGS, args.protocol)
    report = _findings.new_report("mimic_cxr_findings", src, task, args, split="official", views=views,
                                  labeler=args.labeler, test_labels=args.test_labels)
    if not (src / "files").is_dir():
        raise PrepError(f"{src} has no files/ folder: download MIMIC-CXR-JPG from PhysioNet into it")
    label_csvs = {split: LABEL_CSVS[args.labeler] for split in _findings.SPLITS}
    if args.test_labels == "radiologist":
        label_csvs["test"] = RADIOLOGIST_CSV
        report.notes.append(f"test: labels from {RADIOLOGIST_CSV} (one radiologist); the report's MAIRA figure used "
                            "the labeler's")
    films = _findings.one_split_per_patient(list_films(src, views, label_csvs, LabelPolicy.of(args), report), report)
    if not films:
        raise PrepError(f"no study in {SPLIT_CSV} has a {'/'.join(views)} image and a label row", report)
    return _findings.write_films(films, task, out, args, report, published_test=PUBLISHED_TEST)


# ----------------------------------------------------------------------------- synthetic stand-in
LABEL_COLUMNS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
                 "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
                 "Pneumothorax", "Support Devices")  # the label CSVs' columns after subject_id and study_id
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
                    "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning")


def _label_values(codes: list[str], present: list[int], rng: np.random.Generator) -> list[str]:
    """The 14 label columns of a study whose five findings are coded `codes`."""
    five = dict(zip(CHEXPERT_COLUMNS.values(), codes))
    others = {"No Finding": "" if any(present) else "1.0", "Support Devices": str(rng.choice(["", "1.0"]))}
    return [five.get(column, others.get(column, "")) for column in LABEL_COLUMNS]


def synthesize(out: Path, seed: int = 0, subjects: int = 24, size: int = 96) -> None:
    """MIMIC-CXR-JPG's layout, small: gzipped split, metadata, CheXpert and NegBio label CSVs (the two labelers
    coding the unseen findings differently), the radiologist's test labels (2.1.0), lateral views beside the frontal
    ones, and the broken entries a download can hold. A film shows each of its findings (data_prep/_findings.py)."""
    rng = np.random.default_rng(seed)
    split_rows, meta_rows, chexpert, negbio, radiologist = [], [], [], [], []

    def add_study(subject: str, split: str, views: list[str], present: list[int], codes: list[str],
                  negbio_codes: list[str] | None = None) -> list[Path]:
        """Writes a study's films (returned, in `views` order) and label rows (NegBio's codes drawn anew unless
        given)."""
        study = str(50000000 + 1000 * len(split_rows) + int(rng.integers(0, 1000)))
        study_dir = out / "files" / study_folder(subject, study)
        study_dir.mkdir(parents=True)
        paths = []
        for view in views:
            dicom_id = synthetic_dicom_id(rng)
            film = _findings.synthetic_film(present, rng, size)
            paths.append(study_dir / f"{dicom_id}.jpg")
            (film.transpose(Image.Transpose.TRANSPOSE) if view == "LATERAL" else film).save(paths[-1], quality=90)
            split_rows.append([dicom_id, study, subject, split])
            meta_rows.append([dicom_id, subject, study, "CHEST (PA AND LAT)", view, str(size), str(size), "21800506",
                              "213014.531", "CHEST (PA AND LAT)", "postero-anterior", "Erect"])
        chexpert.append([subject, study, *_label_values(codes, present, rng)])
        negbio_codes = negbio_codes or _findings.synthetic_codes(present, rng)
        negbio.append([subject, study, *_label_values(negbio_codes, present, rng)])
        if split == "test":
            radiologist.append([study, *_label_values(_findings.synthetic_codes(present, rng), present, rng)])
        return paths

    official = ["train"] * 5 + ["validate"] * 2 + ["test"] * 3
    for s in range(subjects):
        subject = str(10000000 + 1000 * s + int(rng.integers(0, 1000)))
        for n in range(1 + s % 2):
            present = _findings.synthetic_findings(len(CHEXPERT_COLUMNS), rng)
            codes = _findings.synthetic_codes(present, rng)
            if s == n == 0:  # one uncertain and one unmentioned label at least, on findings the film does not show
                present[:2], codes[:2] = [0, 0], ["-1.0", ""]
            views = ["AP" if (s + n) % 4 == 0 else "PA"] + ["LATERAL"] * (s % 3 == 0) + ["AP"] * (s % 5 == 1)
            add_study(subject, official[s % len(official)], views, present, codes, codes if s == n == 0 else None)
    _break_some(add_study, chexpert, negbio, radiologist)
    write_csv(out / SPLIT_CSV, ["dicom_id", "study_id", "subject_id", "split"], split_rows)
    write_csv(out / METADATA_CSV, list(METADATA_COLUMNS), meta_rows)
    for name, rows in ((LABEL_CSVS["chexpert"], chexpert), (LABEL_CSVS["negbio"], negbio)):
        write_csv(out / name, ["subject_id", "study_id", *LABEL_COLUMNS], rows,
                  extra_lines=("10000001,50000001,1.0",))  # a malformed row: 3 fields of 16
    write_csv(out / RADIOLOGIST_CSV, ["study_id", *(c.replace("Lung Opacity", "Airspace Opacity")
                                                    for c in LABEL_COLUMNS)], radiologist)


def _break_some(add_study, chexpert: list, negbio: list, radiologist: list) -> None:
    """The broken studies of a download, each a train study of a subject of its own (the last one excepted)."""
    nothing, blank = [0] * len(CHEXPERT_COLUMNS), [""] * len(CHEXPERT_COLUMNS)
    subjects = iter(str(19000000 + i) for i in range(10))
    add_study(next(subjects), "train", ["PA"], nothing, blank, blank)  # all unmentioned: skipped under exclude
    add_study(next(subjects), "train", ["PA"], nothing, ["0.0"] * len(CHEXPERT_COLUMNS))
    for rows in (chexpert, negbio):  # no label row for that one
        rows.pop()
    add_study(next(subjects), "train", ["PA"], nothing, ["0.0", "0.0", "0.0", "yes", "0.0"])  # not a CheXpert code
    add_study(next(subjects), "train", ["LATERAL"], nothing, blank)  # no frontal view
    _findings.truncate(add_study(next(subjects), "train", ["PA"], nothing, blank)[0])  # its only film cut short
    pa, _ = add_study(next(subjects), "train", ["PA", "AP"], [1, 0, 0, 0, 1], ["1.0", "0.0", "0.0", "0.0", "1.0"])
    pa.unlink()  # listed, missing on disk: the AP film is used
    tested = radiologist[0][0]  # a test subject with a train study too: the train study is skipped
    subject = next(r[0] for r in chexpert if r[1] == tested)
    add_study(subject, "train", ["PA"], nothing, ["0.0"] * len(CHEXPERT_COLUMNS))
    radiologist.pop(1)  # a test study the radiologist did not label
