"""The whole path, for real: `medtune demo` (synthetic raw data -> data_prep -> LoRA training of the tiny
model -> out-of-box and fine-tuned evaluation -> export), then the saved adapter used as a user would."""
from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
import torch
import yaml

from medtune.tiny import tiny_checkpoint_dir
from tests.conftest import PLANTED_TOKEN, REPO, run_cli, wait_until


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
    assert "base_model:" not in card and "tiny (a local model)" in card  # never a local path
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_adapter_reloads_with_plain_peft_and_reproduces_the_predictions(demo_run):
    from datasets import load_from_disk
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from medtune.inference import generate_answers

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
    # two loader processes prepare the batches (the training run's evaluation prepared them in-process)
    result = run_cli("medtune", "eval", str(run / "recipe.yaml"), "--adapter", str(run), "eval.num_workers=2")
    assert result.returncode == 0, result.stderr[-2000:]
    again = json.loads((run / "eval/adapter.json").read_text())
    during_training = json.loads((run / "eval/finetuned.json").read_text())
    assert again["decoding"]["loader_workers"] == 2 and during_training["decoding"]["loader_workers"] == 0
    assert again["metrics"] == during_training["metrics"]
    assert _predictions(run / "eval/adapter_predictions.jsonl") == \
        _predictions(run / "eval/finetuned_predictions.jsonl")


def test_export_merge_writes_a_full_model_with_the_same_answers(demo_run):
    from datasets import load_from_disk
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from medtune.inference import generate_answers

    run = _run_dir(demo_run)
    result = run_cli("medtune", "export", str(run), "--merge")
    assert result.returncode == 0, result.stderr[-2000:]
    merged = AutoModelForImageTextToText.from_pretrained(run / "merged")
    card = (run / "merged" / "README.md").read_text()
    assert "base_model_relation: finetune" in card and "library_name: transformers" in card
    assert not any("lora" in name for name, _ in merged.named_parameters())
    test = load_from_disk(str(demo_run[0] / "data"))["test"].select(range(18))
    answers = generate_answers(merged, AutoProcessor.from_pretrained(run / "merged"), test, 18, 8, "merged",
                               show_progress=False)
    expected = _predictions(run / "eval/finetuned_predictions.jsonl")
    assert answers == [expected[i]["generated"] for i in test["id"]]


@pytest.mark.launches_ranks
def test_qlora_recipe_under_accelerate_launch_on_cpu(small_crc, tmp_path):
    """The issue's command: the real QLoRA recipe, with the tiny model and prepared data, nothing else."""
    env_key = os.environ.pop("WANDB_API_KEY", None)
    os.environ["HF_TOKEN"] = PLANTED_TOKEN  # and no file of the run, wandb's included, may hold it
    try:
        result = run_cli("accelerate", "launch", "medtune/train.py", "recipes/tissue_classification/qlora.yaml",
                         "model.name_or_path=tiny", f"data.path={small_crc / 'data'}",
                         f"training.output_dir={tmp_path / 'run'}")
    finally:
        del os.environ["HF_TOKEN"]
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
    assert not [p for p in run.rglob("*") if p.is_file() and PLANTED_TOKEN.encode() in p.read_bytes()]
    assert "| tissue_classification | weighted_f1 |" in result.stdout


# DDP with QLoRA, ZeRO-2 and ZeRO-3 with LoRA: DDP with LoRA differs from the first only by the quantisation,
# which the single-process tests cover (each two-rank launch costs about a minute of the suite's 15)
@pytest.mark.parametrize("config, method", [("multi_gpu", "qlora"), ("deepspeed_zero2", "lora"),
                                            ("deepspeed_zero3", "lora")])
