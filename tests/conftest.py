"""Shared fixtures. Everything runs offline on a CPU: the tiny model is built locally (into a per-session
cache), data is the synthetic stand-in in each publisher's raw layout."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# property tests check behaviour, not speed: no per-example deadline on a loaded 2-core CI machine
settings.register_profile("medtune", deadline=None)
settings.load_profile("medtune")

REPO = Path(__file__).resolve().parents[1]
PLANTED_TOKEN = "hf_medtunePlantedTestToken0123456789"  # must never appear in any file a run writes
os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may reach the Hub from a test
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session", autouse=True)
def tiny_cache(tmp_path_factory):
    """A fresh tiny-model cache per session (also proves the model builds from nothing)."""
    path = tmp_path_factory.mktemp("medtune-cache")
    os.environ["MEDTUNE_CACHE"] = str(path)
    return path


# the groups that take longest, longest first (their summed durations, `pytest --durations=0`, 2026-12-06)
LONGEST_GROUPS = ["test_grpo.py", "demo", "test_findings_readers.py", "launch", "test_own_data.py",
                  "test_mimic_cxr.py", "test_bench.py", "test_siim_acr.py", "test_text_only.py",
                  "test_findings_table.py", "test_hub.py", "test_table13.py", "test_end_to_end.py",
                  "test_training_step.py"]


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
    """The suite runs on two pytest-xdist workers (pyproject's addopts), a group of tests to a worker: the tests
    of a file together (they share its fixtures), except that the tests sharing the demo run form one group (it
    is trained once), and those that launch ranks with `accelerate launch` another (they never contend for its
    rendezvous port, and the longest file splits in two)."""
    groups = {}
    for item in items:
        if "demo_run" in getattr(item, "fixturenames", ()):
            group = "demo"
        elif item.get_closest_marker("launches_ranks"):
            group = "launch"
        else:
            group = item.path.name
        groups[item] = group
        item.add_marker(pytest.mark.xdist_group(group))
    # The longest groups first (pyproject's --no-loadscope-reorder keeps this order; xdist's own puts the groups of
    # most tests first): a worker then never ends the run alone with a long group left
    items.sort(key=lambda item: LONGEST_GROUPS.index(groups[item]) if groups[item] in LONGEST_GROUPS
               else len(LONGEST_GROUPS))


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command as a user would (a fresh process), capturing its output."""
    return subprocess.run([*args], cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_until(reached, process: subprocess.Popen, give_up_after: float = 300) -> None:
    """Poll `reached()` while `process` runs, to interrupt it at that point; fails if the process ends first
    (or, against a hang, if nothing happens for `give_up_after` seconds)."""
    import time

    give_up = time.monotonic() + give_up_after
    while not reached():
        if process.poll() is not None:
            pytest.fail("the process ended before it could be interrupted")
        if time.monotonic() > give_up:
            pytest.fail("the process hung")
        time.sleep(0.005)


def prepare_stand_in(root: Path, reader: str, src: Path, *options: str) -> subprocess.CompletedProcess:
    """`python -m data_prep READER --src SRC --out ROOT/data OPTIONS`, which must succeed."""
    result = run_cli(sys.executable, "-m", "data_prep", reader, "--src", str(src), "--out", str(root / "data"),
                     *options)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="session")
def small_crc(tmp_path_factory):
    """A small synthetic CRC download (4 train / 2 test images per class) and its prepared DatasetDict."""
    from data_prep.crc100k import synthesize

    root = tmp_path_factory.mktemp("crc-small")
    synthesize(root / "raw", seed=1, train_per_class=4, test_per_class=2)
    prepare_stand_in(root, "crc100k", root / "raw")
    return root


@pytest.fixture(scope="session")
def small_siim(tmp_path_factory):
    """The synthetic SIIM-ACR download (40 patients, broken files included) and its prepared DatasetDict."""
    from data_prep.siim_acr import synthesize

    root = tmp_path_factory.mktemp("siim-small")
    synthesize(root / "raw", seed=0)
    prepare_stand_in(root, "siim_acr", root / "raw", "--recipe", str(REPO / "recipes/pneumothorax/qlora.yaml"))
    return root


@pytest.fixture(scope="session")
def small_mimic(tmp_path_factory):
    """The synthetic MIMIC-CXR-JPG download (30 subjects, full-size films, broken studies included), prepared
    with two processes."""
    from data_prep.mimic_cxr import synthesize

    root = tmp_path_factory.mktemp("mimic-small")
    synthesize(root / "raw", seed=0)
    result = prepare_stand_in(root, "mimic_cxr", root / "raw", "--num-proc", "2")
    root.joinpath("prep_stderr.txt").write_text(result.stderr)
    return root


@pytest.fixture(scope="session")
def small_imagefolder(tmp_path_factory):
    """The synthetic image folder (three classes, a PACS export of DICOMs, broken files), prepared for the
    classification recipe."""
    from data_prep.imagefolder import synthesize

    root = tmp_path_factory.mktemp("imagefolder-small")
    synthesize(root / "raw", seed=0)
    prepare_stand_in(root, "imagefolder", root / "raw",
                     "--recipe", str(REPO / "recipes/custom/classification_lora.yaml"))
    return root


@pytest.fixture(scope="session")
def small_table(tmp_path_factory):
    """The synthetic table (CSV, JSON lines, Parquet), its CSV prepared for the free-text recipe."""
    from data_prep.table import synthesize

    root = tmp_path_factory.mktemp("table-small")
    synthesize(root / "raw", seed=0)
    prepare_stand_in(root, "table", root / "raw/table.csv", "--group-column", "patient",
                     "--recipe", str(REPO / "recipes/custom/free_text_lora.yaml"))
    return root


@pytest.fixture(scope="session")
def small_medqa(tmp_path_factory):
    """The synthetic MedQA questions (4 options, broken lines included), prepared: text only."""
    from data_prep.medqa import synthesize

    root = tmp_path_factory.mktemp("medqa-small")
    synthesize(root / "raw", seed=0)
    prepare_stand_in(root, "medqa", root / "raw")
    return root


@pytest.fixture(scope="session")
def small_cxr_findings(tmp_path_factory):
    """The synthetic MIMIC-CXR-JPG download with its label CSVs (24 subjects), prepared for the five findings."""
    from data_prep.mimic_cxr_findings import synthesize

    root = tmp_path_factory.mktemp("cxr-findings-small")
    synthesize(root / "raw", seed=0)
    prepare_stand_in(root, "mimic_cxr_findings", root / "raw", "--num-proc", "1")
    return root


@pytest.fixture(scope="session")
def small_findings_table(tmp_path_factory):
    """The synthetic findings table (one column per finding), prepared for the findings recipe."""
    from data_prep.table import FINDINGS_STANDIN, synthesize_findings

    root = tmp_path_factory.mktemp("findings-table-small")
    synthesize_findings(root / "raw", seed=0)
    prepare_stand_in(root, "table", root / "raw/findings.csv", "--finding-columns", ",".join(FINDINGS_STANDIN),
                     "--group-column", "patient", "--recipe", str(REPO / "recipes/custom/findings_qlora.yaml"))
    return root


@pytest.fixture(scope="session")
def prepared(small_crc, small_siim, small_mimic, small_imagefolder, small_table, small_medqa, small_cxr_findings,
             small_findings_table):
    """task name -> a prepared dataset folder for it."""
    return {"tissue_classification": small_crc / "data", "pneumothorax": small_siim / "data",
            "report_generation": small_mimic / "data", "classification": small_imagefolder / "data",
            "free_text": small_table / "data", "medqa": small_medqa / "data",
            "cxr_findings": small_cxr_findings / "data", "findings": small_findings_table / "data"}


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`medtune demo`, exactly as the README runs it: synthetic data -> prepare -> train -> eval -> export."""
    workdir = tmp_path_factory.mktemp("demo")
    os.environ["HF_TOKEN"] = PLANTED_TOKEN  # as a user with a Hub login would have it
    try:
        result = run_cli("medtune", "demo", "--workdir", str(workdir))
    finally:
        del os.environ["HF_TOKEN"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, result
