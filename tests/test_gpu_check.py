"""benchmarks/gpu_check.sh cannot rot between the rare runs on a GPU machine: its dry run, on this CPU, lists what it
would run and finds every file it needs and the GPU tests collected; a tree without them fails it, naming them."""
from __future__ import annotations

import shutil

from tests.conftest import REPO, run_cli

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def test_the_dry_run_lists_the_parts_and_finds_everything_it_needs():
    result = run_cli("bash", str(SCRIPT), "--dry-run", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for part in ("preflight", "tiny-twins", "real-shape", "throughput"):
        assert f"  {part} " in out
    assert "--configs reference,medtune-lora,medtune-qlora" in out
    for tests in ("tests/test_gpu.py", "tests/test_gpu_real_shape.py"):
        collected = next(line for line in out.splitlines() if line.startswith(f"  {tests}: "))
        assert int(collected.split(": ")[1].split()[0]) > 0
    assert 'EXTRA="pytest==' in out and "dry run: every file is there" in out


def test_a_tree_without_its_files_fails_the_dry_run_naming_them(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(SCRIPT, tmp_path / "benchmarks" / "gpu_check.sh")
    result = run_cli("bash", str(tmp_path / "benchmarks" / "gpu_check.sh"), "--dry-run", cwd=tmp_path, timeout=60)
    assert result.returncode == 1
    assert "MISSING: tests/test_gpu.py" in result.stdout and "MISSING: benchmarks/train_throughput.py" in result.stdout
    assert "dry run: something is missing" in result.stdout
