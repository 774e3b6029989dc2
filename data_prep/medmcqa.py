"""MedMCQA (Pal et al. 2022, Indian medical entrance exams: AIIMS, NEET PG), four options, text only, in either layout:

    RAW/{train,dev,test}.json                   the original release (medmcqa/medmcqa's Google Drive zip): JSON
                                                Lines despite the name; `cop` 1-based (1 = opa)
    RAW/data/{train,validation,test}-*.parquet  the Hub copy, openlifescienceai/medmcqa; `cop` 0-based (a ClassLabel)

Each question: id, question, opa, opb, opc, opd (-> options A to D), cop (the correct option), choice_type
("single" or "multi"), exp, subject_name (kept as `subject`), topic_name. The MedGemma report's MedMCQA figure was
measured on MedMCQA's validation split (dev.json, 4,183 questions): that is our `test`. Our `validation` is drawn
from train (--validation-size, seeded, in proportion to each answer letter). MedMCQA's own test split has no
answers (they are not released): it is not read. A question without text, with an empty option or with a cop out
of range is skipped and listed; "multi" questions are kept (the benchmark keeps them; cop names one answer) and
counted in a note. Default prompt: the report's MedMCQA prompt (--protocol medgemma-medmcqa).
"""
from __future__ import annotations

import argparse
import json
import random
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from data_prep._common import PrepError, PrepReport, build_split, staged_output
from data_prep.medqa import (REPORT_TABLE_2, add_protocol_argument, hold_out, json_lines, parquet_records,
                             question_features, question_report, question_row, save_questions, standin_question)
from medtune.tasks import get_task

OPTION_KEYS = ("opa", "opb", "opc", "opd")
ORIGINAL = {"train": "train.json", "test": "dev.json"}  # ours -> the original release's file
HUB = {"train": "train", "test": "validation"}  # ours -> the Hub copy's split
FIRST_COP = {"original": 1, "hub": 0}
PUBLISHED_TEST = 4183  # MedMCQA's validation split


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_protocol_argument(parser, "medgemma-medmcqa")
    parser.add_argument("--validation-size", type=int, default=1000,
                        help="questions drawn from train for validation, in proportion to each answer letter "
                             "(default 1000; 10%% of train where that is more than half of it)")
    parser.add_argument("--seed", type=int, default=42, help="which train questions validation draws")


# ----------------------------------------------------------------------------- the two layouts
def _layout(src: Path) -> tuple[str, dict[str, list[Path]]]:
    """("original" or "hub", our split -> its files)."""
    if all((src / name).is_file() for name in ORIGINAL.values()):
        return "original", {split: [src / name] for split, name in ORIGINAL.items()}
    hub = {split: sorted((src / "data").glob(f"{part}-*.parquet")) for split, part in HUB.items()}
    if all(hub.values()):
        return "hub", hub
    raise PrepError(f"{src} has neither train.json and dev.json (MedMCQA's original release) nor "
                    "data/train-*.parquet and data/validation-*.parquet (openlifescienceai/medmcqa): point --src at "
                    "the folder that holds them")


def _records(layout: str, paths: list[Path], src: Path, staging: Path,
             report: PrepReport) -> Iterator[tuple[str, Any]]:
    if layout == "hub":
        yield from parquet_records(paths, src, staging)
        return
    for _, where, item in json_lines(paths[0], src, report):
        yield where, item


# ----------------------------------------------------------------------------- one question
def _question(item: Any, first_cop: int, task) -> tuple[dict | None, str | None]:
    """(row fields, None) for a usable question, else (None, why)."""
    if not isinstance(item, dict) or not str(item.get("question") or "").strip():
        return None, "no question"
    texts = [str(item.get(key) or "").strip() for key in OPTION_KEYS]
    if not all(texts):
        return None, "an empty option"
    cop = item.get("cop")
    if cop is None or cop == -1:  # -1: a ClassLabel's "no label" (the Hub copy's unanswered questions)
        return None, "no answer" if cop is None else "no answer (cop -1)"
    try:
        label = int(cop) - first_cop
    except (TypeError, ValueError):
        label = -1
    if label not in range(len(OPTION_KEYS)):
        return None, f"cop {cop!r} out of range (expected {first_cop} to {first_cop + 3})"
    return {**question_row(task, item["question"], texts, label), "subject": str(item.get("subject_name") or "")}, None


def _rows(layout: str, paths: list[Path], src: Path, split: str, staging: Path, task, report: PrepReport,
          multi: Counter):
    def generate():
        for number, (where, item) in enumerate(_records(layout, paths, src, staging, report)):
            fields, problem = _question(item, FIRST_COP[layout], task)
            if problem:
                report.skip(where, problem)
                continue
            multi[split] += item.get("choice_type") == "multi"
            yield {"id": str(item.get("id") or f"{split}-{number}"), **fields}
    return generate


# ----------------------------------------------------------------------------- prepare
def _validation_fraction(size: int, pool_size: int, report: PrepReport) -> float:
    if 2 * size > pool_size:
        report.notes.append(f"validation: --validation-size {size:,} is more than half of the {pool_size:,} train "
                            "questions: 10% of them drawn instead")
        return 0.1
    return size / pool_size


