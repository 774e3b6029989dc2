"""Data from the Hub and in its formats: `data_prep hub` on a dataset repository, a `save_to_disk` folder and a
Hub-cache snapshot (by its id, offline), `data_prep table` on a Parquet file with embedded image bytes; each
trained on with the tiny model to the comparison table. The medical VQA metrics, and a prep that keeps nothing.

Only the Hub's servers are out of reach: the snapshot is laid out in a Hugging Face cache as huggingface_hub
writes one (blobs, a snapshot of links, refs/main), and `huggingface_hub.scan_cache_dir` must read it back."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
from datasets import load_from_disk

from data_prep.__main__ import main as data_prep_main
from medtune.tasks import get_task
from tests.conftest import REPO, run_cli

REPO_ID = "medtune-test/vqa-standin"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
CLASSIFICATION = REPO / "recipes/custom/classification_lora.yaml"
VQA = REPO / "recipes/vqa/qlora.yaml"
# the demo's settings for a random 2-layer model (recipes/demo/tissue_classification.yaml)
TINY = ["model.name_or_path=tiny", "lora.alpha=32", "training.learning_rate=3e-3",
        "training.per_device_train_batch_size=8", "training.activation_checkpointing=false",
        "training.eval_strategy=no", "training.save_strategy=no", "tracking.backend=none", "eval.num_workers=0",
        "training.dataloader_num_workers=0"]
# what the stand-in's training split holds beyond its 36 good rows (data_prep/hub.py: standin_rows)
BROKEN = {36: "not an image", 37: "no image", 38: "empty answer"}


def write_hub_cache(repo: Path, cache: Path, repo_id: str = REPO_ID, commit: str = COMMIT) -> Path:
    """A dataset repository's files in a Hugging Face cache, as `huggingface_hub` lays a download out:
    datasets--ORG--NAME/blobs/<sha256>, snapshots/<commit>/<path> -> a relative link to its blob, refs/main."""
    folder = cache / f"datasets--{repo_id.replace('/', '--')}"
    for file in sorted(p for p in repo.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = folder / "snapshots" / commit / file.relative_to(repo)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return folder


@pytest.fixture(scope="module")
def hub_standin(tmp_path_factory):
    """The synthetic VQA stand-in (data_prep synthetic hub) and a Hugging Face cache holding its repository."""
    from data_prep.hub import synthesize

    root = tmp_path_factory.mktemp("hub")
    synthesize(root / "raw", seed=0)
    write_hub_cache(root / "raw" / "repo", root / "hf-cache")
    return root


def _prepare(hub_standin, reader: str, src: str, out: Path, *options: str, offline_cache: bool = False):
    """`python -m data_prep READER --src SRC --out OUT` in a fresh process; its datasets cache in the test's folder,
    and with `offline_cache` the stand-in's Hugging Face cache as HF_HUB_CACHE (HF_HUB_OFFLINE=1: conftest)."""
    env = {"HF_DATASETS_CACHE": str(hub_standin / "datasets-cache")}
    if offline_cache:
        env["HF_HUB_CACHE"] = str(hub_standin / "hf-cache")
    result = subprocess_run([sys.executable, "-m", "data_prep", reader, "--src", src, "--out", str(out), *options], env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "prep_report.json").read_text())


def subprocess_run(command: list[str], env: dict[str, str]):
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return run_cli(*command)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def prepared_sources(hub_standin):
    """The stand-in prepared four ways: its repository folder, its save_to_disk folder and its Hub id (offline,
    from the cache) by `data_prep hub`, its single Parquet file (a split column) by `data_prep table`."""
    raw, out = hub_standin / "raw", hub_standin / "prepared"
    reports = {
        "repo": _prepare(hub_standin, "hub", str(raw / "repo"), out / "repo", "--task", "free_text"),
        "saved": _prepare(hub_standin, "hub", str(raw / "saved"), out / "saved", "--recipe", str(VQA)),
        "hub-id": _prepare(hub_standin, "hub", REPO_ID, out / "hub-id", "--recipe", str(CLASSIFICATION),
                           "--group-column", "patient", offline_cache=True),
        "parquet": _prepare(hub_standin, "table", str(raw / "vqa.parquet"), out / "parquet",
                            "--recipe", str(CLASSIFICATION), "--group-column", "patient"),
    }
    return out, reports