@pytest.mark.launches_ranks
def test_two_ranks_train_once_and_evaluate_like_one_process(config, method, small_crc, tmp_path):
    """DDP (LoRA and QLoRA), ZeRO-2 and ZeRO-3 (weights really partitioned) with two real ranks on CPU (gloo),
    activation checkpointing on (TRL makes it reentrant under ZeRO-3), the frozen tower out of autograd:
    one complete adapter that plain PEFT loads, and gathered metrics equal to a single-process evaluation.
    The ranks' batches come from loader workers, the single process's from itself."""
    run = tmp_path / config
    result = run_cli("accelerate", "launch", "--config_file", f"accelerate_configs/{config}.yaml", "--num_processes",
                     "2", "medtune/train.py", "recipes/demo/tissue_classification.yaml",
                     f"quantization.load_in_4bit={method == 'qlora'}", "eval.num_workers=1",
                     "training.activation_checkpointing=true",  # as the shipped recipes train
                     "training.eval_strategy=epoch", "training.save_strategy=epoch",  # validation, best step kept
                     f"data.path={small_crc / 'data'}", f"training.output_dir={run}", "training.num_train_epochs=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    info = json.loads((run / "run_info.json").read_text())
    assert info["processes"] == 2
    # what the Trainer applied: PEFT under ZeRO-3 needs reentrant checkpointing (TRL forces it)
    reentrant = "reentrant" if config == "deepspeed_zero3" else "non-reentrant"
    assert (f"micro-batch 8 x accumulation 1 x 2 process(es) = effective batch 16; attention sdpa (vision tower sdpa); "
            f"activation checkpointing on, {reentrant}, every layer") in result.stdout
    assert info["deepspeed_zero_stage"] == {"multi_gpu": None, "deepspeed_zero2": 2, "deepspeed_zero3": 3}[config]
    distributed = {name: json.loads((run / f"eval/{name}.json").read_text()) for name in ("finetuned", "baseline")}
    assert distributed["finetuned"]["decoding"]["processes"] == 2 and distributed["finetuned"]["n"] == 18
    assert result.stdout.count("| task | metric | out-of-box | fine-tuned |") == 1  # written once
    single = run_cli("medtune", "eval", str(run / "recipe.yaml"), "--adapter", str(run), "--name", "single",
                     "eval.num_workers=0")
    assert single.returncode == 0, single.stderr[-2000:]
    assert _predictions(run / "eval/single_predictions.jsonl") == _predictions(run / "eval/finetuned_predictions.jsonl")
    if config != "deepspeed_zero3":
        return  # the base model's evaluation and validation follow the same paths: checked once, under the hardest
    single_base = run_cli("medtune", "eval", str(run / "recipe.yaml"), "--name", "single_base", "eval.num_workers=0")
    assert single_base.returncode == 0, single_base.stderr[-2000:]
    assert _predictions(run / "eval/single_base_predictions.jsonl") == \
        _predictions(run / "eval/baseline_predictions.jsonl")
    # the ranks' validation metric is one process's: the saved adapter (the best step's) scores the same alone
    best = json.loads((run / "run_info.json").read_text())["best_checkpoint"]
    alone = run_cli("medtune", "eval", str(run / "recipe.yaml"), "--adapter", str(run), "--name", "validation",
                    "eval.split=validation", "eval.mode=score", "eval.num_workers=0")
    assert alone.returncode == 0, alone.stderr[-2000:]
    metrics = json.loads((run / "eval/validation.json").read_text())["metrics"]
    assert metrics["weighted_f1"] == pytest.approx(best["value"], abs=1e-9)


def test_validation_scores_the_task_metric_and_the_run_keeps_its_best_step(small_crc, tmp_path):
    """Each validation step logs the task's metrics beside the loss (trainer state and tensorboard); the
    adapter saved, evaluated and described in the card is the best step's, not the last one's."""
    from safetensors.torch import load_file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_cli(sys.executable, "medtune/train.py", "recipes/demo/tissue_classification.yaml",
                     f"data.path={small_crc / 'data'}", f"training.output_dir={tmp_path}", "training.max_steps=6",
                     "training.eval_strategy=steps", "training.eval_steps=2", "training.save_strategy=steps",
                     "training.save_steps=2", "tracking.backend=tensorboard", "eval.baseline=false")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = json.loads((tmp_path / "checkpoint-6" / "trainer_state.json").read_text())
    validated = [e for e in state["log_history"] if "eval_loss" in e]
    assert [e["step"] for e in validated] == [2, 4, 6]
    assert all({"eval_weighted_f1", "eval_accuracy", "eval_auroc"} <= e.keys() for e in validated)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert len(events.Scalars("eval/weighted_f1")) == 3

    best = state["best_global_step"]
    assert state["best_metric"] == max(e["eval_weighted_f1"] for e in validated)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["best_checkpoint"] == {"step": best, "last_step": 6, "metric": "eval_weighted_f1",
                                       "value": state["best_metric"]}
    final = load_file(str(tmp_path / "adapter_model.safetensors"))
    for step in (2, 4, 6):
        kept = load_file(str(tmp_path / f"checkpoint-{step}" / "adapter_model.safetensors"))
        assert all(torch.equal(final[k], kept[k]) for k in final) == (step == best), step
    assert f"the adapter is the best validation step's: step {best} of 6" in (tmp_path / "README.md").read_text()


@pytest.mark.launches_ranks
def test_qlora_is_refused_under_zero3_before_the_model_loads(small_crc, tmp_path):
    result = run_cli("accelerate", "launch", "--config_file", "accelerate_configs/deepspeed_zero3.yaml",
                     "--num_processes", "2", "medtune/train.py", "recipes/tissue_classification/qlora.yaml",
                     "model.name_or_path=tiny", f"data.path={small_crc / 'data'}", f"training.output_dir={tmp_path}")
    assert result.returncode != 0
    assert result.stderr.count("medtune: quantization.load_in_4bit: QLoRA is not run under DeepSpeed ZeRO-3") == 1
    assert not (tmp_path / "adapter_config.json").exists()


@pytest.mark.parametrize("kill_when", ["before any checkpoint", "as a checkpoint is being written",
                                       "after a complete checkpoint"])
def test_a_killed_run_resumes_from_its_last_complete_checkpoint(kill_when, small_crc, tmp_path):
    """kill -9 at a point of the run, then the same command again: it resumes from the newest complete
    checkpoint (or starts over), never from a half-written one (no state yet, or a state, adapter or optimizer
    cut short after the state was written), says which it passed over, and ends at the same final step."""
    import signal
    import subprocess

    command = [sys.executable, "medtune/train.py", "recipes/demo/tissue_classification.yaml",
               f"data.path={small_crc / 'data'}", f"training.output_dir={tmp_path}", "training.max_steps=40",
               "training.save_strategy=steps", "training.save_steps=5", "training.resume_from_checkpoint=auto",
               "eval.baseline=false", "eval.finetuned=false"]
    reached = {
        "before any checkpoint": lambda: (tmp_path / "run_info.json").exists(),
        "as a checkpoint is being written": lambda: any(tmp_path.glob("checkpoint-*")),
        "after a complete checkpoint": lambda: (tmp_path / "checkpoint-10" / "trainer_state.json").exists(),
    }[kill_when]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(reached, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    complete = [int(p.name.split("-")[1]) for p in tmp_path.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    assert max(complete, default=0) < 40, "the run finished before it could be interrupted"
    half_written = tmp_path / "checkpoint-35"  # as a kill during a save leaves it: no trainer_state.json
    half_written.mkdir(exist_ok=True)
    (half_written / "adapter_model.safetensors").write_bytes(b"")
    if complete:  # as a full disk or a power cut can leave one after its state was written
        for name, cut in (("checkpoint-36", "adapter_model.safetensors"), ("checkpoint-37", "trainer_state.json"),
                          ("checkpoint-38", "optimizer.pt")):
            shutil.copytree(tmp_path / f"checkpoint-{max(complete)}", tmp_path / name)
            path = tmp_path / name / cut
            path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2] if cut != "adapter_model.safetensors"
                             else b"")

    again = run_cli(*command)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "Traceback" not in again.stderr
    if complete:
        assert "checkpoint-38 passed over: optimizer.pt is unreadable" in again.stdout
        assert "checkpoint-37 passed over: trainer_state.json is unreadable" in again.stdout
        assert "checkpoint-36 passed over: adapter_model.safetensors is unreadable" in again.stdout
        assert "checkpoint-35 passed over: no trainer_state.json" in again.stdout
        assert f"resuming from {tmp_path / f'checkpoint-{max(complete)}'}" in again.stdout
        kept = {p.name for p in (tmp_path / f"checkpoint-{max(complete)}").iterdir()}
        assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                "trainer_state.json"} <= kept
    else:
        assert "resuming from" not in again.stdout
    final = json.loads((tmp_path / "checkpoint-40" / "trainer_state.json").read_text())
    assert final["global_step"] == 40 and (tmp_path / "adapter_model.safetensors").stat().st_size > 0


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(small_crc, tmp_path):
    from safetensors.torch import load_file

    result = run_cli(sys.executable, "medtune/train.py", "recipes/demo/tissue_classification.yaml",
                     f"data.path={small_crc / 'data'}", f"training.output_dir={tmp_path}", "training.max_steps=30",
                     "training.learning_rate=1e15", "training.max_grad_norm=0",  # diverges within a few steps
                     "training.save_strategy=steps", "training.save_steps=1")
    assert result.returncode == 2
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("medtune:")]
    step = int(line.split("training stopped at step ")[1].split(":")[0])
    assert f"last good checkpoint: {tmp_path / f'checkpoint-{step - 1}'}" in line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / f"checkpoint-{step}").exists() and not (tmp_path / "adapter_model.safetensors").exists()
    weights = load_file(str(tmp_path / f"checkpoint-{step - 1}" / "adapter_model.safetensors"))
    assert all(bool(t.isfinite().all()) for t in weights.values())


