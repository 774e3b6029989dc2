"""`medtune compare RUN_DIR...`: finished runs evaluated on the same test split, one table: each run's out-of-box
and fine-tuned rows (a MedGemma run's base model and adapter; a MedSigLIP run's zero-shot scores and probe), the
task's metrics, the wall time of training and of evaluation, and the trainable parameters. It answers the
question a user has: for my task, is a MedGemma LoRA worth it over a MedSigLIP probe?

Reads only what every run writes (recipe.yaml, run_info.json, eval/), so runs made on other machines compare.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medtune import medsiglip, run_folder
from medtune.errors import MedtuneError

WEIGHT_FILES = ("adapter_model.safetensors", medsiglip.PROBE_FILE)  # what a run trained, by kind


def trainable_parameters(run: Path) -> int | None:
    """The parameters a run trained, counted from the weights it saved (a LoRA adapter, a probe)."""
    from safetensors import safe_open

    for name in WEIGHT_FILES:
        if (run / name).is_file():
            with safe_open(str(run / name), "np") as f:
                total = 0
                for key in f.keys():
                    count = 1
                    for size in f.get_slice(key).get_shape():
                        count *= size
                    total += count
                return total
    return None


def _labels(recipe: dict[str, Any]) -> dict[str, str]:
    """What a run's baseline and fine-tuned rows are, from its recipe."""
    family = medsiglip.compare_labels(recipe)  # another family's run names its rows itself
    if family:
        return family
    quantized = (recipe.get("quantization") or {}).get("load_in_4bit")
    return {"baseline": "out-of-box", "finetuned": "QLoRA" if quantized else "LoRA"}


def _evaluated_ids(run: Path, name: str) -> frozenset[str]:
    path = run_folder.predictions_path(run, name)
    return frozenset(json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines() if line)


def run_rows(run: Path) -> list[dict[str, Any]]:
    """One row per evaluation the run holds (baseline, fine-tuned)."""
    if not (run / run_folder.RECIPE).is_file() or not run_folder.eval_dir(run).is_dir():
        raise MedtuneError(f"{run}: not a finished run (no {run_folder.RECIPE} and {run_folder.EVAL_DIR}/)")
    recipe = run_folder.read_recipe(run)
    info, labels = run_folder.read_run_info(run), _labels(recipe)
    rows = []
    for name in run_folder.EVALUATIONS:
        result = run_folder.read_result(run, name)
        if not result:
            continue
        trained = name == "finetuned"
        rows.append({"run": run.name, "model": (recipe.get("model") or {}).get("name_or_path", "?"),
                     "method": labels[name], "task": result["task"], "split": result["split"], "n": result["n"],
                     "ids": _evaluated_ids(run, name), "metrics": result["metrics"],
                     "train_seconds": info.get("train_seconds") if trained else 0.0,
                     "eval_seconds": result.get("seconds"),
                     "trainable": trainable_parameters(run) if trained else 0})
    if not rows:
        raise MedtuneError(f"{run}: its eval/ holds no baseline.json or finetuned.json")
    return rows


def _metric_names(run: Path) -> list[str]:
    """The task's table metrics, in the run's comparison.md order."""
    table = run_folder.comparison_path(run).read_text(encoding="utf-8").splitlines()
    return [line.split("|")[2].strip() for line in table[2:] if line.startswith("|")]


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _count(value: int | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1e6:.1f} M" if value >= 100_000 else f"{value:,}"


def compare(runs: list[Path]) -> str:
    """The markdown table of `runs`, which must have evaluated the same examples of the same task and split."""
    if not runs:
        raise MedtuneError("name the run folders to compare (training.output_dir of each)")
    rows = [row for run in runs for row in run_rows(run)]
    first = rows[0]
    for row in rows[1:]:
        if (row["task"], row["split"], row["ids"]) != (first["task"], first["split"], first["ids"]):
            raise MedtuneError(f"{row['run']} evaluated {row['task']} on {row['split']} (n={row['n']}), "
                               f"{first['run']} {first['task']} on {first['split']} (n={first['n']}): compare runs "
                               "on the same test examples (the same data.path and data.max_test_samples)")
    metrics = _metric_names(runs[0])
    head = ["run", "model", "method", *metrics, "training s", "evaluation s", "trainable params"]
    lines = [f"{first['task']}, {first['split']} split, n={first['n']}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["run"], row["model"], row["method"], *(_cell(row["metrics"].get(m)) for m in metrics),
                 _seconds(row["train_seconds"]), _seconds(row["eval_seconds"]), _count(row["trainable"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
