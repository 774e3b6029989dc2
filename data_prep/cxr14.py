"""NIH ChestX-ray14 (NIH Clinical Center, Wang et al. 2017), with Google's adjudicated labels (Majkowska et al. 2020)
for the three findings the MedGemma report scored, as downloaded:

    RAW/Data_Entry_2017_v2020.csv (or Data_Entry_2017.csv)   Image Index, Finding Labels (pipe-separated),
                                                             Follow-up #, Patient ID, ..., View Position, ...
    RAW/images/00000001_000.png ...                          (the Box release), or
    RAW/images_001/images/... images_012/images/...          (the Kaggle mirror)
    RAW/train_val_list.txt, RAW/test_list.txt                NIH's split: one Image Index a line
    --google-labels DIR: DIR/test_labels.csv, DIR/validation_labels.csv   Google's four_findings_expert_labels:
                         Image Index, Patient ID, Fracture, Pneumothorax, Airspace opacity, Nodule or mass (YES/NO)

One row per image: the film, stored as `mimic_cxr` stores films, and its labels for lung opacity (Google's "Airspace
opacity"), pneumothorax and fracture, the last asked "Are there any fractures in the image?" (the report's
exception). The report's CXR14 figure (MedGemma 4B IT 50.1 macro F1) is on Google's labels: test is Google's
test_labels.csv (1,962 images), validation Google's validation_labels.csv, train NIH's train_val_list.txt less the
patients of those two. NIH's own Finding Labels name pneumothorax but neither fracture nor lung opacity: train rows
score pneumothorax only (the other two are -1, not scored); without --google-labels, test is NIH's test_list.txt read
the same way (not the report's figure) and validation 10% of train's patients (--seed). Patients are stored as keyed
hashes and never in two splits (a patient in several keeps its test, else validation, images; its others are
skipped and listed). Image names hold the patient: skipped images are listed by keyed hash, in clear on the terminal
only.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep import _findings
from data_prep._common import PrepError, PrepReport
from data_prep._findings import Candidate, Film, FindingLabels, write_csv
from data_prep.mimic_cxr import read_csv
from medtune.tasks._findings import ABSENT, NOT_SCORED, PRESENT
from medtune.tasks.cxr_findings import CXR14_FINDINGS

DATA_ENTRY_CSVS = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
NIH_LISTS = {"train": "train_val_list.txt", "test": "test_list.txt"}
GOOGLE_CSVS = {"test": "test_labels.csv", "validation": "validation_labels.csv"}
GOOGLE_COLUMNS = {"lung_opacity": "Airspace opacity", "pneumothorax": "Pneumothorax", "fracture": "Fracture"}
GOOGLE_VALUES = {"YES": PRESENT, "NO": ABSENT}
NIH_PNEUMOTHORAX = "Pneumothorax"  # the one of the three findings NIH's Finding Labels name
NOT_IN_NIH = "not in NIH's labels"
PUBLISHED_TEST = (1962, "images with Google's adjudicated labels", "the MedGemma technical report (Table 2)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _findings.add_arguments(parser, label_policies=False, draws_validation=True)
    parser.add_argument("--google-labels", type=Path, default=None, metavar="DIR",
                        help="the folder of Google's test_labels.csv and validation_labels.csv (a path under --src "
                             "will do): the report's test set. Without it, test is NIH's test_list.txt, with "
                             "pneumothorax scored alone")


# ----------------------------------------------------------------------------- the download
@dataclass(frozen=True)
class Download:
    src: Path
    entries: dict[str, dict[str, str]]  # Image Index -> its row of the Data_Entry CSV
    files: dict[str, Path]  # Image Index -> its file, in either layout

    @classmethod
    def read(cls, src: Path, report: PrepReport) -> "Download":
        path = next((src / name for name in DATA_ENTRY_CSVS if (src / name).is_file()), None)
        if path is None:
            raise PrepError(f"{src} has no {' or '.join(DATA_ENTRY_CSVS)}: point --src at the ChestX-ray14 download")
        rows = read_csv(path, ("Image Index", "Patient ID"), report, may_be_empty=("Finding Labels", "View Position"))
        files = {path.name: path for pattern in ("images/*.png", "images_*/images/*.png") for path in src.glob(pattern)}
        return cls(src, {row["Image Index"]: row for row in rows}, files)

    def listed(self, split: str) -> list[str]:
        """The Image Indexes of NIH's list for `split`."""
        path = self.src / NIH_LISTS[split]
        if not path.is_file():
            raise PrepError(f"{self.src} has no {NIH_LISTS[split]}: it comes with the ChestX-ray14 download")
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def film(self, split: str, name: str, patient: str, labels: FindingLabels) -> Film:
        view = self.entries.get(name, {}).get("View Position", "")
        candidate = Candidate(self.files.get(name, self.src / "images" / name), name, view)
        return Film(split, patient_id(patient), Path(name).stem, name, (candidate,), labels)


