"""MedXpertQA (Zuo et al. 2025), expert-level questions, text only or with images, as TsinghuaC3I/MedXpertQA holds them:

    RAW/Text/{dev,test}.jsonl   --subset text (the default): ten options, A to J
    RAW/MM/{dev,test}.jsonl     --subset mm: five options, A to E, and images
    RAW/images/<file>           images.zip unzipped: the files the MM questions name

Each line: id, question (its text, then "Answer Choices: (A) ... (B) ..."), options {A: ..., B: ...}, label (a
letter), images (MM: file names under images/), medical_task, body_system, question_type. Rows keep the stem
without its "Answer Choices:" tail (the options are their own column), the last three fields, and for MM the
images (an `images` list, in the question's order). test -> test (Text 2,450, MM 2,000 questions: what the
MedGemma report evaluated); dev (five questions) -> train and validation both: MedXpertQA has no training split.
A line that is not JSON, without a question, with options not lettered A, B, ... or empty, a label that names none
of them, or (MM) no image or one missing or unreadable is skipped and listed. Default prompt: the report's
MedXpertQA prompt for the subset (--protocol medgemma-medxpertqa, or medgemma-medxpertqa-mm with each image after
its "Figure A" label).
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_prep._common import MODEL_IMAGE_SIZE, PrepError, PrepReport, build_split, staged_output, synthetic_tile
from data_prep._own_data import read_image
from data_prep._tabular import safe_image_path
from data_prep.medqa import (REPORT_TABLE_2, TASK, add_protocol_argument, json_lines, lettered_options,
                             question_features, question_report, question_row, save_questions, standin_question)
from medtune.tasks import get_task

SUBSETS = {"text": "Text", "mm": "MM"}  # --subset -> its folder
LETTERS = {"text": TASK.letters[:10], "mm": TASK.letters[:5]}
PROTOCOLS = {"text": "medgemma-medxpertqa", "mm": "medgemma-medxpertqa-mm"}
PUBLISHED_TEST = {"text": 2450, "mm": 2000}
ANSWER_CHOICES = "Answer Choices:"
KEPT_FIELDS = ("medical_task", "body_system", "question_type")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--subset", choices=sorted(SUBSETS), default="text",
                        help="text: the text-only questions (Text/); mm: those with images (MM/, images/)")
    add_protocol_argument(parser, None, which="medgemma-medxpertqa for text, medgemma-medxpertqa-mm for mm")
    parser.add_argument("--image-size", type=int, default=MODEL_IMAGE_SIZE,
                        help="larger images are stored SIZE x SIZE, the model's input (default 896; 0: as they are)")


def stem(question: str) -> str:
    """The question without its "Answer Choices: (A) ..." tail."""
    cut = question.rfind(ANSWER_CHOICES)
    return (question[:cut] if cut >= 0 else question).strip()


def _images(names: Any, folder: Path, args: argparse.Namespace) -> tuple[list[dict] | None, str | None]:
    """The question's images as stored ({bytes, path}), in its order, else (None, why)."""
    if not isinstance(names, list) or not names:
        return None, "no image"
    images = []
    for name in names:
        path, problem = safe_image_path(str(name or ""), folder)
        image, problem = (None, problem) if problem else read_image(path, args)
        if problem:
            return None, f"{problem}: {name}"
        images.append({"bytes": image["bytes"], "path": None})
    return images, None


def _question(item: Any, args: argparse.Namespace, folder: Path, task) -> tuple[dict | None, str | None]:
    """(row fields, None) for a usable question, else (None, why)."""
    if not isinstance(item, dict) or not stem(str(item.get("question") or "")):
        return None, "no question"
    texts, problem = lettered_options(item.get("options"), LETTERS[args.subset])
    if problem:
        return None, problem
    letters = list(TASK.letters[:len(texts)])
    if item.get("label") not in letters:
        return None, f"label {item.get('label')!r} names none of the options"
    images: list[dict] = []
    if args.subset == "mm":
        images, problem = _images(item.get("images"), folder, args)
        if problem:
            return None, problem
    fields = question_row(task, stem(item["question"]), texts, letters.index(item["label"]), images=len(images))
    return {**fields, **({"images": images} if args.subset == "mm" else {}),
            **{key: str(item.get(key) or "") for key in KEPT_FIELDS}}, None


def _rows(path: Path, src: Path, split: str, args: argparse.Namespace, task, report: PrepReport):
    def generate():
        records = json_lines(path, src, report)
        for number, where, item in tqdm(records, desc=f"reading {split}", unit="question", mininterval=1.0):
            fields, problem = _question(item, args, src / "images", task)
            if problem:
                report.skip(where, problem)
                continue
            yield {"id": str(item.get("id") or f"{split}-{number}"), **fields}
    return generate


