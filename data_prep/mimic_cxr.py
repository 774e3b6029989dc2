"""MIMIC-CXR-JPG v2.x (PhysioNet, credentialed) with the MIMIC-CXR free-text reports, as downloaded:

    RAW/files/pXX/pSUBJECT/sSTUDY/<dicom_id>.jpg
    RAW/files/pXX/pSUBJECT/sSTUDY.txt            the reports (mimic-cxr-reports.zip unzipped over files/),
        or RAW/mimic-cxr-reports/files/pXX/pSUBJECT/sSTUDY.txt   (the zip unzipped on its own)
    RAW/mimic-cxr-2.0.0-split.csv.gz             dicom_id, study_id, subject_id, split (train/validate/test)
    RAW/mimic-cxr-2.0.0-metadata.csv.gz          dicom_id, subject_id, study_id, ..., ViewPosition, ...

One row per study by default: a frontal image (PA before AP), the report's INDICATION in the prompt,
FINDINGS and IMPRESSION as the target. `--with-prior` adds the patient's previous study's frontal image as a
second image (the study before it by StudyDate and StudyTime in the metadata CSV), as a radiologist compares;
the prompt says which image is which, or that the patient has no prior study. The official split is kept
(`validate` becomes `validation`). The 3000 x 2500 JPEGs are decoded at reduced scale and stored at the
model's input size, in parallel (--num-proc). Subject, study and image ids are stored as keyed hashes; skipped
studies and images are listed by hash in prep_report.json and in clear on the terminal only.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import os
import random
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from data_prep._common import (MODEL_IMAGE_SIZE, PrepError, PrepReport, build_split, conversation,
                               conversation_features, group_by, hashed_id, id_key, read_image_resized, save_dataset,
                               staged_output)
from data_prep._report_sections import ReportSections, decode_report, report_sections
from medtune.tasks import get_task

TASK = get_task("report_generation")
SPLIT_CSV, METADATA_CSV = "mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-metadata.csv.gz"
SPLITS = {"train": "train", "validate": "validation", "test": "test"}  # the official names -> ours
REPORT_DIRS = ("files", "mimic-cxr-reports/files")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--views", default="PA,AP", help="ViewPositions to keep, in order of preference "
                                                         "(default PA,AP: frontal views)")
    parser.add_argument("--images-per-study", type=int, default=1,
                        help="rows per study, by view preference (0: every matching image)")
    parser.add_argument("--with-prior", action="store_true",
                        help="add the patient's previous study's frontal image to each row (an `images` column)")
    parser.add_argument("--image-size", type=int, default=MODEL_IMAGE_SIZE,
                        help="stored images are SIZE x SIZE, the model's input (default 896)")
    parser.add_argument("--num-proc", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes reading reports and images (default: up to 8)")
    for split in SPLITS.values():
        parser.add_argument(f"--limit-{split}", type=int, default=None, help=f"use at most N {split} studies")
    parser.add_argument("--seed", type=int, default=42, help="which studies the limits keep")


# ----------------------------------------------------------------------------- CSVs
def read_csv(path: Path, columns: tuple[str, ...], report: PrepReport,
             may_be_empty: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """Rows of a (gzipped) CSV: `columns` must hold values, `may_be_empty` may be blank (MIMIC leaves some
    ViewPositions blank). Rows of the wrong width or with a missing value are skipped and reported."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rt", newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            missing = [c for c in (*columns, *may_be_empty) if c not in header]
            if missing:
                raise PrepError(f"{path.name}: no column {', '.join(missing)} in its header {header[:6]}")
            where = {c: header.index(c) for c in (*columns, *may_be_empty)}  # once, not per row
            for line, values in enumerate(reader, start=2):
                row = {c: values[i].strip() for c, i in where.items()} if len(values) == len(header) else None
                if row is None or not all(row[c] for c in columns):
                    report.skip(f"{path.name}:{line}", "malformed CSV row")
                    continue
                rows.append(row)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise PrepError(f"cannot read {path.name} ({type(e).__name__}: {e}): download it again") from e
    return rows


