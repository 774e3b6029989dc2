"""What the chest X-ray findings readers share (mimic_cxr_findings, chexpert, cxr14): reading labels coded as
CheXpert codes them under a label policy, the films to write and their rows, one split per patient, the films read in
a process pool, the counts per finding, and the stand-ins' learnable films.

Labels. The CheXpert labeler (CheXpert's train.csv, MIMIC-CXR's chexpert and negbio CSVs) writes 1.0 for positive,
0.0 for negative, -1.0 for uncertain and nothing for a finding the report does not mention. `--uncertain` reads an
uncertain label as negative, positive or not at all (the CheXpert paper's U-Zeros, U-Ones and ignore policies),
`--unmentioned` a blank one as negative or not at all. Both default to negative, as the MedGemma report's MIMIC-CXR
figure on the MAIRA test set ("original labels ... with missing and uncertain labels considered to be negative",
section 3.3); its adjudicated Med-Gemini test set excluded them instead. An excluded (film, finding) pair is -1 in
`finding_labels`: neither scored nor trained. A film whose every finding is excluded is skipped and listed.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import gzip
import os
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from data_prep._common import (MODEL_IMAGE_SIZE, PrepError, PrepReport, build_split, conversation_features,
                               hashed_id, id_key, read_image_resized, save_dataset, staged_output, stratified_split)
from medtune.tasks import get_task
from medtune.tasks._findings import ABSENT, NOT_SCORED, PRESENT, PROTOCOLS

SPLITS = ("train", "validation", "test")
# A patient the publisher put in several splits stays in the first of these: the benchmark's films are kept whole.
SPLIT_PRIORITY = ("test", "validation", "train")
# The report's five findings (medtune.tasks.cxr_findings.FIVE_FINDINGS) by the label columns CheXpert's CSVs and
# MIMIC-CXR's give them
CHEXPERT_COLUMNS = {"atelectasis": "Atelectasis", "cardiomegaly": "Cardiomegaly", "consolidation": "Consolidation",
                    "edema": "Edema", "pleural_effusion": "Pleural Effusion"}
UNCERTAIN, UNMENTIONED = "uncertain", "not mentioned"  # why a pair is excluded
UNCERTAIN_READINGS = {"negative": ABSENT, "positive": PRESENT, "exclude": NOT_SCORED}
UNMENTIONED_READINGS = {"negative": ABSENT, "exclude": NOT_SCORED}
VALIDATION_FRACTION = 0.1  # of train's patients, where the publisher has no validation split to give


# ----------------------------------------------------------------------------- options
def add_arguments(parser: argparse.ArgumentParser, label_policies: bool = True, draws_validation: bool = False) -> None:
    """The options every findings reader takes: the prompts' protocol, the stored film size, the reading processes;
    the label policies where its labels are CheXpert-coded; the seed where it may draw validation from train."""
    parser.add_argument("--protocol", choices=tuple(PROTOCOLS), default="medgemma",
                        help="the prompt each finding is asked with (default medgemma: the MedGemma report's, Table "
                             "A7; medgemma-1.5: MedGemma 1.5's, Table 8)")
    if label_policies:
        parser.add_argument("--uncertain", choices=tuple(UNCERTAIN_READINGS), default="negative",
                            help="how an uncertain label (-1.0) is read: negative (the CheXpert paper's U-Zeros), "
                                 "positive (U-Ones) or exclude (the pair is neither scored nor trained). Default "
                                 "negative, as the MedGemma report's MIMIC-CXR figure on the MAIRA test set; its "
                                 "adjudicated Med-Gemini test set excluded uncertain labels")
        parser.add_argument("--unmentioned", choices=tuple(UNMENTIONED_READINGS), default="negative",
                            help="how a blank label (a finding the report does not mention) is read: negative or "
                                 "exclude. Default negative, as the MedGemma report's MIMIC-CXR figure on the MAIRA "
                                 "test set; its adjudicated Med-Gemini test set excluded unmentioned findings")
    if draws_validation:
        parser.add_argument("--seed", type=int, default=42,
                            help="which train patients validation draws where the publisher gives no validation split")
    parser.add_argument("--image-size", type=int, default=MODEL_IMAGE_SIZE,
                        help="stored films are SIZE x SIZE, the model's input (default 896)")
    parser.add_argument("--num-proc", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes reading the films (default: up to 8)")


def findings_task(findings: dict[str, str], protocol: str):
    return get_task("cxr_findings", None, findings, protocol=protocol)


def new_report(dataset: str, src: Path, task, args: argparse.Namespace, **options: Any) -> PrepReport:
    """The prep report of a findings reader: its task as the recipe checks read it, the options it was run with."""
    policies = {"uncertain": args.uncertain, "unmentioned": args.unmentioned} if hasattr(args, "uncertain") else {}
    asked = {"name": task.name, "question": task.question, "options": dict(zip(task.class_names, task.findings)),
             "protocol": args.protocol}
    return PrepReport(dataset=dataset, source=str(src), hash_key=id_key(), task=asked,
                      options={**policies, **options, "image_size": args.image_size})


# ----------------------------------------------------------------------------- labels
@dataclass(frozen=True)
class FindingLabels:
    """A film's label for each finding (1 present, 0 absent, -1 not scored) and why each -1 is not scored."""
    values: tuple[int, ...]
    why_not_scored: tuple[str, ...]  # "" where the finding is scored

    @classmethod
    def of(cls, read: Sequence[tuple[int, str]]) -> "FindingLabels":
        """From (label, why not scored) pairs."""
        return cls(tuple(value for value, _ in read), tuple(why for _, why in read))

    @property
    def scored(self) -> bool:
        return any(value != NOT_SCORED for value in self.values)


