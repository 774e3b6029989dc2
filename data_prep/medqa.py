"""MedQA (USMLE), English, as published (jind11/MedQA, `data_clean/questions/US/`): JSON lines, text only.

    RAW/4_options/phrases_no_exclude_{train,dev,test}.jsonl   (--variant 4_options, the default: MedGemma's figure)
    RAW/{train,dev,test}.jsonl                                 (--variant 5_options)

Each line: {"question": ..., "options": {"A": ..., ..., "E": ...}, "answer_idx": "C", "answer": <C's text>, ...}.
train -> train, dev -> validation, test -> test. A line that is not JSON, lacks a question or options, has
options that are not A, B, C... in order, or an answer_idx that names none of them, is skipped and reported.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from data_prep._common import (PrepError, PrepReport, build_split, conversation, conversation_features, save_dataset,
                               staged_output)
from medtune.tasks import get_task

TASK = get_task("medqa")
SPLITS = {"train": "train", "validation": "dev", "test": "test"}  # ours -> the publisher's file name part
FILES = {"4_options": ["4_options/phrases_no_exclude_{}.jsonl", "phrases_no_exclude_{}.jsonl"],
         "5_options": ["{}.jsonl"]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", choices=sorted(FILES), default="4_options",
                        help="the 4-option questions (MedGemma's reported figure) or the original 5-option ones")


def _split_file(src: Path, variant: str, part: str) -> Path:
    for pattern in FILES[variant]:
        if (src / pattern.format(part)).is_file():
            return src / pattern.format(part)
    raise PrepError(f"{src} has no {' or '.join(p.format(part) for p in FILES[variant])}: point --src at MedQA's "
                    "data_clean/questions/US folder")


def _question(line: str) -> tuple[dict | None, str | None]:
    """(row fields, None) for a usable line, else (None, why)."""
    try:
        item = json.loads(line)
    except ValueError:
        return None, "not JSON"
    if not isinstance(item, dict) or not str(item.get("question") or "").strip():
        return None, "no question"
    options = item.get("options")
    if not isinstance(options, dict) or not options:
        return None, "no options"
    letters = sorted(options)
    if "".join(letters) != TASK.letters[:len(letters)] or len(letters) < 2:
        return None, f"options lettered {', '.join(letters)} (expected A, B, ... up to {TASK.letters[-1]})"
    texts = [str(options[letter]).strip() for letter in letters]
    if not all(texts):
        return None, "an empty option"
    if item.get("answer_idx") not in letters:
        return None, f"answer_idx {item.get('answer_idx')!r} names none of the options"
    label = letters.index(item["answer_idx"])
    prompt, answer = TASK.row_prompt(item["question"], texts), TASK.row_answer(texts, label)
    return {"messages": conversation(prompt, answer, images=0), "answer": answer, "label": label,
            "options": texts}, None


def _rows(path: Path, src: Path, split: str, report: PrepReport):
    def generate():
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                fields, problem = _question(line)
                if problem:
                    report.skip(f"{path.relative_to(src)}:{number}", problem)
                    continue
                yield {"id": f"{split}-{number}", **fields}
    return generate


def prepare(src: Path, out: Path, args: argparse.Namespace) -> PrepReport:
    from datasets import ClassLabel, DatasetDict, List, Value

    report = PrepReport(dataset="medqa", task={"name": TASK.name}, source=str(src), options={"variant": args.variant})
    files = {split: _split_file(src, args.variant, part) for split, part in SPLITS.items()}
    features = conversation_features({"label": ClassLabel(names=list(TASK.class_names)),
                                      "options": List(Value("string"))}, images="none")
    with staged_output(out, args.overwrite) as staging:
        dataset_dict = DatasetDict({split: build_split(_rows(path, src, split, report), features, staging, split)
                                    for split, path in files.items()})
        if not len(dataset_dict["train"]):
            raise PrepError(f"no usable question in {files['train']}", report)
        save_dataset(dataset_dict, report, staging, list(TASK.class_names))
    return report


# ----------------------------------------------------------------------------- synthetic stand-in
# Questions whose answer follows from a finding the tiny model's vocabulary knows; the correct option sits at a
# letter fixed by the finding (so that a tiny model can learn it in a few steps), the distractors are shuffled.
_FINDINGS = [("The heart is enlarged.", "cardiomegaly"),
             ("There is a moderate right pleural effusion.", "pleural effusion"),
             ("There is a small nodule in the right upper lobe.", "nodule"),
             ("The lungs are clear.", "no acute findings")]


def synthesize(out: Path, seed: int = 0, per_split: tuple[int, int, int] = (48, 12, 16)) -> None:
    """The 4-option layout, with the broken lines real files can have."""
    rng = random.Random(seed)
    folder = out / "4_options"
    folder.mkdir(parents=True, exist_ok=True)
    answers = [answer for _, answer in _FINDINGS]
    for part, n in zip(SPLITS.values(), per_split):
        lines = []
        for i in range(n):
            k = i % len(_FINDINGS)
            finding, answer = _FINDINGS[k]
            distractors = [a for a in answers if a != answer]
            rng.shuffle(distractors)
            texts = distractors[:k] + [answer] + distractors[k:]
            lines.append(json.dumps({"question": f"{finding} Which finding is present?", "answer": answer,
                                     "options": dict(zip("ABCD", texts)), "meta_info": "step1",
                                     "answer_idx": "ABCD"[k], "metamap_phrases": []}))
        if part == "train":
            lines += ['{"question": "cut off mid-line', json.dumps({"question": "No answer given?",
                                                                    "options": {"A": "x", "B": "y"}}),
                      json.dumps({"question": "Gap in letters?", "options": {"A": "x", "C": "y"}, "answer_idx": "A"})]
        (folder / f"phrases_no_exclude_{part}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
