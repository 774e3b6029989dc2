"""MMLU (Hendrycks et al. 2021), its medical subjects, four options, text only, in either layout:

    RAW/data/{dev,val,test}/<subject>_{dev,val,test}.csv   the original release (people.eecs.berkeley.edu/~hendrycks/
                                                           data.tar; --src may also be its data folder): no header,
                                                           question, A, B, C, D, answer letter (quoted CSV fields)
    RAW/<subject>/{test,validation,dev}-*.parquet           the Hub copy, cais/mmlu: question, subject, choices (4),
                                                           answer (an int, A = 0)

Subjects (--subjects): by default the seven of the MedGemma report's Table 3, anatomy, clinical_knowledge,
college_biology, college_medicine, medical_genetics, professional_medicine, virology (Med-PaLM's MultiMedQA used
six: the same without virology). test -> test, val -> validation, dev -> train: MMLU has no training split, its
dev split holds five example questions a subject. Rows keep their `subject`. A row that is not six CSV fields,
lacks its question, has an empty option or an answer that names none of A to D is skipped and listed. The report's
Table 2 lists 3,685 "MMLU Med" questions, more than these subjects' test splits hold (1,255 in the real release):
the note comparing the counts says so. Default prompt: the report's MedQA prompt, which it uses for MMLU
(--protocol medgemma-medqa).
"""
from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path
from typing import Any, Iterator

from data_prep._common import PrepError, PrepReport, build_split, staged_output
from data_prep.medqa import (REPORT_TABLE_2, add_protocol_argument, parquet_records, question_features,
                             question_report, question_row, save_questions, standin_question)
from medtune.tasks import get_task

SUBJECTS = ("anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
            "professional_medicine", "virology")
ORIGINAL = {"train": "dev", "validation": "val", "test": "test"}  # ours -> the original's folder and file suffix
HUB = {"train": "dev", "validation": "validation", "test": "test"}  # ours -> the Hub copy's split
LETTERS = "ABCD"
PUBLISHED_TEST = 3685  # "MMLU Med" in the report's Table 2
REAL_TEST = 1255  # the seven subjects' test questions in the real release


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_protocol_argument(parser, "medgemma-medqa")
    parser.add_argument("--subjects", default=",".join(SUBJECTS),
                        help="MMLU subjects, comma-separated (default: the seven of the MedGemma report's Table 3)")


# ----------------------------------------------------------------------------- the two layouts
def _original_root(src: Path) -> Path | None:
    for root in (src / "data", src):
        if (root / "test").is_dir():
            return root
    return None


def _layout(src: Path, subjects: list[str]) -> tuple[str, dict[str, list[tuple[str, list[Path]]]]]:
    """("original" or "hub", our split -> (subject, its files) of each subject)."""
    root = _original_root(src)
    layout, base, pattern, parts = (("original", root, "{part}/{subject}_{part}.csv", ORIGINAL) if root else
                                    ("hub", src, "{subject}/{part}-*.parquet", HUB))
    files: dict[str, list[tuple[str, list[Path]]]] = {split: [] for split in parts}
    missing = []
    for split, part in parts.items():
        for subject in subjects:
            name = pattern.format(part=part, subject=subject)
            found = sorted(base.glob(name))
            files[split].append((subject, found))
            if not found:
                missing.append(str((base / name).relative_to(src)))
    if missing:
        raise PrepError(f"{src} has no {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}: point --src at "
                        "MMLU's data folder (test/<subject>_test.csv) or at cais/mmlu (<subject>/test-*.parquet), or "
                        "name the subjects it holds (--subjects)")
    return layout, files


def _csv_records(path: Path, src: Path, report: PrepReport) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) of each row of an original CSV (no header); a row that is not six fields is skipped."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        for values in reader:
            where = f"{path.relative_to(src)}:{reader.line_num}"
            if len(values) != 6:
                report.skip(where, f"{len(values)} CSV fields (expected 6: question, A, B, C, D, answer)")
                continue
            yield where, {"question": values[0], "choices": values[1:5], "answer": values[5].strip()}


# ----------------------------------------------------------------------------- one question
def _question(record: dict[str, Any], task) -> tuple[dict | None, str | None]:
    """(row fields, None) for a usable question, else (None, why). The answer: a letter (original) or its index."""
    if not str(record.get("question") or "").strip():
        return None, "no question"
    texts = [str(text if text is not None else "").strip() for text in record.get("choices") or []]
    if len(texts) != len(LETTERS):
        return None, f"{len(texts)} options (expected 4)"
    if not all(texts):
        return None, "an empty option"
    answer = record.get("answer")
    label = LETTERS.index(answer) if isinstance(answer, str) and len(answer) == 1 and answer in LETTERS else answer
    if not isinstance(label, int) or label not in range(len(LETTERS)):
        return None, f"answer {answer!r} names none of A, B, C, D"
    return question_row(task, record["question"], texts, label), None