def find_csv(src: Path, name: str) -> Path:
    """The CSV as published (.csv.gz), or unzipped (.csv)."""
    for path in (src / name, src / name.removesuffix(".gz")):
        if path.is_file():
            return path
    raise PrepError(f"{src} has no {name}: download it from MIMIC-CXR-JPG on PhysioNet into {src}")


# ----------------------------------------------------------------------------- one study (in a worker)
@dataclass(frozen=True)
class Study:
    subject: str
    study: str
    split: str  # ours: train, validation, test
    images: tuple[tuple[str, str], ...]  # (dicom_id, view), in order of preference
    image_dir: Path  # files/pXX/pSUBJECT/sSTUDY
    report: Path | None
    when: str = ""  # StudyDate + StudyTime, sortable ("" where the metadata has no date)
    # --with-prior: the previous study's (study id, frontal images by preference); () when the patient has none;
    # None without --with-prior
    prior: tuple[str, tuple[Path, ...]] | tuple[()] | None = None

    @property
    def name(self) -> str:
        return study_folder(self.subject, self.study)


def study_folder(subject: str, study: str) -> str:
    """The study's path under files/ (pXX/pSUBJECT/sSTUDY), as the publisher lays it out."""
    return f"p{subject[:2]}/p{subject}/s{study}"


def read_prior(study: Study, size: int) -> bytes | None:
    """The first readable frontal image of the study's prior study, or None."""
    for path in study.prior[1] if study.prior else ():
        jpeg, problem = read_image_resized(path, size) if path.is_file() else (None, "missing")
        if not problem:
            return jpeg
    return None


def read_study(study: Study, images_per_study: int, size: int) -> tuple[list[dict], list[tuple[str, str, str]], bool]:
    """(rows, skips as (prefix, identifying name, reason), report was UTF-8). Runs in a worker process."""
    if study.report is None:
        missing = "no report file (sSTUDY.txt under files/ or mimic-cxr-reports/files/)"
        return [], [("study ", study.name, missing)], True
    try:
        text, utf8 = decode_report(study.report.read_bytes())
    except OSError as e:
        return [], [("study ", study.name, f"unreadable report: {e.strerror or e}")], True
    if not text.strip():
        return [], [("study ", study.name, "empty report")], utf8
    sections = report_sections(text)
    if not sections.findings and not sections.impression:
        return [], [("study ", study.name, "report has no FINDINGS or IMPRESSION")], utf8
    answer = TASK.answer(sections.findings, sections.impression)
    rows, skips = [], []
    prior = read_prior(study, size)
    for dicom_id, view in study.images:
        if images_per_study and len(rows) == images_per_study:
            break
        image_name = f"{study.name}/{dicom_id}.jpg"
        if not (study.image_dir / f"{dicom_id}.jpg").is_file():
            skips.append(("files/", image_name, "image listed in the CSVs but missing"))
            continue
        jpeg, problem = read_image_resized(study.image_dir / f"{dicom_id}.jpg", size)
        if problem:
            skips.append(("files/", image_name, problem))
            continue
        rows.append({"dicom_id": dicom_id, "jpeg": jpeg, "view": view, "indication": sections.indication,
                     "findings": sections.findings, "impression": sections.impression, "answer": answer,
                     "prior_jpeg": prior})
    if not rows:
        skips.append(("study ", study.name, "no readable frontal image"))
    return rows, skips, utf8


def _read_study_job(job):  # Pool.imap takes one picklable argument
    return job[0], read_study(*job)