@dataclass(frozen=True)
class LabelPolicy:
    """How CheXpert-coded labels are read: `uncertain` a key of UNCERTAIN_READINGS, `unmentioned` of
    UNMENTIONED_READINGS."""
    uncertain: str = "negative"
    unmentioned: str = "negative"

    @classmethod
    def of(cls, args: argparse.Namespace) -> "LabelPolicy":
        return cls(args.uncertain, args.unmentioned)

    def read_one(self, code: str) -> tuple[int, str]:
        """(label, why it is not scored or ""). ValueError for a code that is none of CheXpert's."""
        code = code.strip()
        if not code:
            value = UNMENTIONED_READINGS[self.unmentioned]
            return value, UNMENTIONED if value == NOT_SCORED else ""
        number = float(code)
        if number == 1:
            return PRESENT, ""
        if number == 0:
            return ABSENT, ""
        if number == -1:
            value = UNCERTAIN_READINGS[self.uncertain]
            return value, UNCERTAIN if value == NOT_SCORED else ""
        raise ValueError(code)

    def read(self, codes: Sequence[str]) -> FindingLabels:
        return FindingLabels.of([self.read_one(code) for code in codes])


def read_codes(policy: LabelPolicy, row: dict[str, str], columns: Sequence[str]) -> tuple[FindingLabels | None, str]:
    """(the labels in a CSV row's `columns`, "") or (None, why they cannot be read)."""
    read = []
    for column in columns:
        try:
            read.append(policy.read_one(row[column]))
        except ValueError:
            return None, f"label {column} is {row[column]!r}, not 1.0, 0.0, -1.0 or blank"
    return FindingLabels.of(read), ""


# ----------------------------------------------------------------------------- films
@dataclass(frozen=True)
class Candidate:
    """An image a film's row may show: its file, the publisher's name for it (identifying: stored hashed, as the
    row's id), its view."""
    path: Path
    name: str
    view: str


@dataclass(frozen=True)
class Film:
    """A row to be: the first readable of `candidates` (in order of preference), with its labels. `patient` and
    `study` are in clear here and stored hashed; `name` says which film it is in the skip report (hashed there),
    after `prefix`."""
    split: str
    patient: str
    study: str
    name: str
    candidates: tuple[Candidate, ...]
    labels: FindingLabels
    prefix: str = "image "


