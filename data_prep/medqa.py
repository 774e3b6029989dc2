"""MedQA (USMLE), English, as published (jind11/MedQA, `data_clean/questions/US/`): JSON lines, text only.

    RAW/4_options/phrases_no_exclude_{train,dev,test}.jsonl   (--variant 4_options, the default: MedGemma's figure)
    RAW/{train,dev,test}.jsonl                                 (--variant 5_options)

Each line: {"question": ..., "options": {"A": ..., ..., "E": ...}, "answer_idx": "C", "answer": <C's text>, ...}.
train -> train, dev -> validation, test -> test. A line that is not JSON, lacks a question or options, has
options that are not A, B, C... in order, or an answer_idx that names none of them, is skipped and reported.
Rows keep the stem (`question`), the option texts (`options`) and the answer's index (`label`); the prompts are
the MedGemma report's MedQA prompt by default (--protocol; `medtune`: the question, `A: text` lines, the letter).

What the multiple-choice readers share (medmcqa, pubmedqa, mmlu_medical, medxpertqa import it from here): the
--protocol flag, the rows' columns, the splits' checks and the learnable questions of the stand-ins.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any, Iterator

from data_prep._common import (PrepError, PrepReport, build_split, conversation_features, save_dataset,
                               staged_output, stratified_split)
from medtune.tasks import get_task

TASK = get_task("medqa")
SPLITS = {"train": "train", "validation": "dev", "test": "test"}  # ours -> the publisher's file name part
FILES = {"4_options": ["4_options/phrases_no_exclude_{}.jsonl", "phrases_no_exclude_{}.jsonl"],
         "5_options": ["{}.jsonl"]}
REPORT_TABLE_2 = "the MedGemma technical report (Table 2)"
PUBLISHED_TEST = 1273  # 4-option test questions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", choices=sorted(FILES), default="4_options",
                        help="the 4-option questions (MedGemma's reported figure) or the original 5-option ones")
    add_protocol_argument(parser, "medgemma-medqa")


# ----------------------------------------------------------------------------- what the question readers share
def add_protocol_argument(parser: argparse.ArgumentParser, default: str | None, which: str | None = None) -> None:
    """--protocol, default the MedGemma report's prompt for the benchmark (`which` says which when it depends)."""
    parser.add_argument("--protocol", choices=TASK.protocols, default=default,
                        help=f"the prompt each question is written with and the answer form trained (default "
                             f"{which or default}: the MedGemma report's prompt for this benchmark; medtune: the "
                             "question, `A: text` lines, the letter; medgemma-1.5: MedGemma 1.5's)")


def question_report(dataset: str, src: Path, protocol: str, **options: Any) -> PrepReport:
    return PrepReport(dataset=dataset, source=str(src), task={"name": TASK.name, "protocol": protocol},
                      options=options)


def question_features(extra: dict[str, Any] | None = None, images: str = "none"):
    """The columns of a multiple-choice split: the stem, the option texts in letter order, the answer's index."""
    from datasets import ClassLabel, List, Value

    return conversation_features({"label": ClassLabel(names=list(TASK.class_names)),
                                  "options": List(Value("string")), "question": Value("string"), **(extra or {})},
                                 images=images)


def question_row(task, question: str, options: list[str], label: int, context: str | None = None,
                 images: int = 0) -> dict[str, Any]:
    """The columns every multiple-choice row has, its conversation written under the task's protocol."""
    question = question.strip()
    return {"question": question, "options": options, "label": label, "answer": task.row_answer(options, label),
            "messages": task.messages(question, options, label, context=context, images=images)}


def lettered_options(options: Any, letters: str = TASK.letters) -> tuple[list[str] | None, str | None]:
    """(option texts in letter order, None) for options lettered A, B, ... without a gap, each with a text, else
    (None, why)."""
    if not isinstance(options, dict) or not options:
        return None, "no options"
    given = sorted(options)
    if "".join(given) != letters[:len(given)] or len(given) < 2:
        return None, f"options lettered {', '.join(given)} (expected A, B, ... up to {letters[-1]})"
    texts = [str(options[letter] if options[letter] is not None else "").strip() for letter in given]
    if not all(texts):
        return None, "an empty option"
    return texts, None


def json_lines(path: Path, src: Path, report: PrepReport) -> Iterator[tuple[int, str, Any]]:
    """(line number, where, record) of each line of a JSON Lines file (where: `train.json:12`), blank lines left
    out; a line that is not JSON is skipped and reported."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path.relative_to(src)}:{number}"
            try:
                yield number, where, json.loads(line)
            except ValueError:
                report.skip(where, "not JSON")


def parquet_records(paths: list[Path], src: Path, staging: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) of each row of a Hub copy's Parquet files (`data/validation-00000-of-00001.parquet[41]`),
    read with `datasets` (a ClassLabel column gives its integers) into the staging folder's cache."""
    from datasets import Dataset

    for path in paths:
        for index, record in enumerate(Dataset.from_parquet(str(path), cache_dir=str(staging / "cache"))):
            yield f"{path.relative_to(src)}[{index}]", record