# ----------------------------------------------------------------------------- prepare
def list_studies(src: Path, views: list[str], report: PrepReport) -> list[Study]:
    """Studies with at least one image of the wanted views, from the split and metadata CSVs."""
    split_rows = read_csv(find_csv(src, SPLIT_CSV), ("dicom_id", "study_id", "subject_id", "split"), report)
    metadata = read_csv(find_csv(src, METADATA_CSV), ("dicom_id",), report,
                        may_be_empty=("ViewPosition", "StudyDate", "StudyTime"))
    view_of = {r["dicom_id"]: r["ViewPosition"] for r in metadata}
    when_of = {r["dicom_id"]: f"{r['StudyDate']}{r['StudyTime'].split('.')[0].zfill(6)}" if r["StudyDate"] else ""
               for r in metadata}
    by_study: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
    when: dict[str, str] = {}  # study -> its earliest image's date and time
    other_views: Counter = Counter()
    for row in split_rows:
        if row["split"] not in SPLITS:
            report.skip_hashed(f"{SPLIT_CSV}: ", row["dicom_id"], f"unknown split {row['split']!r}")
            continue
        key = (row["subject_id"], row["study_id"], SPLITS[row["split"]])
        entry = by_study.setdefault(key, [])
        if row["dicom_id"] not in view_of:
            report.skip_hashed(f"{SPLIT_CSV}: ", row["dicom_id"], "no row in the metadata CSV")
            continue
        when[row["study_id"]] = min(filter(None, (when.get(row["study_id"]), when_of[row["dicom_id"]])), default="")
        if view_of[row["dicom_id"]] in views:
            entry.append((row["dicom_id"], view_of[row["dicom_id"]]))
        else:
            other_views[view_of[row["dicom_id"]] or "(none)"] += 1
    if other_views:
        report.notes.append("images of other views left out: " + ", ".join(f"{v} {n}" for v, n in
                                                                           sorted(other_views.items())))
    studies = []
    for (subject, study, split), images in sorted(by_study.items()):
        folder = study_folder(subject, study)
        if not images:
            report.skip_hashed("study ", folder, f"no {'/'.join(views)} image")
            continue
        reports = [src / d / f"{folder}.txt" for d in REPORT_DIRS]
        studies.append(Study(subject, study, split, tuple(sorted(images, key=lambda i: (views.index(i[1]), i[0]))),
                             src / "files" / folder, next((r for r in reports if r.is_file()), None),
                             when.get(study, "")))
    return studies


def with_priors(studies: list[Study]) -> list[Study]:
    """Each study with its prior: the same patient's latest earlier study (by date and time) that has a frontal
    image. A study without a date has no prior and is no one's prior."""
    import dataclasses

    previous: dict[str, Study] = {}
    by_subject = group_by((s for s in studies if s.when), lambda s: s.subject)
    for subject_studies in by_subject.values():
        ordered = sorted(subject_studies, key=lambda s: s.when)
        previous.update({later.study: earlier for earlier, later in zip(ordered, ordered[1:])
                         if earlier.when < later.when})
    def prior(s: Study):
        before = previous.get(s.study)
        return (before.study, tuple(before.image_dir / f"{d}.jpg" for d, _ in before.images)) if before else ()

    return [dataclasses.replace(s, prior=prior(s)) for s in studies]


def _limited(studies: list[Study], limit: int | None, seed: int) -> list[Study]:
    if limit is None or limit >= len(studies):
        return studies
    return sorted(random.Random(seed).sample(studies, limit), key=lambda s: (s.subject, s.study))