def patient_id(value: str) -> str:
    """A Patient ID as NIH writes it (Google's files may pad it with zeros)."""
    return value.lstrip("0") or "0"


def google_dir(src: Path, given: Path) -> Path:
    for folder in (given, src / given):
        if all((folder / name).is_file() for name in GOOGLE_CSVS.values()):
            return folder
    raise PrepError(f"--google-labels {given} holds no {' and '.join(GOOGLE_CSVS.values())}: download them from "
                    "gs://gcs-public-data--healthcare-nih-chest-xray-labels/four_findings_expert_labels/")


# ----------------------------------------------------------------------------- films
def nih_films(download: Download, split: str, report: PrepReport) -> list[Film]:
    """The films of NIH's list for `split`, pneumothorax scored from Finding Labels, the other two not."""
    films = []
    for name in download.listed(split):
        entry = download.entries.get(name)
        if entry is None:
            report.skip_hashed("image ", name, f"in {NIH_LISTS[split]}, without a row in the Data_Entry CSV")
            continue
        found = NIH_PNEUMOTHORAX in entry["Finding Labels"].split("|")
        labels = FindingLabels((NOT_SCORED, PRESENT if found else ABSENT, NOT_SCORED), (NOT_IN_NIH, "", NOT_IN_NIH))
        films.append(download.film(split, name, entry["Patient ID"], labels))
    return films


def google_films(download: Download, folder: Path, split: str, report: PrepReport) -> list[Film]:
    """The films of Google's labels for `split`, the three findings scored."""
    path = folder / GOOGLE_CSVS[split]
    films = []
    for row in read_csv(path, ("Image Index", "Patient ID", *GOOGLE_COLUMNS.values()), report):
        values = [GOOGLE_VALUES.get(row[column].upper()) for column in GOOGLE_COLUMNS.values()]
        if None in values:
            bad = list(GOOGLE_COLUMNS.values())[values.index(None)]
            report.skip_hashed("image ", row["Image Index"], f"{bad} is {row[bad]!r} in {path.name}, not YES or NO")
            continue
        labels = FindingLabels(tuple(values), ("",) * len(values))
        films.append(download.film(split, row["Image Index"], row["Patient ID"], labels))
    return films


def list_films(src: Path, args: argparse.Namespace, report: PrepReport) -> list[Film]:
    """Google's test and validation films and NIH's train films less those two's patients; without Google's labels,
    NIH's train and test films and validation drawn from train. Each patient in one split."""
    download = Download.read(src, report)
    train = nih_films(download, "train", report)
    report.notes.append("train: NIH's Finding Labels name pneumothorax but neither lung opacity nor fracture: "
                        "train rows score pneumothorax only (lung_opacity and fracture -1, not scored)")
    if args.google_labels is None:
        report.notes.append(f"test: NIH's {NIH_LISTS['test']} with NIH's labels (pneumothorax only), not the "
                            f"report's {PUBLISHED_TEST[0]:,} images with Google's adjudicated labels "
                            f"(--google-labels); validation: 10% of train's patients (seed {args.seed})")
        films = _findings.one_split_per_patient([*train, *nih_films(download, "test", report)], report)
        return _findings.draw_validation(films, args.seed)
    folder = google_dir(src, args.google_labels)
    google = [film for split in GOOGLE_CSVS for film in google_films(download, folder, split, report)]
    theirs, labelled = {film.patient for film in google}, {film.name for film in google}
    unlabelled = sum(name not in labelled for name in download.listed("test"))
    report.notes += [f"train: {sum(f.patient in theirs for f in train):,} images of {NIH_LISTS['train']} left out: "
                     "their patients are in Google's test or validation labels",
                     f"{unlabelled:,} images of {NIH_LISTS['test']} without Google's labels are not used"]
    return _findings.one_split_per_patient([*google, *(f for f in train if f.patient not in theirs)], report)