def hold_out(pool, fraction: float, seed: int):
    """(train, validation): `fraction` of each answer letter of `pool` held out, seeded."""
    kept, held = stratified_split(list(pool["label"]), fraction, seed)
    return pool.select(kept), pool.select(held)


def save_questions(splits: dict[str, Any], report: PrepReport, staging: Path) -> None:
    """Refuse a prep without a training or test question (saying why rows were skipped), else save the splits."""
    from datasets import DatasetDict

    empty = [name for name in ("train", "test") if not len(splits[name])]
    if empty:
        raise PrepError(f"no usable question in the {' and '.join(empty)} split(s)", report)
    save_dataset(DatasetDict({name: splits[name] for name in ("train", "validation", "test")}), report, staging,
                 list(TASK.class_names))


# ----------------------------------------------------------------------------- MedQA
def _split_file(src: Path, variant: str, part: str) -> Path:
    for pattern in FILES[variant]:
        if (src / pattern.format(part)).is_file():
            return src / pattern.format(part)
    raise PrepError(f"{src} has no {' or '.join(p.format(part) for p in FILES[variant])}: point --src at MedQA's "
                    "data_clean/questions/US folder")


def _question(item: Any, task) -> tuple[dict | None, str | None]:
    """(row fields, None) for a usable record, else (None, why)."""
    if not isinstance(item, dict) or not str(item.get("question") or "").strip():
        return None, "no question"
    texts, problem = lettered_options(item.get("options"))
    if problem:
        return None, problem
    letters = list(TASK.letters[:len(texts)])
    if item.get("answer_idx") not in letters:
        return None, f"answer_idx {item.get('answer_idx')!r} names none of the options"
    return question_row(task, item["question"], texts, letters.index(item["answer_idx"])), None


def _rows(path: Path, src: Path, split: str, task, report: PrepReport):
    def generate():
        for number, where, item in json_lines(path, src, report):
            fields, problem = _question(item, task)
            if problem:
                report.skip(where, problem)
                continue
            yield {"id": f"{split}-{number}", **fields}
    return generate


def prepare(src: Path, out: Path, args: argparse.Namespace) -> PrepReport:
    task = get_task("medqa", protocol=args.protocol)
    report = question_report("medqa", src, args.protocol, variant=args.variant)
    files = {split: _split_file(src, args.variant, part) for split, part in SPLITS.items()}
    with staged_output(out, args.overwrite) as staging:
        splits = {split: build_split(_rows(path, src, split, task, report), question_features(), staging, split)
                  for split, path in files.items()}
        if args.variant == "4_options":
            report.compare_count("test", len(splits["test"]), PUBLISHED_TEST, "4-option questions", REPORT_TABLE_2)
        save_questions(splits, report, staging)
    return report


# ----------------------------------------------------------------------------- synthetic stand-in
# Questions whose answer follows from a finding the tiny model's vocabulary knows; the correct option sits at a
# letter fixed by the finding (so that a tiny model can learn it in a few steps), the distractors are shuffled.
# A question of n options asks about one of the first n findings.
FINDINGS = [("The heart is enlarged.", "cardiomegaly"),
            ("There is a moderate right pleural effusion.", "pleural effusion"),
            ("There is a small nodule in the right upper lobe.", "nodule"),
            ("The lungs are clear.", "no acute findings"),
            ("Air outlines the pleura with no lung markings beyond it.", "pneumothorax"),
            ("A lobe is dense with air bronchograms.", "consolidation"),
            ("There are Kerley B lines and hazy hila.", "edema"),
            ("A rib cortex is broken.", "fracture"),
            ("A lobe has lost volume and the fissure has moved.", "atelectasis"),
            ("The mediastinum is wide.", "mediastinal widening")]


def standin_question(i: int, rng: random.Random, n_options: int = 4) -> tuple[str, list[str], int]:
    """(finding, option texts, label) of the stand-ins' i-th question of `n_options` options: the answer to
    finding k is option k."""
    k = i % n_options
    answer = FINDINGS[k][1]
    distractors = [a for _, a in FINDINGS[:n_options] if a != answer]
    rng.shuffle(distractors)
    return FINDINGS[k][0], distractors[:k] + [answer] + distractors[k:], k


def synthesize(out: Path, seed: int = 0, per_split: tuple[int, int, int] = (48, 12, 16)) -> None:
    """The 4-option layout, with the broken lines real files can have."""
    rng = random.Random(seed)
    folder = out / "4_options"
    folder.mkdir(parents=True, exist_ok=True)
    for part, n in zip(SPLITS.values(), per_split):
        lines = []
        for i in range(n):
            finding, texts, label = standin_question(i, rng)
            lines.append(json.dumps({"question": f"{finding} Which finding is present?", "answer": texts[label],
                                     "options": dict(zip("ABCD", texts)), "meta_info": "step1",
                                     "answer_idx": "ABCD"[label], "metamap_phrases": []}))
        if part == "train":
            lines += ['{"question": "cut off mid-line', json.dumps({"question": "No answer given?",
                                                                    "options": {"A": "x", "B": "y"}}),
                      json.dumps({"question": "Gap in letters?", "options": {"A": "x", "C": "y"}, "answer_idx": "A"})]
        (folder / f"phrases_no_exclude_{part}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