def test_sample_images_reach_the_tracker_only_for_public_data(demo_run):
    """tensorboard gets the demo's sample images (public CRC); a credentialed task's stay out by default."""
    import dataclasses

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from medtune import tracking
    from medtune.comparison import COMPARISON_COLUMNS
    from medtune.config import load_recipe
    from medtune.tasks import task_for

    recipe = load_recipe(_run_dir(demo_run) / "recipe.yaml")

    def images_logged(out_dir):
        events = EventAccumulator(str(out_dir / "tensorboard"), size_guidance={"images": 0})
        events.Reload()
        return [tag for tag in events.Tags()["images"] if "/sample_" in tag]

    assert images_logged(_run_dir(demo_run))  # written by the demo run itself

    from datasets import load_from_disk

    # the same run logged as a task whose data is credentialed (report generation: MIMIC-CXR's agreement)
    assert not task_for(recipe.task).credentialed
    credentialed_task = dataclasses.replace(recipe.task, name="report_generation")
    assert task_for(credentialed_task).credentialed and recipe.tracking.log_images is None
    credentialed = dataclasses.replace(recipe, task=credentialed_task,
                                       training={**recipe.training, "output_dir": str(demo_run[0] / "cred")})
    results = {"finetuned": json.loads((_run_dir(demo_run) / "eval/finetuned.json").read_text())}
    tracking.log_evaluation(credentialed, results, COMPARISON_COLUMNS, [], "", _run_dir(demo_run) / "eval",
                            load_from_disk(str(demo_run[0] / "data"))["test"])
    assert images_logged(demo_run[0] / "cred") == []
