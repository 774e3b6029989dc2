"""Every CUDA path on the tiny twins (issue 34): bf16 LoRA and 4-bit QLoRA training, evaluation by generation and by
option scoring, uint8 pixels normalised on the device, the scoring batch size from free memory, validation keeping
the best checkpoint, the merge, MedSigLIP, the text-only model. The CPU suite runs the same entry points; here they
run as a user with a GPU runs them: bf16, bitsandbytes on CUDA, SDPA on the device, loader workers feeding it.

Skipped without CUDA. On a GPU machine: `bash benchmarks/gpu_check.sh` (BENCHMARKS.md, "GPU check").
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import REPO

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA GPU (run bash benchmarks/gpu_check.sh there)")]

TISSUE = REPO / "recipes" / "tissue_classification"
STEPS = 3
# a few steps of the shipped recipe on the CRC stand-in, nothing else changed (its loader workers included)
SHORT = [f"training.max_steps={STEPS}", "training.warmup_steps=0", "training.logging_steps=1",
         "training.eval_strategy=no", "training.save_strategy=no", "tracking.backend=none"]


def _recipe(name: str, small_crc, out, *overrides: str):
    from medtune.config import load_recipe

    return load_recipe(TISSUE / f"{name}.yaml", ["model.name_or_path=tiny", f"data.path={small_crc / 'data'}",
                                                 f"training.output_dir={out}", "tracking.backend=none", *overrides])


def _watch_tower(model) -> tuple[list, list]:
    """What reaches the vision tower (dtype and device of its pixel values, before medtune's normalising pre-hook)
    and the grad_fn of what leaves it, at every call."""
    from medtune.model import vision_tower

    tower, arriving, leaving = vision_tower(model), [], []

    def before(module, args, kwargs):
        pixels = args[0] if args else kwargs["pixel_values"]
        arriving.append((pixels.dtype, pixels.device.type))

    tower.register_forward_pre_hook(before, with_kwargs=True, prepend=True)
    tower.register_forward_hook(lambda module, inputs, output: leaving.append(output.last_hidden_state.grad_fn))
    return arriving, leaving


def _losses(trainer) -> list[float]:
    """The training loss of each logged step, filled as the trainer runs."""
    from transformers import TrainerCallback

    losses: list[float] = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    trainer.add_callback(Losses())
    return losses


def _has_4bit_layers(module) -> bool:
    import bitsandbytes as bnb

    return any(isinstance(m, bnb.nn.Linear4bit) for m in module.modules())


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_a_few_steps_of_each_recipe_train_on_the_gpu(method, small_crc, tmp_path):
    from safetensors.torch import load_file

    from medtune.model import resolve_precision, vision_tower
    from medtune.trainer import build_trainer, sft_config

    recipe = _recipe(method, small_crc, tmp_path, *SHORT)
    precision = resolve_precision(recipe.model.precision)
    assert precision == "bf16"  # the recipes' `auto` on a bf16-capable GPU
    torch.cuda.reset_peak_memory_stats()
    trainer, _ = build_trainer(recipe, sft_config(recipe, precision, on_cpu=False), precision)
    assert trainer.args.bf16 and trainer.args.dataloader_num_workers > 0  # loader workers feed the GPU
    arriving, leaving = _watch_tower(trainer.model)
    losses = _losses(trainer)
    trainer.train()
    trainer.save_model(str(tmp_path))

    assert len(losses) == STEPS and all(math.isfinite(loss) for loss in losses), losses
    assert arriving and set(arriving) == {(torch.uint8, "cuda")}  # 8-bit pixels, normalised on the device
    assert leaving and all(fn is None for fn in leaving)  # the frozen tower ran outside autograd
    adapter = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k and "language_model" in k for k in adapter)
    assert all(bool(w.isfinite().all()) for w in adapter.values())
    base = trainer.model.get_base_model()
    # QLoRA: the language model in 4 bits on CUDA, the tower (and projector, lm_head) left in bf16
    assert _has_4bit_layers(base.model.language_model) == (method == "qlora")
    assert not _has_4bit_layers(vision_tower(base))
    assert next(vision_tower(base).parameters()).dtype == torch.bfloat16
    print(f"\ngpu-check | tiny {method}: losses {[round(x, 4) for x in losses]}, "
          f"peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_evaluation_generates_and_scores_on_the_gpu(method, small_crc, tmp_path):
    """Both modes on the base model (bf16, or 4-bit), the recipe's batch sizes left unset: 16 questions a batch
    when generating; when scoring, as many as half the free memory holds, within the range (the tiny model needs
    kilobytes an image: the most)."""
    from medtune.data import load_split
    from medtune.evaluation import evaluate
    from medtune.inference import GENERATION_BATCH, SCORING_BATCH_RANGE
    from medtune.model import load_model, load_processor, resolve_precision
    from medtune.tasks import task_for

    recipe = _recipe(method, small_crc, tmp_path)
    assert recipe.eval.batch_size is None and recipe.eval.num_workers is None
    model = load_model(recipe, resolve_precision(recipe.model.precision))
    assert model.device.type == "cuda"
    processor, test, task = load_processor(recipe), load_split(recipe, "test"), task_for(recipe.task)
    arriving, _ = _watch_tower(model)
    expected_batch = {"generate": GENERATION_BATCH, "score": SCORING_BATCH_RANGE[1]}
    for mode in ("generate", "score"):
        recipe.eval.mode = mode
        result = evaluate(model, processor, test, task, recipe.eval, name=mode, out_dir=tmp_path,
                          model_label=method)
        assert result["n"] == len(test) and 0 <= result["metrics"]["weighted_f1"] <= 1
        assert result["decoding"]["batch_size"] == expected_batch[mode]
        assert result["decoding"]["loader_workers"] > 0  # one per spare core, preparing batches for the GPU
    records = [json.loads(line) for line in (tmp_path / "score_predictions.jsonl").read_text().splitlines()]
    assert all(abs(sum(r["scores"]) - 1) < 1e-4 and all(math.isfinite(s) for s in r["scores"]) for r in records)
    assert set(arriving) == {(torch.uint8, "cuda")}


def test_pixels_normalised_on_the_gpu_match_the_cpu_path(small_crc):
    """The same uint8 batch, normalised and run on the CPU and on the GPU (fp32 both): the normalised values agree
    to float rounding; the tower's features and the logits to TF32's precision (cuDNN's default for convolutions,
    the patch embedding's)."""
    from datasets import load_from_disk
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from medtune.inference import PromptInputs
    from medtune.model import vision_tower
    from medtune.pixels import PixelNormalizer, model_ready_inputs
    from medtune.tiny import tiny_checkpoint_dir

    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint_dir()).eval()
    processor = AutoProcessor.from_pretrained(tiny_checkpoint_dir())
    test = load_from_disk(str(small_crc / "data"))["test"]
    ready_processor, pixels = model_ready_inputs(model, processor)
    batch = PromptInputs(ready_processor, pixels, torch.float32)([test[i] for i in range(6)])
    assert batch["pixel_values"].dtype == torch.uint8

    normalize = PixelNormalizer(processor.image_processor)
    on_gpu = normalize(batch["pixel_values"].cuda())
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), normalize(batch["pixel_values"]), rtol=0, atol=1e-6)

    features = []
    vision_tower(model).register_forward_hook(lambda m, i, output: features.append(output.last_hidden_state))
    with torch.no_grad():
        cpu_logits = model(**batch).logits
        gpu_logits = model.cuda()(**{k: v.cuda() for k, v in batch.items()}).logits
    cpu_features, gpu_features = features
    torch.testing.assert_close(gpu_features.cpu(), cpu_features, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(gpu_logits.cpu(), cpu_logits, rtol=1e-2, atol=1e-2)


def test_validation_keeps_the_best_checkpoint_and_the_merge_scores_like_the_adapter(small_crc, tmp_path):
    """`medtune train` in this process on the GPU: validation by option scoring every 2 steps, the best step's
    adapter kept and evaluated (generation, base and fine-tuned), then merged in bf16; the merged model's option
    scores equal the adapter's to bf16's precision."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from medtune.config import load_recipe
    from medtune.data import load_split
    from medtune.evaluation import evaluate
    from medtune.model import load_model, load_processor, resolve_precision
    from medtune.tasks import task_for
    from medtune.train import main as train_main

    run = tmp_path / "run"
    assert train_main([str(TISSUE / "lora.yaml"), "model.name_or_path=tiny", f"data.path={small_crc / 'data'}",
                       f"training.output_dir={run}", "training.max_steps=4", "training.warmup_steps=0",
                       "training.eval_strategy=steps", "training.eval_steps=2", "training.save_strategy=steps",
                       "training.save_steps=2", "training.learning_rate=3e-3", "tracking.backend=none",
                       "export.merge=true"]) == 0
    best = json.loads((run / "run_info.json").read_text())["best_checkpoint"]
    assert best["metric"] == "eval_weighted_f1" and best["step"] in (2, 4) and best["last_step"] == 4
    final, kept = (load_file(str(p / "adapter_model.safetensors")) for p in (run, run / f"checkpoint-{best['step']}"))
    assert final.keys() == kept.keys() and all(torch.equal(final[k], kept[k]) for k in final)
    for name in ("baseline", "finetuned"):
        result = json.loads((run / f"eval/{name}.json").read_text())
        assert result["decoding"]["mode"] == "generate" and result["n"] == 18

    scores = {}
    for name, model_path in (("adapter", None), ("merged", run / "merged")):
        recipe = load_recipe(run / "recipe.yaml", ["eval.mode=score"] +
                             ([f"model.name_or_path={model_path}"] if model_path else []))
        model = load_model(recipe, resolve_precision(recipe.model.precision))
        if model_path is None:
            model = PeftModel.from_pretrained(model, str(run))
        else:
            assert not any("lora" in n for n, _ in model.named_parameters())
        evaluate(model, load_processor(recipe), load_split(recipe, "test"), task_for(recipe.task), recipe.eval,
                 name=name, out_dir=tmp_path, model_label=name)
        lines = (tmp_path / f"{name}_predictions.jsonl").read_text().splitlines()
        scores[name] = torch.tensor([json.loads(line)["scores"] for line in lines])
    torch.testing.assert_close(scores["merged"], scores["adapter"], rtol=0, atol=0.03)


def test_medsiglip_probe_learns_on_the_gpu(small_crc, tmp_path):
    from medtune.train import main as train_main

    run = tmp_path / "probe"
    assert train_main([str(TISSUE / "medsiglip-probe.yaml"), "model.name_or_path=tiny",
                       f"data.path={small_crc / 'data'}", f"training.output_dir={run}", "tracking.backend=none"]) == 0
    zero, learned = (json.loads((run / f"eval/{n}.json").read_text())["metrics"] for n in ("baseline", "finetuned"))
    assert learned["weighted_f1"] >= 0.8 and zero["weighted_f1"] < 0.5  # as on the CPU, from bf16 embeddings
    assert (run / "probe.safetensors").is_file()


def test_medsiglip_lora_trains_on_the_gpu(small_crc, tmp_path):
    from medtune.train import main as train_main

    run = tmp_path / "lora"
    assert train_main([str(TISSUE / "medsiglip-lora.yaml"), "model.name_or_path=tiny",
                       f"data.path={small_crc / 'data'}", f"training.output_dir={run}", *SHORT]) == 0
    result = json.loads((run / "eval/finetuned.json").read_text())
    assert result["n"] == 18 and result["metrics"]["unparsable"] == 0
    records = [json.loads(line) for line in (run / "eval/finetuned_predictions.jsonl").read_text().splitlines()]
    assert all(abs(sum(r["scores"]) - 1) < 1e-3 for r in records)
    assert (run / "adapter_model.safetensors").stat().st_size > 0


def test_the_text_only_model_trains_in_4_bits_and_evaluates_on_the_gpu(small_medqa, tmp_path):
    """MedGemma 27B text's twin: a causal LM (no vision tower) under the QLoRA recipe, generating with the
    report's protocol (stopped at its final answer) and scoring options."""
    from peft import PeftModel

    from medtune.config import load_recipe
    from medtune.data import load_split
    from medtune.evaluation import evaluate
    from medtune.model import load_model, load_processor, resolve_precision
    from medtune.tasks import task_for
    from medtune.train import main as train_main

    run = tmp_path / "run"
    assert train_main([str(REPO / "recipes/medqa/qlora-27b-text.yaml"), "model.name_or_path=tiny-27b-text",
                       f"data.path={small_medqa / 'data'}", f"training.output_dir={run}", "eval.max_new_tokens=32",
                       *SHORT]) == 0
    generated = json.loads((run / "eval/finetuned.json").read_text())
    assert generated["n"] == 16 and 0 <= generated["metrics"]["accuracy"] <= 1

    recipe = load_recipe(run / "recipe.yaml", ["eval.mode=score"])
    model = load_model(recipe, resolve_precision(recipe.model.precision))
    assert type(model).__name__ == "Gemma3ForCausalLM" and _has_4bit_layers(model)
    scored = evaluate(PeftModel.from_pretrained(model, str(run)), load_processor(recipe), load_split(recipe, "test"),
                      task_for(recipe.task), recipe.eval, name="scored", out_dir=tmp_path, model_label="twin")
    assert scored["n"] == 16 and scored["metrics"]["unparsable"] == 0