def one_split_per_patient(films: list[Film], report: PrepReport) -> list[Film]:
    """The films, less those of a patient whom the publisher also put in a split earlier in SPLIT_PRIORITY (skipped
    and listed)."""
    home: dict[str, str] = {}
    for film in sorted(films, key=lambda f: SPLIT_PRIORITY.index(f.split)):
        home.setdefault(film.patient, film.split)
    kept = []
    for film in films:
        if home[film.patient] == film.split:
            kept.append(film)
        else:
            report.skip_hashed(film.prefix, film.name, f"its patient is also in the {home[film.patient]} split")
    return kept


def draw_validation(films: list[Film], seed: int) -> list[Film]:
    """The films with VALIDATION_FRACTION of train's patients moved to validation (seeded)."""
    train = [i for i, film in enumerate(films) if film.split == "train"]
    _, held = stratified_split([0] * len(train), VALIDATION_FRACTION, seed, groups=[films[i].patient for i in train])
    moved = {train[i] for i in held}
    return [dataclasses.replace(film, split="validation") if i in moved else film for i, film in enumerate(films)]


def read_first_film(candidates: tuple[Candidate, ...], size: int) -> tuple[int | None, bytes | None, list[str]]:
    """(which candidate, its JPEG at SIZE x SIZE, why each one before it was unreadable); (None, None, reasons)
    where none is readable. Runs in a worker process."""
    problems = []
    for index, candidate in enumerate(candidates):
        jpeg, problem = (read_image_resized(candidate.path, size) if candidate.path.is_file()
                         else (None, "image listed but missing"))
        if jpeg is not None:
            return index, jpeg, problems
        problems.append(problem)
    return None, None, problems


# ----------------------------------------------------------------------------- counts per finding
class FindingCounts:
    """Per split and finding: the rows written with it present, absent and not scored, and why not scored."""
    SAID = {PRESENT: "positives", ABSENT: "negatives", NOT_SCORED: "not_scored"}

    def __init__(self, keys: Sequence[str]):
        self.keys = tuple(keys)
        self.values: dict[str, dict[str, Counter]] = {}
        self.why_not_scored: dict[str, dict[str, Counter]] = {}

    def add(self, split: str, labels: FindingLabels) -> None:
        values = self.values.setdefault(split, {key: Counter() for key in self.keys})
        why_not_scored = self.why_not_scored.setdefault(split, {key: Counter() for key in self.keys})
        for key, value, why in zip(self.keys, labels.values, labels.why_not_scored):
            values[key][self.SAID[value]] += 1
            if why:
                why_not_scored[key][why] += 1

    def per_finding(self, split: str) -> dict[str, dict[str, Any]]:
        values, why = self.values.get(split, {}), self.why_not_scored.get(split, {})
        return {key: {**{said: values.get(key, Counter())[said] for said in self.SAID.values()},
                      "not_scored_by_reason": dict(sorted(why.get(key, Counter()).items()))}
                for key in self.keys}


# ----------------------------------------------------------------------------- writing the rows
def scored_films(films: list[Film], report: PrepReport) -> list[Film]:
    """The films with a finding to score; the others are skipped and listed."""
    for film in films:
        if not film.labels.scored:
            reasons = sorted(set(film.labels.why_not_scored))
            report.skip_hashed(film.prefix, film.name, f"every finding excluded ({', '.join(reasons)})")
    return [film for film in films if film.labels.scored]


def _read_film_job(job: tuple[Film, int]) -> tuple[Film, tuple[int | None, bytes | None, list[str]]]:
    film, size = job
    return film, read_first_film(film.candidates, size)


def _rows(films: list[Film], split: str, task, report: PrepReport, counts: FindingCounts, size: int, pool):
    def generate() -> Iterator[dict[str, Any]]:
        key = report.hash_key
        jobs = [(film, size) for film in films]
        results = pool.imap(_read_film_job, jobs, chunksize=4) if pool else map(_read_film_job, jobs)
        for film, (chosen, jpeg, problems) in tqdm(results, total=len(jobs), desc=f"{split} films", unit="film",
                                                  mininterval=1.0):
            for candidate, problem in zip(film.candidates, problems):
                report.skip_hashed("image ", candidate.name, problem)
            if chosen is None:
                continue
            candidate, values = film.candidates[chosen], list(film.labels.values)
            counts.add(split, film.labels)
            yield {"id": hashed_id(candidate.name, key), "image": {"bytes": jpeg, "path": None},
                   "messages": task.messages(values), "answer": task.summary(values), "finding_labels": values,
                   "patient": hashed_id(film.patient, key), "study": hashed_id(film.study, key),
                   "view": candidate.view}
    return generate