def test_every_source_keeps_its_splits_and_lists_what_it_skipped(prepared_sources):
    out, reports = prepared_sources
    for name, report in reports.items():
        classification = report["task"]["name"] == "classification"
        splits = {split: counts["total"] for split, counts in report["splits"].items()}
        # the Hub's own splits; a classification prep reads no answer, so the row with an empty one is kept
        assert splits == {"train": 37 if classification else 36, "validation": 6, "test": 12}, name
        prefix = "vqa.parquet" if name == "parquet" else "train"
        expected = {f"{prefix}[{i}]": reason for i, reason in BROKEN.items()
                    if not (classification and reason == "empty answer")}
        assert {s["path"]: s["reason"] for s in report["skipped"]} == expected, name
        assert report["skipped_by_reason"] == {reason: 1 for reason in expected.values()}
    assert reports["saved"]["task"] == {"name": "free_text", "question": "Describe the findings in this image.",
                                        "protocol": "medtune"}
    assert reports["hub-id"]["task"]["options"] == {"benign": "benign", "malignant": "malignant",
                                                    "normal_tissue": "normal tissue"}  # the ClassLabel's names
    vqa = load_from_disk(str(out / "saved"))
    questions = {row["messages"][0]["content"][1]["text"] for row in vqa["test"]}
    assert questions == {"What does this image show?", "Is this lesion malignant?"}  # each row's own question
    assert set(vqa["test"]["answer"]) == {"yes", "no", "benign lesion", "malignant lesion", "normal tissue"}
    hub_id = load_from_disk(str(out / "hub-id"))
    groups = {name: set(split["group"]) for name, split in hub_id.items()}
    assert not groups["train"] & groups["test"] and not any(g.startswith("PAT-") for g in groups["train"])


def test_a_missing_split_is_drawn_and_an_unknown_one_named(hub_standin, tmp_path):
    from datasets import DatasetDict, load_from_disk

    saved = load_from_disk(str(hub_standin / "raw" / "saved"))
    DatasetDict({"train": saved["train"], "extra": saved["test"]}).save_to_disk(str(tmp_path / "src"))
    assert data_prep_main(["hub", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                           "--task", "free_text", "--test-fraction", "0.25"]) == 0
    report = json.loads((tmp_path / "out" / "prep_report.json").read_text())
    assert set(report["splits"]) == {"train", "validation", "test"} and report["splits"]["test"]["total"] >= 8
    assert report["skipped"][0] == {"path": "split extra", "reason": "not read (12 rows): only train, validation and "
                                                                     "test are"}


def test_an_id_missing_from_the_offline_cache_is_refused_in_one_line(hub_standin, tmp_path):
    result = subprocess_run([sys.executable, "-m", "data_prep", "hub", "--src", "medtune-test/elsewhere", "--out",
                             str(tmp_path / "x")], {"HF_HUB_CACHE": str(hub_standin / "hf-cache")})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "data_prep: --src medtune-test/elsewhere: not in the local Hugging Face cache, and HF_HUB_OFFLINE=1: "
        "download it once (`hf download medtune-test/elsewhere --repo-type dataset`) or go online"]


def test_the_snapshot_is_laid_out_as_huggingface_hub_writes_it(hub_standin):
    from huggingface_hub import scan_cache_dir

    cache = scan_cache_dir(hub_standin / "hf-cache")
    assert not cache.warnings
    (repo,) = cache.repos
    assert (repo.repo_id, repo.repo_type) == (REPO_ID, "dataset")
    assert [r.commit_hash for r in repo.revisions] == [COMMIT] and next(iter(repo.revisions)).refs == {"main"}