def prepare(src: Path, out: Path, args: argparse.Namespace) -> PrepReport:
    from datasets import DatasetDict, Value

    views = [v.strip().upper() for v in args.views.split(",") if v.strip()]
    if not views:
        raise PrepError("--views names no view: use e.g. PA,AP")
    options = {"split": "official", "views": views, "images_per_study": args.images_per_study,
               "with_prior": args.with_prior, "image_size": args.image_size, "seed": args.seed,
               **{f"limit_{s}": getattr(args, f"limit_{s}") for s in SPLITS.values()}}
    report = PrepReport(dataset="mimic_cxr", task={"name": TASK.name}, source=str(src), options=options,
                        hash_key=id_key())
    if not (src / "files").is_dir():
        raise PrepError(f"{src} has no files/ folder: download MIMIC-CXR-JPG from PhysioNet into it")
    listed = list_studies(src, views, report)
    studies = group_by(with_priors(listed) if args.with_prior else listed, lambda s: s.split)
    if not studies:
        raise PrepError(f"no study in {SPLIT_CSV} has a {'/'.join(views)} image")
    key, not_utf8 = report.hash_key, []
    priors = Counter()  # --with-prior: rows with a prior film, without one, with one that could not be read

    def rows(split: str, pool):
        chosen = _limited(studies.get(split, []), getattr(args, f"limit_{split}"), args.seed)
        jobs = [(study, args.images_per_study, args.image_size) for study in chosen]
        results = pool.imap(_read_study_job, jobs, chunksize=4) if pool else map(_read_study_job, jobs)

        def generate():
            for study, (found, skips, utf8) in tqdm(results, total=len(jobs), desc=f"{split} studies", unit="study",
                                                     mininterval=1.0):
                for prefix, name, reason in skips:
                    report.skip_hashed(prefix, name, reason)
                if not utf8:
                    not_utf8.append(hashed_id(study.name, key))
                for row in found:  # a study's rows share its report, hence its prompt
                    images = [row["jpeg"]]
                    if study.prior is None:
                        prompt = TASK.prompt(row["indication"])
                        pictures = {"image": {"bytes": row["jpeg"], "path": None}}
                    else:
                        images += [row["prior_jpeg"]] if row["prior_jpeg"] else []
                        priors["with a prior film" if len(images) == 2 else
                               "prior film unreadable" if study.prior else "no prior study"] += 1
                        prompt = TASK.prompt(row["indication"], prior=len(images) == 2)
                        pictures = {"images": [{"bytes": jpeg, "path": None} for jpeg in images],
                                    "prior_study": hashed_id(study.prior[0], key) if len(images) == 2 else ""}
                    yield {"id": hashed_id(f"{study.study}/{row['dicom_id']}", key),
                           "patient": hashed_id(study.subject, key), "study": hashed_id(study.study, key),
                           **pictures, "messages": conversation(prompt, row["answer"], images=len(images)),
                           **{k: row[k] for k in ("answer", "view", "indication", "findings", "impression")}}
        return generate

    columns = ("patient", "study", "view", "indication", "findings", "impression",
               *(("prior_study",) if args.with_prior else ()))
    features = conversation_features({name: Value("string") for name in columns},
                                     images="several" if args.with_prior else "one")
    with staged_output(out, args.overwrite) as staging, \
            (Pool(args.num_proc) if args.num_proc > 1 else nullcontext()) as pool:
        dataset_dict = DatasetDict({split: build_split(rows(split, pool), features, staging, split)
                                    for split in SPLITS.values() if studies.get(split)})
        if not sum(len(d) for d in dataset_dict.values()):
            raise PrepError("no study had a readable image and a report with FINDINGS or IMPRESSION", report)
        if priors:
            report.notes.append("rows by prior film: " + ", ".join(f"{what} {n}" for what, n in sorted(priors.items())))
        if not_utf8:
            report.notes.append(f"{len(not_utf8)} report(s) not UTF-8, read as Windows-1252: {', '.join(not_utf8)}")
        save_dataset(dataset_dict, report, staging, None, count_by="view")
    return report



# ----------------------------------------------------------------------------- synthetic stand-in
# Three findings, each with its own picture and report text, so that a model can learn to tell them apart.
_FINDINGS = [
    ("The lungs are clear. The cardiomediastinal silhouette is normal. No pleural effusion or pneumothorax.",
     "No acute cardiopulmonary process."),
    ("There is a moderate right pleural effusion with adjacent atelectasis. The heart size is normal. "
     "No pneumothorax.", "Moderate right pleural effusion."),
    ("The heart is enlarged. The lungs are clear. No pleural effusion or pneumothorax.",
     "Cardiomegaly without acute cardiopulmonary process."),
]
_INDICATIONS = ["___M with cough", "___F with shortness of breath", "Evaluate for pneumonia", "Chest pain",
                "Fever, rule out infection", "Preoperative evaluation"]
REAL_SIZE = (2544, 3056)  # (width, height) of a typical MIMIC-CXR-JPG frontal film