def write_films(films: list[Film], task, out: Path, args: argparse.Namespace, report: PrepReport,
                published_test: tuple[int, str, str] | None = None) -> PrepReport:
    """The DatasetDict of the films (train, validation, test; validation may be empty), saved with the counts per
    finding of each split in report.splits[split]["per_finding"]. `published_test`: (count, what, source) of the
    examples the report evaluated, compared with the test split's. PrepError where no film has a finding to score,
    or train or test has no readable film."""
    from datasets import DatasetDict, List, Value

    films = scored_films(films, report)
    if not films:
        raise PrepError("no film has a finding to score", report)
    counts = FindingCounts(task.class_names)
    features = conversation_features({"finding_labels": List(Value("int8")), "patient": Value("string"),
                                      "study": Value("string"), "view": Value("string")})
    with staged_output(out, args.overwrite) as staging, \
            (Pool(args.num_proc) if args.num_proc > 1 else nullcontext()) as pool:
        dataset_dict = DatasetDict({
            split: build_split(_rows([f for f in films if f.split == split], split, task, report, counts,
                                     args.image_size, pool), features, staging, split)
            for split in SPLITS})
        empty = [split for split in ("train", "test") if not len(dataset_dict[split])]
        if empty:
            raise PrepError(f"no readable film in the {' and '.join(empty)} split(s)", report)
        if published_test:
            report.compare_count("test", len(dataset_dict["test"]), *published_test)
        for split in SPLITS:
            report.splits[split] = {"per_finding": counts.per_finding(split)}
        save_dataset(dataset_dict, report, staging, None, count_by=None)
    return report


# ----------------------------------------------------------------------------- stand-ins
def synthetic_film(present: Sequence[int], rng: np.random.Generator, size: int = 96) -> Image.Image:
    """A greyscale stand-in film on which each finding has its own sign, large enough to survive a tiny vision
    model's view (64 px, average-pooled into a 2 x 2 grid of tokens): finding k brightens most of quadrant k % 4
    (k < 4) or stripes it (k >= 4)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    film = 0.3 - 0.1 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    half, margin = size // 2, size // 16
    stripes = np.where((np.arange(size) // max(1, size // 16)) % 2 == 0, 0.2, -0.2)[:, None]
    for k, finding in enumerate(present):
        if not finding:
            continue
        top, left = (k % 4) // 2 * half + margin, (k % 4) % 2 * half + margin
        area = (slice(top, top + half - 2 * margin), slice(left, left + half - 2 * margin))
        film[area] += 0.4 if k < 4 else stripes[area[0]]
    film = np.clip(film + rng.normal(0, 0.03, film.shape), 0, 1)
    return Image.fromarray((film * 255).astype(np.uint8), "L")


def synthetic_findings(count: int, rng: np.random.Generator) -> list[int]:
    """Which findings a stand-in film shows: each independently, with probability 1/2."""
    return [int(v) for v in rng.random(count) < 0.5]


def synthetic_codes(present: Sequence[int], rng: np.random.Generator) -> list[str]:
    """A labeler's codes for a film: 1.0 where a finding shows; where it does not, mostly 0.0, sometimes blank (not
    mentioned, 10%) or -1.0 (uncertain, 5%), so that the default policy (both read as negative) matches the film."""
    return ["1.0" if p else str(rng.choice(["0.0", "", "-1.0"], p=[0.85, 0.10, 0.05])) for p in present]


def write_csv(path: Path, header: Sequence[str], rows: list[list[str]], extra_lines: Sequence[str] = ()) -> None:
    """A stand-in's CSV (gzipped where its name ends in .gz), with `extra_lines` as they are (malformed rows)."""
    with (gzip.open(path, "wt", newline="") if path.suffix == ".gz" else open(path, "w", newline="")) as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])
        f.writelines(line + "\n" for line in extra_lines)


def truncate(path: Path) -> None:
    """Cut a written image short, as an interrupted download leaves it."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