# ----------------------------------------------------------------------------- prepare
def prepare(src: Path, out: Path, args: argparse.Namespace) -> PrepReport:
    task = _findings.findings_task(CXR14_FINDINGS, args.protocol)
    report = _findings.new_report("cxr14", src, task, args, seed=args.seed,
                                  labels="google" if args.google_labels else "nih")
    films = list_films(src, args, report)
    return _findings.write_films(films, task, out, args, report,
                                 published_test=PUBLISHED_TEST if args.google_labels else None)


# ----------------------------------------------------------------------------- synthetic stand-in
DATA_ENTRY_COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
                      "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]")
GOOGLE_HEADER = ("Image Index", "Patient ID", "Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass")


def _finding_labels(present: list[int], rng: np.random.Generator) -> str:
    """NIH's Finding Labels of a film showing `present` (lung opacity, pneumothorax, fracture): Pneumothorax where
    it shows, Infiltration for some opacities (NIH has no opacity label), No Finding where nothing is named."""
    named = [*(["Infiltration"] if present[0] and rng.random() < 0.5 else []),
             *([NIH_PNEUMOTHORAX] if present[1] else []), *(["Nodule"] if rng.random() < 0.1 else [])]
    return "|".join(named) or "No Finding"


def synthesize(out: Path, seed: int = 0, size: int = 96, layout: str = "box", patients: int = 30) -> None:
    """ChestX-ray14's Data_Entry CSV, images (layout "box": images/ and Data_Entry_2017_v2020.csv; "kaggle":
    images_001/images/, images_002/images/ and Data_Entry_2017.csv), NIH's two lists, Google's labels in
    four_findings_expert_labels/, and the broken entries a download can hold. Google's test images are NIH test
    images, its validation images NIH train_val ones; a few NIH test patients have no Google labels."""
    rng = np.random.default_rng(seed)
    entries, lists, google = [], {"train": [], "test": []}, {"test": [], "validation": []}
    written: list[Path] = []

    def add_image(patient: int, follow_up: int, split: str, present: list[int], google_split: str | None) -> None:
        name = f"{patient:08d}_{follow_up:03d}.png"
        folder = out / ("images" if layout == "box" else f"images_{1 + len(written) % 2:03d}/images")
        folder.mkdir(parents=True, exist_ok=True)
        _findings.synthetic_film(present, rng, size).save(folder / name)
        written.append(folder / name)
        entries.append([name, _finding_labels(present, rng), str(follow_up), str(patient),
                        str(int(rng.integers(20, 90))), str(rng.choice(["M", "F"])), str(rng.choice(["PA", "AP"])),
                        "2500", "2048", "0.143", "0.143"])
        lists[split].append(name)
        if google_split:
            yes_no = ["YES" if p else "NO" for p in present]
            google[google_split].append([name, f"{patient:08d}", yes_no[2], yes_no[1], yes_no[0],
                                         "YES" if rng.random() < 0.1 else "NO"])

    for patient in range(1, patients + 1):
        split = "test" if patient % 3 == 0 else "train"
        google_split = ("test" if patient % 9 else None) if split == "test" else \
            ("validation" if patient % 5 == 1 else None)
        for follow_up in range(1 + patient % 2):
            add_image(patient, follow_up, split, _findings.synthetic_findings(len(CXR14_FINDINGS), rng), google_split)
    # the broken entries, on patients of their own
    _findings.truncate(written[entries.index(next(e for e in entries if e[3] == "2"))])  # a train film cut short
    add_image(patients + 1, 0, "train", [0, 0, 0], None)
    written[-1].unlink()  # listed, missing on disk
    add_image(patients + 2, 0, "train", [0, 1, 0], None)
    add_image(patients + 2, 1, "test", [0, 1, 0], None)  # a patient in both of NIH's lists
    malformed = f"{patients + 3:08d}_000.png"
    lists["train"].append(malformed)
    write_csv(out / DATA_ENTRY_CSVS[0 if layout == "box" else 1], DATA_ENTRY_COLUMNS, entries,
              extra_lines=(f"{malformed},No Finding,0",))
    for split, names in lists.items():
        (out / NIH_LISTS[split]).write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
    folder = out / "four_findings_expert_labels"
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in google.items():
        write_csv(folder / GOOGLE_CSVS[split], GOOGLE_HEADER, rows,
                  extra_lines=("00000002_000.png,00000002,NO",) if split == "validation" else ())  # malformed
