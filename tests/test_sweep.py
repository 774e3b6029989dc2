"""`medtune sweep`: the grid from the command line, every run's recipe checked before any starts, runs one
after another in their own folders, a table of validation and test metrics, and a resume after a kill."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from medtune.config import RecipeError
from medtune.sweep import split_grid
from tests.conftest import REPO, run_cli, wait_until


def test_keys_with_several_values_are_the_axes():
    axes, fixed = split_grid(["training.learning_rate=5e-5,1e-4", "lora.r=8,16", "training.max_steps=10",
                              "lora.target_modules=[q_proj,v_proj]"])
    assert axes == [("training.learning_rate", ["5e-5", "1e-4"]), ("lora.r", ["8", "16"])]
    assert fixed == ["training.max_steps=10", "lora.target_modules=[q_proj,v_proj]"]
    with pytest.raises(RecipeError, match="empty value"):
        split_grid(["lora.r=8,"])


def test_a_bad_run_is_refused_before_any_run_starts(small_crc, tmp_path):
    result = run_cli("medtune", "sweep", "recipes/demo/tissue_classification.yaml", "lora.r=8,0",
                     f"data.path={small_crc / 'data'}", f"training.output_dir={tmp_path / 'out'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["medtune: lora.r: 0 is out of range: must be >= 1"]
    assert not (tmp_path / "out").exists()


def test_a_sweep_killed_between_its_runs_resumes_and_ends_with_its_table(small_crc, tmp_path):
    command = ["medtune", "sweep", "recipes/demo/tissue_classification.yaml", "training.learning_rate=1e-3,3e-3",
               f"data.path={small_crc / 'data'}", f"training.output_dir={tmp_path}", "training.max_steps=4",
               "training.eval_strategy=steps", "training.eval_steps=2", "training.save_strategy=steps",
               "training.save_steps=2", "eval.baseline=false", "tracking.backend=none"]
    first_run, second_run = tmp_path / "sweep" / "learning_rate-1e-3", tmp_path / "sweep" / "learning_rate-3e-3"
    sweep = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)  # its own process group: the kill takes the run with it
    wait_until(lambda: (first_run / "eval" / "finetuned.json").exists(), sweep)
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    assert not (second_run / "eval" / "finetuned.json").exists()

    again = run_cli(*command)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "[1/2] learning_rate-1e-3: finished earlier, kept" in again.stdout
    assert (second_run / "eval" / "finetuned.json").exists()
    table = (tmp_path / "sweep" / "sweep.md").read_text()
    assert table in again.stdout
    lines = table.strip().splitlines()
    assert lines[0].startswith("|  | training.learning_rate | best eval_weighted_f1 | test weighted_f1 |")
    rows = lines[2:]
    assert [row.split(" | ")[1] for row in rows] == ["1e-3", "3e-3"]
    assert sum(row.startswith("| best |") for row in rows) == 1
    assert all("(step " in row and "min" in row for row in rows)
