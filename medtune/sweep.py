"""`medtune sweep RECIPE section.key=a,b,c [section.key=x,y] [section.key=value ...]`: a grid of training runs.

Each override whose value lists several comma-separated values is an axis of the grid (a YAML list in brackets
is one value); the others apply to every run. The runs go one after another, each a fresh `medtune/train.py`
process (or `--launcher "accelerate launch ..."`), each in its own folder OUTPUT_DIR/sweep/<name> and as one run
of the dashboard group named after OUTPUT_DIR. The sweep ends with a table (also OUTPUT_DIR/sweep/sweep.md):
each run's best validation metric, its test metrics and its wall time, the best run on validation marked.

An interrupted sweep resumes where it stopped when run again: finished runs are kept, an interrupted one
continues from its newest complete checkpoint (training.resume_from_checkpoint=auto).
"""
from __future__ import annotations

import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from medtune import run_folder
from medtune.config import RecipeError, load_recipe

TRAIN_SCRIPT = Path(__file__).resolve().parent / "train.py"


@dataclass
class SweepRun:
    name: str
    overrides: list[str]  # the run's own values of the grid's axes
    output_dir: Path


def split_grid(overrides: list[str]) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """(axes: [(key, values)], fixed overrides). `key=a,b` is an axis; `key=[a,b]` and `key={...}` are one value."""
    axes, fixed = [], []
    for override in overrides:
        key, _, raw = override.partition("=")
        if "," in raw and not raw.strip().startswith(("[", "{")):
            values = [v.strip() for v in raw.split(",")]
            if not all(values):
                raise RecipeError(key, f"an empty value in the sweep axis {override!r}")
            axes.append((key, values))
        else:
            fixed.append(override)
    return axes, fixed


def plan(recipe_path: Path, overrides: list[str]):
    """(the recipe with the fixed overrides, the axes, the runs, the fixed overrides), every run's recipe
    validated before any of them starts."""
    axes, fixed = split_grid(overrides)
    if not axes:
        raise RecipeError("", "a sweep needs at least one key with several values, e.g. "
                              "training.learning_rate=5e-5,1e-4,2e-4")
    recipe = load_recipe(recipe_path, fixed)
    sweep_dir = recipe.output_dir / "sweep"
    runs = []
    for values in itertools.product(*(v for _, v in axes)):
        own = [f"{key}={value}" for (key, _), value in zip(axes, values)]
        name = "_".join(f"{key.split('.')[-1]}-{value}" for (key, _), value in zip(axes, values))
        run = SweepRun(name, own, sweep_dir / name)
        load_recipe(recipe_path, [*fixed, *own, f"training.output_dir={run.output_dir}"])  # refused here, not later
        runs.append(run)
    return recipe, axes, runs, fixed


def finished(run: SweepRun, evaluates: bool) -> bool:
    """Trained (run_info records the training time), and evaluated when the recipe evaluates."""
    trained = "train_seconds" in run_folder.read_run_info(run.output_dir)
    return trained and (not evaluates or run_folder.result_path(run.output_dir, "finetuned").is_file())


def run_sweep(recipe_path: Path, overrides: list[str], launcher: str | None = None) -> str:
    """Runs what is left of the grid and returns the table."""
    recipe, axes, runs, fixed = plan(recipe_path, overrides)
    sweep_dir = recipe.output_dir / "sweep"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record_path = sweep_dir / "sweep.json"  # wall times and exit codes of the runs so far
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
    command = [*(shlex.split(launcher) if launcher else [sys.executable]), str(TRAIN_SCRIPT), str(recipe_path)]
    group = recipe.output_dir.name
    for i, run in enumerate(runs, start=1):
        if finished(run, recipe.eval.finetuned):
            print(f"[{i}/{len(runs)}] {run.name}: finished earlier, kept")
            continue
        print(f"[{i}/{len(runs)}] {run.name}: training{' (resuming)' if run.output_dir.is_dir() else ''}",
              flush=True)
        started = time.time()
        result = subprocess.run([*command, *fixed, *run.overrides, f"training.output_dir={run.output_dir}",
                                 f"tracking.run_name={run.name}", "training.resume_from_checkpoint=auto"],
                                env={**os.environ, "WANDB_RUN_GROUP": group})
        record[run.name] = {"seconds": round(time.time() - started + record.get(run.name, {}).get("seconds", 0), 1),
                            "exit_code": result.returncode}
        record_path.write_text(json.dumps(record, indent=2), encoding="utf-8")
        if result.returncode != 0:
            print(f"[{i}/{len(runs)}] {run.name}: failed (exit code {result.returncode}); the sweep goes on")
    table = sweep_table(recipe, axes, runs, record)
    (sweep_dir / "sweep.md").write_text(table, encoding="utf-8")
    return table


def sweep_table(recipe, axes, runs: list[SweepRun], record: dict) -> str:
    """One row a run: its axis values, best validation metric (and step), test metrics, wall time; the run
    with the best validation metric marked. Selection is on validation only: the test split stays unseen."""
    from medtune.tasks import task_for

    task = task_for(recipe.task)
    rows, best_value, best_row, metric = [], None, None, "validation metric"
    for run in runs:
        info = run_folder.read_run_info(run.output_dir)
        test = run_folder.read_result(run.output_dir, "finetuned").get("metrics", {})
        best = info.get("best_checkpoint")
        validation = f"{best['value']:.4f} (step {best['step']})" if best else "—"
        tests = [f"{test[k]:.4f}" if isinstance(test.get(k), float) else str(test.get(k, "—"))
                 for k in task.table_metrics]
        seconds = record.get(run.name, {}).get("seconds")
        if seconds is None and "train_seconds" in info:  # the sweep was stopped before it could time the run:
            seconds = info["train_seconds"] + sum(  # the run's own timings of its training and evaluations
                run_folder.read_result(run.output_dir, which).get("seconds", 0) for which in run_folder.EVALUATIONS)
        wall = f"{seconds / 60:.1f} min" if seconds is not None else "—"
        if record.get(run.name, {}).get("exit_code"):
            wall += f" (failed: exit code {record[run.name]['exit_code']})"
        values = [o.partition("=")[2] for o in run.overrides]
        rows.append(["", *values, validation, *tests, wall])
        if best and (best_value is None or best["value"] > best_value):
            best_value, best_row, metric = best["value"], rows[-1], best["metric"]
    if best_row is not None:
        best_row[0] = "best"
    header = ["", *(key for key, _ in axes), f"best {metric}", *(f"test {k}" for k in task.table_metrics), "wall time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    note = "" if best_row is not None else "\nNo run validated (training.eval_strategy): none is marked best.\n"
    return "\n".join(lines) + "\n" + note