def prepare(src: Path, out: Path, args: argparse.Namespace) -> PrepReport:
    from datasets import Value

    args.protocol = args.protocol or PROTOCOLS[args.subset]
    args.frame, args.ct_windows = None, False  # read_image's DICOM options: MedXpertQA's images are not DICOMs
    task = get_task("medqa", protocol=args.protocol)
    folder = src / SUBSETS[args.subset]
    files = {"train": folder / "dev.jsonl", "test": folder / "test.jsonl"}
    missing = [str(path.relative_to(src)) for path in files.values() if not path.is_file()]
    missing += ["images/"] if args.subset == "mm" and not (src / "images").is_dir() else []
    if missing:
        raise PrepError(f"{src} has no {', '.join(missing)}: point --src at a download of TsinghuaC3I/MedXpertQA "
                        "(with images.zip unzipped into images/ for --subset mm)")
    report = question_report("medxpertqa", src, args.protocol, subset=args.subset, image_size=args.image_size)
    features = question_features({key: Value("string") for key in KEPT_FIELDS},
                                 images="several" if args.subset == "mm" else "none")
    with staged_output(out, args.overwrite) as staging:
        splits = {split: build_split(_rows(path, src, split, args, task, report), features, staging, split)
                  for split, path in files.items()}
        splits["validation"] = splits["train"]
        report.notes.append(f"train and validation are both MedXpertQA's dev split ({files['train'].name}, "
                            f"{len(splits['train'])} questions): MedXpertQA has no training split")
        report.compare_count("test", len(splits["test"]), PUBLISHED_TEST[args.subset],
                             f"{SUBSETS[args.subset]} questions", REPORT_TABLE_2)
        save_questions(splits, report, staging)
    return report


# ----------------------------------------------------------------------------- synthetic stand-in
# medqa's learnable questions (the finding fixes the answer's letter); an MM question's images are the colour and
# stripes of its answer's class, so the images tell the answer too.
def _record(subset: str, number: int, i: int, rng: random.Random) -> dict[str, Any]:
    finding, texts, label = standin_question(i, rng, len(LETTERS[subset]))
    options = dict(zip(LETTERS[subset], texts))
    choices = " ".join(f"({letter}) {text}" for letter, text in options.items())
    seen = "the radiograph shown" if subset == "mm" else "a chest radiograph"
    record = {"id": f"{SUBSETS[subset]}-{number}",
              "question": f"A 60-year-old man has {seen}. {finding} What is the most likely finding?\n"
                          f"{ANSWER_CHOICES} {choices}",
              "options": options, "label": LETTERS[subset][label],
              "medical_task": ("Diagnosis", "Treatment", "Basic Medicine")[i % 3], "body_system": "Respiratory",
              "question_type": ("Reasoning", "Understanding")[i % 2]}
    if subset == "mm":
        record["images"] = [f"MM-{number}-{figure}.jpeg" for figure in "ab"[:1 + (i % 4 == 3)]]
    return record


def _write_images(folder: Path, records: list[dict[str, Any]], rng) -> None:
    for record in records:
        for name in record.get("images", []):
            label = LETTERS["mm"].index(record["label"])
            synthetic_tile(label, rng, size=64).save(folder / name, quality=90)


def synthesize(out: Path, seed: int = 0) -> None:
    """Text/ and MM/ (dev: 5 questions each; test: 20 Text, 15 MM) and images/, with what a broken download can
    hold: a line cut off, a label that names no option, options with a gap, an MM question whose image is missing,
    one whose image is truncated."""
    import numpy as np

    rng, pixels = random.Random(seed), np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    number = 0
    for subset, folder in SUBSETS.items():
        (out / folder).mkdir(exist_ok=True)
        for part, n in (("dev", 5), ("test", 20 if subset == "text" else 15)):
            records = []
            for i in range(n):
                number += 1
                records.append(_record(subset, number, i, rng))
            _write_images(out / "images", records, pixels)
            lines = [json.dumps(record) for record in records]
            if part == "test":
                broken = [_record(subset, number + k, k, rng) for k in (1, 2, 3, 4)]
                number += 4
                lines += [lines[0][:50], json.dumps({**broken[0], "label": "Z"}),
                          json.dumps({**broken[1], "options": {k: v for k, v in broken[1]["options"].items()
                                                               if k != "B"}})]
                if subset == "mm":  # broken[2]'s image never written; broken[3]'s cut short
                    _write_images(out / "images", broken[3:], pixels)
                    image = out / "images" / broken[3]["images"][0]
                    image.write_bytes(image.read_bytes()[:200])
                    lines += [json.dumps(broken[2]), json.dumps(broken[3])]
            (out / folder / f"{part}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