# ----------------------------------------------------------------------------- a prep that keeps nothing
def test_a_source_where_every_row_is_bad_says_why(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "empty.png").write_bytes(b"")
    (tmp_path / "all_bad.csv").write_text("image,answer\nimages/missing.png,yes\nimages/empty.png,no\n"
                                          "../outside.png,no\nimages/empty.png,\n")
    assert data_prep_main(["table", "--src", str(tmp_path / "all_bad.csv"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err  # progress bars first
    assert err[err.index("data_prep:"):].splitlines() == [
        "data_prep: nothing readable to train on",
        "  skipped 4: 1 empty answer, 1 image not found, 1 empty file, 1 image path refused",
        "    all_bad.csv:5: empty answer",
        "    all_bad.csv:2: image not found: images/missing.png",
        "    all_bad.csv:3: empty file",
        "    all_bad.csv:4: image path refused: it leads outside the table's folder (or --image-root): ../outside.png",
    ]
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the VQA metrics
def test_token_f1_and_closed_accuracy_against_hand_computed_values():
    task = get_task("free_text", None, None)
    references = ["yes", "No.", "a cat sat on", "the left lung", "normal tissue"]
    predictions = ["Yes, there is.", "yes", "The cat sat", "right lung, upper lobe", ""]
    metrics = task.compute_metrics(references, predictions)
    # open: "a cat sat on" -> {cat, sat, on} vs {cat, sat}: P 1, R 2/3, F1 0.8; "the left lung" -> {left, lung} vs
    # {right, lung, upper, lobe}: P 1/4, R 1/2, F1 1/3; an empty answer 0. Closed: yes/yes right, no/yes wrong.
    assert [e["token_f1"] for e in metrics["per_example"][2:]] == pytest.approx([0.8, 1 / 3, 0.0])
    assert metrics["token_f1_open"] == pytest.approx((0.8 + 1 / 3) / 3)
    assert metrics["closed_accuracy"] == 0.5 and (metrics["n_closed"], metrics["n_open"]) == (2, 3)
    # all together: "Yes, there is." vs "yes": P 1/3 (yes, there, is), R 1, F1 0.5; "yes" vs "No." 0
    assert metrics["token_f1"] == pytest.approx((0.5 + 0 + 0.8 + 1 / 3 + 0) / 5)
    assert [e.get("closed_correct") for e in metrics["per_example"]] == [True, False, None, None, None]
    no_closed = task.compute_metrics(["left lung"], ["left lung"])
    assert no_closed["closed_accuracy"] is None and no_closed["token_f1"] == 1.0


# ----------------------------------------------------------------------------- training on them
def _train(recipe: Path, data: Path, out: Path, *overrides: str) -> tuple[dict, dict, str]:
    from medtune.train import main as train_main

    assert train_main([str(recipe), f"data.path={data}", f"training.output_dir={out}", *TINY, *overrides]) == 0
    baseline, finetuned = (json.loads((out / f"eval/{name}.json").read_text())["metrics"]
                           for name in ("baseline", "finetuned"))
    return baseline, finetuned, (out / "eval/comparison.md").read_text()


def test_the_tiny_model_learns_classes_from_a_parquet_file_of_image_bytes(prepared_sources, tmp_path):
    out, _ = prepared_sources
    baseline, finetuned, table = _train(CLASSIFICATION, out / "parquet", tmp_path / "run",
                                        "training.num_train_epochs=4", "eval.mode=score")
    assert finetuned["weighted_f1"] >= baseline["weighted_f1"] + 0.3
    assert f"| classification | weighted_f1 | {baseline['weighted_f1']:.3f} | {finetuned['weighted_f1']:.3f} |" in table


@pytest.mark.parametrize("source, recipe, overrides", [
    ("saved", VQA, ["quantization.load_in_4bit=false", "eval.max_new_tokens=8"]),  # the VQA recipe, generation
    ("hub-id", CLASSIFICATION, ["eval.mode=score"]),
])
def test_a_hub_dataset_trains_to_the_comparison_table(source, recipe, overrides, prepared_sources, tmp_path):
    out, _ = prepared_sources
    _, finetuned, table = _train(recipe, out / source, tmp_path / "run", "training.max_steps=2", *overrides)
    task = "free_text" if recipe == VQA else "classification"
    headline = "token_f1" if recipe == VQA else "weighted_f1"
    assert f"| {task} | {headline} |" in table and finetuned["n"] == 12
    if recipe == VQA:
        assert finetuned["n_closed"] == 6 and "| free_text | closed_accuracy |" in table


def test_several_images_an_example_and_a_column_of_paths(tmp_path):
    """A list-of-images column becomes the `images` column (several an example); a repository whose table names
    its image files by path (relative to the repository, as its README's configuration points at the table)."""
    import io

    import numpy as np
    from datasets import Dataset, Features, Image, List, Value

    from data_prep._common import synthetic_tile

    rng = np.random.default_rng(0)

    def png(label: int) -> bytes:
        buffer = io.BytesIO()
        synthetic_tile(label, rng, size=32).save(buffer, format="PNG")
        return buffer.getvalue()

    pairs = Dataset.from_list([{"images": [{"bytes": png(i % 2), "path": None}, {"bytes": png(2), "path": None}],
                                "answer": f"answer {i % 2}"} for i in range(10)],
                              features=Features({"images": List(Image()), "answer": Value("string")}))
    pairs.save_to_disk(str(tmp_path / "pairs"))
    assert data_prep_main(["hub", "--src", str(tmp_path / "pairs"), "--out", str(tmp_path / "pairs-out"),
                           "--image-column", "images", "--validation-fraction", "0.2"]) == 0
    prepared = load_from_disk(str(tmp_path / "pairs-out"))
    assert all(len(row["images"]) == 2 for row in prepared["train"])
    assert sum(item["type"] == "image" for item in prepared["train"][0]["messages"][0]["content"]) == 2

    repo = tmp_path / "paths"
    (repo / "images").mkdir(parents=True)
    (repo / "data").mkdir()
    for i in range(10):
        (repo / "images" / f"{i}.png").write_bytes(png(i % 2))
    rows = [{"image": f"images/{i}.png", "answer": f"answer {i % 2}"} for i in range(10)]
    rows.append({"image": "images/gone.png", "answer": "answer 0"})
    (repo / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                    "    path: data/train.jsonl\n---\n")
    assert data_prep_main(["hub", "--src", str(repo), "--out", str(tmp_path / "paths-out")]) == 0
    report = json.loads((tmp_path / "paths-out" / "prep_report.json").read_text())
    assert report["skipped"] == [{"path": "train[10]", "reason": "image not found: images/gone.png"}]
    assert sum(split["total"] for split in report["splits"].values()) == 10
