"""PubMedQA (Jin et al. 2019), its expert-labelled questions (PQA-L), as github.com/pubmedqa/pubmedqa holds them:

    RAW/data/ori_pqal.json            PMID -> {QUESTION, CONTEXTS, LABELS, MESHES, YEAR, reasoning_required_pred,
                                      reasoning_free_pred, final_decision (yes/no/maybe), LONG_ANSWER}: 1,000 questions
    RAW/data/test_ground_truth.json   PMID -> yes/no/maybe: the 500 test questions (`evaluation.py` scores these)

(--src may also be the data folder itself.) Test is the PMIDs of test_ground_truth.json, labelled by it: the split
the MedGemma report evaluated (500 questions); a PMID missing from ori_pqal.json is skipped and listed. The other
questions of ori_pqal.json are train, labelled by final_decision, 10% of each answer held out for validation
(seeded). Options: yes, no, maybe (A, B, C). `context` is the abstract without its conclusion: CONTEXTS joined by
new lines, each after its section name from LABELS ("BACKGROUND: ..."). A question without text or CONTEXTS, or
with an answer that is not yes, no or maybe, is skipped and listed. Default prompt: the report's PubMedQA prompt
(--protocol medgemma-pubmedqa). The unlabelled and artificial sets (PQA-U, PQA-A) are not read.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

from data_prep._common import PrepError, PrepReport, build_split, read_json_file, staged_output
from data_prep.medqa import (REPORT_TABLE_2, add_protocol_argument, hold_out, question_features, question_report,
                             question_row, save_questions)
from medtune.tasks import get_task

QUESTIONS, GROUND_TRUTH = "ori_pqal.json", "test_ground_truth.json"
OPTIONS = ["yes", "no", "maybe"]
PUBLISHED_TEST = 500
VALIDATION_FRACTION = 0.1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_protocol_argument(parser, "medgemma-pubmedqa")
    parser.add_argument("--seed", type=int, default=42, help="which train questions validation holds out")


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_file(path, dict, f"a JSON object of PMIDs: is it PubMedQA's {path.name}?")


def _data_folder(src: Path) -> Path:
    for folder in (src / "data", src):
        if (folder / QUESTIONS).is_file() and (folder / GROUND_TRUTH).is_file():
            return folder
    raise PrepError(f"{src} has no data/{QUESTIONS} and data/{GROUND_TRUTH}: point --src at a clone of "
                    "github.com/pubmedqa/pubmedqa (or its data folder)")


def _context(item: dict[str, Any]) -> str:
    """CONTEXTS on their lines, each after its section name (LABELS, where given)."""
    sections = item.get("LABELS") or []
    texts = [str(text).strip() for text in item["CONTEXTS"]]
    return "\n".join(f"{sections[i]}: {text}" if i < len(sections) and sections[i] else text
                     for i, text in enumerate(texts) if text)


def _question(item: Any, answer: Any, task) -> tuple[dict | None, str | None]:
    """(row fields, None) for a usable question with its answer word, else (None, why)."""
    if not isinstance(item, dict) or not str(item.get("QUESTION") or "").strip():
        return None, "no QUESTION"
    contexts = item.get("CONTEXTS")
    if not isinstance(contexts, list) or not any(str(text).strip() for text in contexts):
        return None, "no CONTEXTS"
    if answer not in OPTIONS:
        return None, f"answer {answer!r} is not yes, no or maybe"
    context = _context(item)
    return {**question_row(task, item["QUESTION"], OPTIONS, OPTIONS.index(answer), context=context),
            "context": context}, None


def _rows(pmids: list[str], questions: dict, answers: dict, where: str, task, report: PrepReport):
    """The questions of `pmids`, answered by `answers`; `where` names the file that labels them (in skips)."""
    def generate():
        for pmid in pmids:
            if pmid not in questions:
                report.skip(f"{where}[{pmid}]", f"PMID not in {QUESTIONS}")
                continue
            fields, problem = _question(questions[pmid], answers[pmid], task)
            if problem:
                report.skip(f"{where}[{pmid}]", problem)
                continue
            yield {"id": pmid, **fields}
    return generate


def prepare(src: Path, out: Path, args: argparse.Namespace) -> PrepReport:
    from datasets import Value

    task = get_task("medqa", protocol=args.protocol)
    folder = _data_folder(src)
    questions, truth = _read_json(folder / QUESTIONS), _read_json(folder / GROUND_TRUTH)
    report = question_report("pubmedqa", src, args.protocol, options=OPTIONS, seed=args.seed,
                             validation_fraction=VALIDATION_FRACTION)
    decisions = {pmid: item.get("final_decision") if isinstance(item, dict) else None
                 for pmid, item in questions.items()}
    pmids = {"test": sorted(truth), "train": sorted(set(questions) - set(truth))}
    where = {name: str((folder / name).relative_to(src)) for name in (QUESTIONS, GROUND_TRUTH)}
    rows = {"test": _rows(pmids["test"], questions, truth, where[GROUND_TRUTH], task, report),
            "train": _rows(pmids["train"], questions, decisions, where[QUESTIONS], task, report)}
    features = question_features({"context": Value("string")})
    with staged_output(out, args.overwrite) as staging:
        splits = {split: build_split(generate, features, staging, split) for split, generate in rows.items()}
        splits["train"], splits["validation"] = hold_out(splits["train"], VALIDATION_FRACTION, args.seed)
        report.notes.append(f"test: the PMIDs of {GROUND_TRUTH}, labelled by it; train: the other questions of "
                            f"{QUESTIONS} (final_decision), {len(splits['validation']):,} of them held out for "
                            f"validation (10% of each answer, seed {args.seed})")
        report.compare_count("test", len(splits["test"]), PUBLISHED_TEST, "questions", REPORT_TABLE_2)
        save_questions(splits, report, staging)
    return report


# ----------------------------------------------------------------------------- synthetic stand-in
# The answer follows from the question's wording (and the result the abstract reports): a tiny model can learn it.
_STUDIES = {"yes": ("Does {drug} lower blood pressure?", "Blood pressure fell in every patient given {drug}."),
            "no": ("Does {drug} change hair colour?", "Hair colour was the same with and without {drug}."),
            "maybe": ("Is {drug} worth giving for ten years?", "Some patients given {drug} did better, others not.")}
_DRUGS = ("aspirin", "metformin", "atenolol", "lisinopril", "statins", "warfarin", "insulin")


def _study(i: int, rng: random.Random) -> dict[str, Any]:
    answer, drug = OPTIONS[i % 3], rng.choice(_DRUGS)
    question, result = (text.format(drug=drug) for text in _STUDIES[answer])
    return {"QUESTION": question, "CONTEXTS": [f"We studied {drug} in {rng.randint(40, 400)} adults.", result],
            "LABELS": ["BACKGROUND", "RESULTS"], "MESHES": ["Humans", "Adult"], "YEAR": str(rng.randint(1995, 2015)),
            "reasoning_required_pred": answer, "reasoning_free_pred": answer, "final_decision": answer,
            "LONG_ANSWER": f"The answer is {answer}."}


def synthesize(out: Path, seed: int = 0) -> None:
    """data/ori_pqal.json (40 questions, 20 of them test) and data/test_ground_truth.json, with what a broken copy
    can hold: a question without text, one without an answer, a test PMID missing from ori_pqal.json."""
    rng = random.Random(seed)
    pmids = [str(21000000 + 7919 * i) for i in range(40)]
    questions = {pmid: _study(i, rng) for i, pmid in enumerate(pmids)}
    truth = {pmid: questions[pmid]["final_decision"] for pmid in pmids[::2]}
    questions[pmids[1]]["QUESTION"] = ""
    questions[pmids[3]]["final_decision"] = ""
    del questions[pmids[4]]  # listed in test_ground_truth.json
    folder = out / "data"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / QUESTIONS).write_text(json.dumps(questions, indent=4), encoding="utf-8")
    (folder / GROUND_TRUTH).write_text(json.dumps(truth), encoding="utf-8")
