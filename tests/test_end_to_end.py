"""The whole path, for real: `medtune demo` (synthetic raw data -> data_prep -> LoRA training of the tiny
model -> out-of-box and fine-tuned evaluation -> export), then the saved adapter used as a user would."""
from __future__ import annotations

import json
import os

import yaml

from medtune.tiny import tiny_checkpoint_dir
from tests.conftest import run_cli


def _run_dir(demo_run):
    return demo_run[0] / "run-lora"


def _predictions(path):
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_demo_shows_real_learning(demo_run):
    workdir, result = demo_run
    baseline = json.loads((_run_dir(demo_run) / "eval/baseline.json").read_text())["metrics"]
    finetuned = json.loads((_run_dir(demo_run) / "eval/finetuned.json").read_text())["metrics"]
    assert finetuned["weighted_f1"] >= 0.85
    assert finetuned["weighted_f1"] >= baseline["weighted_f1"] + 0.4
    table = (_run_dir(demo_run) / "eval/comparison.md").read_text()
    assert table.splitlines()[0] == "| task | metric | out-of-box | fine-tuned |"
    row = f"| tissue_classification | weighted_f1 | {baseline['weighted_f1']:.3f} | {finetuned['weighted_f1']:.3f} |"
    assert row in table
    assert result.stdout.rstrip().endswith(table.rstrip())  # the demo ends with the table


def test_run_records_what_it_did(demo_run):
    run = _run_dir(demo_run)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert recipe["model"]["name_or_path"] == "tiny" and recipe["training"]["output_dir"] == str(run)
    info = json.loads((run / "run_info.json").read_text())
    assert {"torch", "transformers", "trl", "peft"} <= set(info["versions"]) and "git_revision" in info
    for name in ("baseline", "finetuned"):
        assert (run / f"eval/{name}_confusion_matrix.png").is_file()
        rows = (run / f"eval/{name}_predictions.jsonl").read_text().splitlines()
        assert len(rows) == json.loads((run / f"eval/{name}.json").read_text())["n"] == 108
    card = (run / "README.md").read_text()
    assert "Not for clinical decisions" in card and "| out-of-box | fine-tuned |" in card
    assert "base_model: tiny" in card
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_adapter_reloads_with_plain_peft_and_reproduces_the_predictions(demo_run):
    from datasets import load_from_disk
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from medtune.evaluation import generate_answers

    run = _run_dir(demo_run)
    with safe_open(str(run / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all("language_model" in k and "lora_" in k for k in keys)  # vision tower and projector frozen
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_checkpoint_dir()), str(run))
    processor = AutoProcessor.from_pretrained(str(run))
    test = load_from_disk(str(demo_run[0] / "data"))["test"]
    answers = generate_answers(model, processor, test, batch_size=36, max_new_tokens=8, desc="reload",
                               show_progress=False)
    expected = _predictions(run / "eval/finetuned_predictions.jsonl")
    assert [expected[i]["generated"] for i in test["id"]] == answers


def test_eval_command_scores_an_adapter_like_the_training_run(demo_run):
    run = _run_dir(demo_run)
    result = run_cli("medtune", "eval", str(run / "recipe.yaml"), "--adapter", str(run))
    assert result.returncode == 0, result.stderr[-2000:]
    again = json.loads((run / "eval/adapter.json").read_text())["metrics"]
    during_training = json.loads((run / "eval/finetuned.json").read_text())["metrics"]
    assert again == during_training


def test_export_merge_writes_a_full_model_with_the_same_answers(demo_run):
    from datasets import load_from_disk
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from medtune.evaluation import generate_answers

    run = _run_dir(demo_run)
    result = run_cli("medtune", "export", str(run), "--merge")
    assert result.returncode == 0, result.stderr[-2000:]
    merged = AutoModelForImageTextToText.from_pretrained(run / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    test = load_from_disk(str(demo_run[0] / "data"))["test"].select(range(18))
    answers = generate_answers(merged, AutoProcessor.from_pretrained(run / "merged"), test, 18, 8, "merged",
                               show_progress=False)
    expected = _predictions(run / "eval/finetuned_predictions.jsonl")
    assert answers == [expected[i]["generated"] for i in test["id"]]


def test_qlora_recipe_under_accelerate_launch_on_cpu(small_crc, tmp_path):
    """The issue's command: the real QLoRA recipe, with the tiny model and prepared data, nothing else."""
    env_key = os.environ.pop("WANDB_API_KEY", None)
    try:
        result = run_cli("accelerate", "launch", "medtune/train.py", "recipes/tissue_classification/qlora.yaml",
                         "model.name_or_path=tiny", f"data.path={small_crc / 'data'}",
                         f"training.output_dir={tmp_path / 'run'}")
    finally:
        if env_key:
            os.environ["WANDB_API_KEY"] = env_key
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = tmp_path / "run"
    for name in ("baseline", "finetuned"):
        assert "weighted_f1" in json.loads((run / f"eval/{name}.json").read_text())["metrics"]
    assert json.loads((run / "adapter_config.json").read_text())["peft_type"] == "LORA"
    # wandb is the recipe's tracker; without credentials it logs offline instead of failing
    assert "logging offline" in result.stderr
    assert list((run / "wandb").glob("offline-run-*"))
    assert "| tissue_classification | weighted_f1 |" in result.stdout


def test_two_ranks_on_cpu_train_once_and_evaluate_like_one_process(small_crc, tmp_path):
    """DDP with two real ranks (gloo): each generates its shard of the test split; the gathered metrics equal
    a single-process evaluation of the same adapter, and are written once."""
    run = tmp_path / "ddp"
    result = run_cli("accelerate", "launch", "--multi_gpu", "--num_processes", "2", "medtune/train.py",
                     "recipes/demo/tissue_classification.yaml", f"data.path={small_crc / 'data'}",
                     f"training.output_dir={run}", "training.num_train_epochs=1", "eval.baseline=false")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    distributed = json.loads((run / "eval/finetuned.json").read_text())
    assert distributed["decoding"]["processes"] == 2 and distributed["n"] == 18
    assert result.stdout.count("| task | metric | out-of-box | fine-tuned |") == 1
    single = run_cli("medtune", "eval", str(run / "recipe.yaml"), "--adapter", str(run), "--name", "single")
    assert single.returncode == 0, single.stderr[-2000:]
    assert json.loads((run / "eval/single.json").read_text())["metrics"] == distributed["metrics"]