def _rows(layout: str, pairs: list[tuple[str, list[Path]]], src: Path, split: str, staging: Path, task,
          report: PrepReport):
    def generate():
        for subject, paths in pairs:
            records = (_csv_records(paths[0], src, report) if layout == "original" else
                       parquet_records(paths, src, staging))
            for number, (where, record) in enumerate(records):
                fields, problem = _question(record, task)
                if problem:
                    report.skip(where, problem)
                    continue
                yield {"id": f"{subject}-{split}-{number}", **fields, "subject": subject}
    return generate


def prepare(src: Path, out: Path, args: argparse.Namespace) -> PrepReport:
    from datasets import Value

    task = get_task("medqa", protocol=args.protocol)
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()]
    layout, files = _layout(src, subjects)
    report = question_report("mmlu_medical", src, args.protocol, layout=layout, subjects=subjects)
    features = question_features({"subject": Value("string")})
    with staged_output(out, args.overwrite) as staging:
        splits = {split: build_split(_rows(layout, pairs, src, split, staging, task, report), features, staging,
                                     split) for split, pairs in files.items()}
        report.notes += [
            "train is MMLU's dev split (five example questions a subject): MMLU has no training split; validation "
            "is its val split, test its test split",
            f"test: the MedGemma report's Table 2 lists {PUBLISHED_TEST:,} MMLU Med questions, which the test splits "
            f"of its seven subjects (Table 3) do not explain: they hold {REAL_TEST:,} in the real release"]
        report.compare_count("test", len(splits["test"]), PUBLISHED_TEST, "questions", REPORT_TABLE_2)
        save_questions(splits, report, staging)
    return report


# ----------------------------------------------------------------------------- synthetic stand-in
# medqa's learnable questions (the finding fixes the answer's letter), a comma in each so that fields are quoted.
def _standin_records(subject: str, n: int, rng: random.Random) -> list[dict[str, Any]]:
    records = []
    for i in range(n):
        finding, texts, label = standin_question(i, rng)
        records.append({"question": f"On the radiograph, {finding[0].lower()}{finding[1:]} Which finding is present?",
                        "subject": subject, "choices": texts, "answer": label})
    return records


def synthesize(out: Path, seed: int = 0, layout: str = "original") -> None:
    """The seven subjects (dev 5, val 2, test 4 questions each) in the original release's CSVs, with rows a broken
    copy can hold (a row short of a field, an answer that names no option, an empty option); or with layout="hub"
    cais/mmlu's Parquet files (an option missing, no answer, an empty option)."""
    rng = random.Random(seed)
    sizes = {"train": 5, "validation": 2, "test": 4}
    questions = {(s, split): _standin_records(s, n, rng) for s in SUBJECTS for split, n in sizes.items()}
    if layout == "hub":
        questions["anatomy", "test"] += [{**questions["anatomy", "test"][0], "choices": ["a", "b", "c"]},
                                         {**questions["anatomy", "test"][1], "answer": -1}]
        questions["virology", "validation"].append({**questions["virology", "validation"][0],
                                                    "choices": ["a", "", "c", "d"]})
        _write_parquet(out, questions)
        return
    for (subject, split), records in questions.items():
        rows = [[r["question"], *r["choices"], LETTERS[r["answer"]]] for r in records]
        if (subject, split) == ("anatomy", "test"):
            rows += [rows[0][:4] + rows[0][5:], rows[1][:5] + ["E"]]  # a field missing; answer E
        if (subject, split) == ("virology", "validation"):
            rows.append([rows[0][0], "a", " ", "c", "d", "A"])
        path = out / "data" / ORIGINAL[split] / f"{subject}_{ORIGINAL[split]}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)


def _write_parquet(out: Path, questions: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
    from datasets import ClassLabel, Dataset, Features, List, Value

    features = Features({"question": Value("string"), "subject": Value("string"), "choices": List(Value("string")),
                         "answer": ClassLabel(names=list(LETTERS))})
    for (subject, split), records in questions.items():
        path = out / subject / f"{HUB[split]}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        Dataset.from_list(records, features=features).to_parquet(str(path))
