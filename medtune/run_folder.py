"""The files of a run folder (`training.output_dir`), named once, and read back the same way by everything that
reads them (the model card, `medtune compare`, `medtune sweep`, export):

    recipe.yaml                the resolved recipe (secrets masked)
    run_info.json              command, versions, hardware, schedule, training wall time
    eval/baseline.json         the out-of-box evaluation (`metrics`, ...); eval/finetuned.json the adapter's
    eval/NAME_predictions.jsonl  one prediction a line, with its per-example scores
    eval/comparison.md         the out-of-box against fine-tuned table
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medtune.config import load_yaml

RECIPE, RUN_INFO, EVAL_DIR, COMPARISON = "recipe.yaml", "run_info.json", "eval", "comparison.md"
EVALUATIONS = ("baseline", "finetuned")  # the two evaluations of a run, by name


def eval_dir(run: Path) -> Path:
    return Path(run) / EVAL_DIR


def result_file(name: str) -> str:
    """An evaluation's result in eval/ (baseline, finetuned, or `medtune eval --name`)."""
    return f"{name}.json"


def predictions_file(name: str) -> str:
    return f"{name}_predictions.jsonl"


def served_log_file(name: str) -> str:
    """A served evaluation's answers as they arrived (medtune/served.py): what a rerun does not ask again."""
    return f"{name}.served.jsonl"


def result_path(run: Path, name: str) -> Path:
    return eval_dir(run) / result_file(name)


def predictions_path(run: Path, name: str) -> Path:
    return eval_dir(run) / predictions_file(name)


def comparison_path(run: Path) -> Path:
    return eval_dir(run) / COMPARISON


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from the run folder; {} where the file is missing or unreadable (a run still in progress,
    or one that never evaluated)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def read_result(run: Path, name: str) -> dict[str, Any]:
    return read_json(result_path(run, name))


def read_run_info(run: Path) -> dict[str, Any]:
    return read_json(Path(run) / RUN_INFO)


def read_recipe(run: Path) -> dict[str, Any]:
    """The saved recipe as plain data ({} where the run has none)."""
    path = Path(run) / RECIPE
    return (load_yaml(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}