def synthetic_film(finding: int, rng: np.random.Generator, size: tuple[int, int] = REAL_SIZE) -> Image.Image:
    """A crude frontal film: dark lungs, a bright heart; an effusion whitens the base of the patient's right
    lung (image left); cardiomegaly widens the heart. Drawn small, then enlarged to a real film's size."""
    h, w = 160, 133
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    image = 0.7 - 0.2 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    for cx in (0.3, 0.7):
        image[((xx - cx) / 0.17) ** 2 + ((yy - 0.48) / 0.33) ** 2 < 1] = 0.25
    heart_width = 0.26 if finding == 2 else 0.13
    image[((xx - 0.55) / heart_width) ** 2 + ((yy - 0.68) / 0.13) ** 2 < 1] = 0.85
    if finding == 1:
        image[(((xx - 0.3) / 0.17) ** 2 + ((yy - 0.48) / 0.33) ** 2 < 1) & (yy > 0.58)] = 0.9
    image = np.clip(image + rng.normal(0, 0.03, image.shape), 0, 1)
    return Image.fromarray((image * 255).astype(np.uint8), "L").resize(size, Image.Resampling.BILINEAR)


def _wrap(text: str) -> list[str]:
    import textwrap

    return [f" {line}" for line in textwrap.wrap(text, 76, break_on_hyphens=False)]


def synthetic_report(variant: int, indication: str, findings: str, impression: str) -> str:
    """A report in MIMIC-CXR's format, with the header variants real reports have (by `variant`)."""
    lines: list[str] = []

    def section(header: str, body: str = "", same_line: bool = False) -> None:
        if same_line:
            lines.append(f" {header}:  {body}")
        else:
            lines.extend([f" {header}: ", " ", *_wrap(body)])
        lines.append(" ")

    if variant == 1:  # a wet read above the final report
        lines += ["WET READ: ___ ___ ___ 3:14 PM", f"  {impression}", " " + "_" * 78, ""]
    lines.append(" " * 33 + "FINAL REPORT")
    section("EXAMINATION", "CHEST (PA AND LAT)", same_line=True)
    if variant == 2:
        section("REASON FOR EXAMINATION", indication, same_line=True)
        section("FINDINGS AND IMPRESSION", f"{findings} {impression}")
    elif variant == 3:
        section("CLINICAL HISTORY", indication, same_line=True)
        lines.extend([" CHEST, PA AND LATERAL:", " "])  # a title, not a section: its text is empty
        section("FINDINGS", findings)
        section("CONCLUSION", impression)
    elif variant == 4:  # no findings section
        section("INDICATION", indication, same_line=True)
        section("IMPRESSION", impression)
    elif variant == 5:  # typos in the headers, as a few real reports have
        section("INDICATION", indication, same_line=True)
        section("FINDNGS", findings)
        section("IMPRESSON", impression)
    else:
        section("INDICATION", indication, same_line=True)
        section("TECHNIQUE", "Chest PA and lateral", same_line=True)
        section("COMPARISON", "___", same_line=True)
        section("FINDINGS", findings)
        section("IMPRESSION", impression)
        if variant == 1:
            section("ADDENDUM", "Findings were discussed with Dr. ___ at 4:10 PM on ___.")
    return "\n".join(lines) + "\n"


def expected_sections(variant: int, indication: str, findings: str, impression: str) -> ReportSections:
    """What report_sections must extract from synthetic_report(variant, ...)."""
    if variant == 2:
        return ReportSections(indication, "", f"{findings} {impression}")
    return ReportSections(indication, "" if variant == 4 else findings, impression)


def synthetic_dicom_id(rng: np.random.Generator) -> str:
    return "-".join(f"{int(v):08x}" for v in rng.integers(0, 2**32, 5))