def _notes(layout: str, splits: dict, multi: Counter, seed: int, report: PrepReport) -> None:
    own_test, dev = (("test.json", "dev.json") if layout == "original" else
                     ("data/test-*.parquet", "data/validation-*.parquet"))
    report.notes += [
        f"validation: {len(splits['validation']):,} questions drawn from train (seed {seed}, in proportion to each "
        f"answer letter); test is MedMCQA's validation split ({dev}), the split the MedGemma report evaluated",
        f"MedMCQA's own test split ({own_test}) has no answers (never released): not read",
        *(f"{split}: {n:,} kept questions are choice_type multi (more than one option may be right; cop names one, "
          "and the benchmark keeps them)" for split, n in sorted(multi.items()) if n)]


def prepare(src: Path, out: Path, args: argparse.Namespace) -> PrepReport:
    from datasets import Value

    task = get_task("medqa", protocol=args.protocol)
    layout, files = _layout(src)
    report = question_report("medmcqa", src, args.protocol, layout=layout, validation_size=args.validation_size,
                             seed=args.seed)
    features = question_features({"subject": Value("string")})
    multi: Counter = Counter()
    with staged_output(out, args.overwrite) as staging:
        splits = {split: build_split(_rows(layout, paths, src, split, staging, task, report, multi), features,
                                     staging, split) for split, paths in files.items()}
        fraction = _validation_fraction(args.validation_size, len(splits["train"]), report)
        splits["train"], splits["validation"] = hold_out(splits["train"], fraction, args.seed)
        _notes(layout, splits, multi, args.seed, report)
        report.compare_count("test", len(splits["test"]), PUBLISHED_TEST, "questions", REPORT_TABLE_2)
        save_questions(splits, report, staging)
    return report


# ----------------------------------------------------------------------------- synthetic stand-in
# medqa's learnable questions (the finding fixes the answer's letter), every seventh marked "multi".
def _standin_questions(n: int, rng: random.Random, first_cop: int) -> list[dict[str, Any]]:
    records = []
    for i in range(n):
        finding, texts, label = standin_question(i, rng)
        records.append({"question": f"A chest radiograph is taken. {finding} Which finding is present?",
                        "exp": f"{finding} This is {texts[label]}.", "cop": label + first_cop,
                        **dict(zip(OPTION_KEYS, texts)), "subject_name": "Radiology", "topic_name": None,
                        "id": str(uuid.UUID(int=rng.getrandbits(128))),
                        "choice_type": "multi" if i % 7 == 6 else "single"})
    return records


def _broken(first_cop: int) -> list[dict[str, Any]]:
    """Records a real download can hold: no question, an empty option, no answer (the original: no cop; the Hub's
    ClassLabel: -1), an answer out of range (the original only: the ClassLabel refuses one)."""
    good = {"question": "Which finding is present?", "exp": "", "opa": "a", "opb": "b", "opc": "c", "opd": "d",
            "cop": first_cop, "subject_name": "Radiology", "topic_name": None, "choice_type": "single"}
    return [{**good, "id": "no-question", "question": ""}, {**good, "id": "empty-option", "opc": " "},
            {**good, "id": "no-answer", "cop": None if first_cop else -1},
            *([{**good, "id": "out-of-range", "cop": first_cop + 4}] if first_cop else [])]


def synthesize(out: Path, seed: int = 0, layout: str = "original") -> None:
    """The original release (train.json, dev.json, test.json as JSON Lines; a line cut off, broken records), or
    with layout="hub" the Hub copy's Parquet files (the same questions, cop 0-based)."""
    rng = random.Random(seed)
    first_cop = FIRST_COP[layout]
    parts = {"train": _standin_questions(40, rng, first_cop) + _broken(first_cop)[:2],
             "dev": _standin_questions(16, rng, first_cop) + _broken(first_cop)[2:],
             "test": [{**q, "cop": None if layout == "original" else -1, "exp": ""}
                      for q in _standin_questions(8, rng, first_cop)]}
    out.mkdir(parents=True, exist_ok=True)
    if layout == "hub":
        _write_parquet(out / "data", parts)
        return
    for part, records in parts.items():
        lines = [json.dumps(record) for record in records]
        if part == "train":
            lines.insert(5, lines[5][:40])  # a line cut off
        (out / f"{part}.json").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_parquet(folder: Path, parts: dict[str, list[dict[str, Any]]]) -> None:
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"id": Value("string"), "question": Value("string"),
                         **{key: Value("string") for key in OPTION_KEYS},
                         "cop": ClassLabel(names=["a", "b", "c", "d"]), "choice_type": Value("string"),
                         "exp": Value("string"), "subject_name": Value("string"), "topic_name": Value("string")})
    folder.mkdir(parents=True, exist_ok=True)
    for part, records in parts.items():
        name = {"train": "train", "dev": "validation", "test": "test"}[part]
        Dataset.from_list(records, features=features).to_parquet(str(folder / f"{name}-00000-of-00001.parquet"))
