"""The table of benchmarks/table13.sh: medtune's out-of-box and fine-tuned figures beside the MedGemma
technical report's Table 13, from the runs under WORK_DIR/runs/<task>/.

    python benchmarks/table13.py WORK_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

# task, metric, the report's out-of-box and fine-tuned figures (Table 13; DESIGN.md)
REPORTED = [
    ("tissue_classification", "weighted_f1", 32.8, 94.5),
    ("pneumothorax", "f1", 59.7, 71.5),
    ("pneumothorax", "accuracy", 85.9, 87.8),
    ("report_generation", "radgraph_f1", 29.5, 30.3),
]
NOTES = {"report_generation": "the report measured report generation on google/medgemma-4b-pt; this run used "
                              "the recipe's model"}


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _cell(result: dict, metric: str, notes: list[str]) -> str:
    """The metric in percent, or "—" (its reason, if the run gave one, joins the notes)."""
    value = result.get("metrics", {}).get(metric)
    reason = result.get("metrics", {}).get(f"{metric}_unavailable")
    if value is None and reason and f"{metric} unavailable: {reason}" not in notes:
        notes.append(f"{metric} unavailable: {reason}")
    return "—" if value is None else f"{100 * value:.1f}"


def _model_name(result: dict) -> str:
    """The base model a run evaluated: its Hub id, or a local folder's name."""
    model = (result.get("model") or "—").split(" + ")[0]
    return Path(model).name if Path(model).is_dir() else model


def table(work: Path) -> str:
    lines = ["| task | metric | report: out-of-box | report: fine-tuned | medtune: out-of-box | medtune: fine-tuned "
             "| model | wall time | hardware |", "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for task, metric, out_of_box, fine_tuned in REPORTED:
        run = work / "runs" / task
        if not run.is_dir():
            continue
        baseline, finetuned = _load(run / "eval" / "baseline.json"), _load(run / "eval" / "finetuned.json")
        info = _load(run / "run_info.json")
        seconds = info.get("train_seconds", 0) + baseline.get("seconds", 0) + finetuned.get("seconds", 0)
        lines.append(f"| {task} | {metric} | {out_of_box} | {fine_tuned} | {_cell(baseline, metric, notes)} | "
                     f"{_cell(finetuned, metric, notes)} | {_model_name(baseline or finetuned)} | "
                     f"{seconds / 60:.1f} min | {info.get('hardware', '—')} |")
        if task in NOTES and NOTES[task] not in notes:
            notes.append(NOTES[task])
    return "\n".join(lines + [""] + [f"- {note}" for note in notes]) + "\n"


if __name__ == "__main__":
    print(table(Path(sys.argv[1])), end="")