def synthesize(out: Path, seed: int = 0, subjects: int = 30, size: tuple[int, int] = REAL_SIZE) -> None:
    """MIMIC-CXR-JPG's layout: gzipped split and metadata CSVs, reports in the real format (header variants,
    wet reads, addenda, a few broken ones), lateral views to be filtered, and images whose finding a model
    can learn. The report's findings are drawn independently of its indication: only the image tells."""
    rng = np.random.default_rng(seed)
    split_rows, meta_rows, dates = [], [], {}
    official = ["train"] * 7 + ["validate"] * 1 + ["test"] * 2
    n = 0
    for s in range(subjects):
        subject = str(10000000 + int(rng.integers(0, 9_999_999)))
        split = official[s % len(official)]
        for _ in range(1 + s % 2):
            study, n = str(50000000 + int(rng.integers(0, 9_999_999))), n + 1
            dates[study] = f"2180{n * 7 % 12 + 1:02d}{n * 11 % 28 + 1:02d}"  # a patient's studies out of order
            study_dir = out / "files" / study_folder(subject, study)
            study_dir.mkdir(parents=True)
            finding, variant = int(rng.integers(0, 3)), n % 6
            indication = _INDICATIONS[int(rng.integers(0, len(_INDICATIONS)))]
            (study_dir.parent / f"s{study}.txt").write_text(
                synthetic_report(variant, indication, *_FINDINGS[finding]), encoding="utf-8")
            views = ["AP" if n % 4 == 0 else "PA"] + (["LATERAL"] if n % 2 else []) + (["AP"] if n % 7 == 0 else [])
            for view in views:
                dicom_id = synthetic_dicom_id(rng)
                picture = synthetic_film(finding, rng, size if view != "LATERAL" else size[::-1])
                picture.save(study_dir / f"{dicom_id}.jpg", quality=90)
                split_rows.append((dicom_id, study, subject, split))
                meta_rows.append((dicom_id, subject, study, view))
    _break_some(out, rng, split_rows, meta_rows, size)
    with gzip.open(out / SPLIT_CSV, "wt", newline="") as f:
        f.write("dicom_id,study_id,subject_id,split\n")
        f.writelines(",".join(row) + "\n" for row in split_rows)
        f.write("0badc0de-00000000,50000001\n")  # a malformed row: 2 fields of 4
    with gzip.open(out / METADATA_CSV, "wt", newline="") as f:
        f.write("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,"
                "StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
                "PatientOrientationCodeSequence_CodeMeaning\n")
        f.writelines(f"{d},{sub},{st},CHEST (PA AND LAT),{v},{size[1]},{size[0]},{dates.get(st, '21800506')},"
                     f"213014.531,CHEST (PA AND LAT),postero-anterior,Erect\n" for d, sub, st, v in meta_rows)


def _break_some(out: Path, rng: np.random.Generator, split_rows: list, meta_rows: list, size) -> None:
    """The broken studies a real download can hold, each in a train study of its own."""
    def new_study(report: str | bytes | None, views: list[str]) -> Path:
        subject, study = str(19000000 + len(split_rows)), str(59000000 + len(split_rows))
        study_dir = out / "files" / study_folder(subject, study)
        study_dir.mkdir(parents=True)
        if report is not None:
            path = study_dir.parent / f"s{study}.txt"
            path.write_bytes(report if isinstance(report, bytes) else report.encode())
        for view in views:
            dicom_id = synthetic_dicom_id(rng)
            synthetic_film(0, rng, size).save(study_dir / f"{dicom_id}.jpg", quality=90)
            split_rows.append((dicom_id, study, subject, "train"))
            meta_rows.append((dicom_id, subject, study, view))
        return study_dir

    normal = _FINDINGS[0]
    new_study(" " * 33 + "FINAL REPORT\n INDICATION:  Cough\n \n COMPARISON:  None.\n \n NOTIFICATION:  Called.\n",
              ["PA"])  # no findings, no impression
    new_study(b"", ["PA"])  # an empty report
    new_study(None, ["PA"])  # no report file
    new_study(synthetic_report(0, "patient\x92s cough", *normal).encode("cp1252", errors="replace")
              .replace(b"?s cough", b"\x92s cough"), ["PA"])  # not UTF-8: kept, read as Windows-1252
    new_study(synthetic_report(0, "Cough", *normal), ["LATERAL"])  # no frontal view
    new_study(synthetic_report(0, "Cough", *normal), [""])  # a blank ViewPosition, as some real rows have
    truncated = new_study(synthetic_report(0, "Cough", *normal), ["PA"])  # its only frontal image truncated
    image = next(truncated.glob("*.jpg"))
    image.write_bytes(image.read_bytes()[:2000])
    missing = new_study(synthetic_report(0, "Cough", *normal), ["PA", "AP"])  # PA missing on disk: AP is used
    pa = next(d for d, _, st, v in meta_rows if st == missing.name[1:] and v == "PA")
    (missing / f"{pa}.jpg").unlink()
