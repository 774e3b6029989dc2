"""MedGemma 4B's real shape with random weights (benchmarks/medgemma_shapes.py) on the GPU: one optimizer step of each
shipped tissue recipe (bf16 LoRA, 4-bit QLoRA) with its peak memory printed and held to BENCHMARKS.md's targets, and
the option-scoring batch that evaluation picks from the free memory, run at that size.

Skipped without CUDA. `bash benchmarks/gpu_check.sh` runs it with `-s` (the `gpu-check |` lines are its figures) and
shares the 8.6 GB checkpoint with benchmarks/train_throughput.py through $MEDTUNE_GPU_WORKDIR.
"""
from __future__ import annotations

import gc
import importlib.util
import math
import os
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA GPU (run bash benchmarks/gpu_check.sh there)")]

GIB = 2**30
# BENCHMARKS.md's targets for the recipes at micro-batch 16 (the H100 probe measured 11.2 and 6.2 GB)
PEAK_TARGET_GIB = {"lora": 16, "qlora": 8}


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory):
    """The random-weight checkpoint, written once (train_throughput.py's folder name, so either writes it for both)."""
    spec = importlib.util.spec_from_file_location("medgemma_shapes", REPO / "benchmarks" / "medgemma_shapes.py")
    shapes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shapes)
    root = os.environ.get("MEDTUNE_GPU_WORKDIR") or tmp_path_factory.mktemp("real-shape")
    # initialised on the GPU: 4.3 B random values in seconds, where the CPU takes about a minute
    with torch.device("cuda"):
        path = shapes.write_checkpoint("real", Path(root) / "medgemma-real-random")
    gc.collect()
    torch.cuda.empty_cache()
    return path


@pytest.fixture(autouse=True)
def _free_the_gpu():
    """Each test measures its own peak: the previous test's model is gone before it starts."""
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    yield
    gc.collect()
    torch.cuda.empty_cache()


def _recipe(method: str, checkpoint, small_crc, out, *overrides: str):
    from medtune.config import load_recipe

    return load_recipe(REPO / f"recipes/tissue_classification/{method}.yaml", [
        f"model.name_or_path={checkpoint}", f"data.path={small_crc / 'data'}", f"training.output_dir={out}",
        "tracking.backend=none", *overrides])


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_one_step_of_each_recipe_at_the_real_shape(method, real_checkpoint, small_crc, tmp_path):
    from transformers import TrainerCallback

    from medtune.model import resolve_precision, vision_tower
    from medtune.trainer import build_trainer, sft_config

    recipe = _recipe(method, real_checkpoint, small_crc, tmp_path, "training.max_steps=1", "training.warmup_steps=0",
                     "training.logging_steps=1", "training.eval_strategy=no", "training.save_strategy=no")
    precision = resolve_precision(recipe.model.precision)
    trainer, _ = build_trainer(recipe, sft_config(recipe, precision, on_cpu=False), precision)
    loaded = torch.cuda.memory_allocated()
    leaving, losses = [], []
    vision_tower(trainer.model).register_forward_hook(
        lambda module, inputs, output: leaving.append(output.last_hidden_state.grad_fn))

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    trainer.add_callback(Losses())
    started = time.perf_counter()
    trainer.train()
    seconds, peak = time.perf_counter() - started, torch.cuda.max_memory_allocated()
    batch = trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
    print(f"\ngpu-check | real shape, {method}: one step of {batch} images, loss {losses}, weights "
          f"{loaded / GIB:.2f} GiB, peak {peak / GIB:.2f} GiB (target < {PEAK_TARGET_GIB[method]}), "
          f"{seconds:.1f} s with start-up")
    assert len(losses) == 1 and math.isfinite(losses[0])
    assert leaving and all(fn is None for fn in leaving)  # 4,096 patches an image, never recorded
    assert peak < PEAK_TARGET_GIB[method] * GIB


def test_the_scoring_batch_follows_the_free_memory_at_the_real_shape(real_checkpoint, small_crc, tmp_path):
    """With the GPU idle the batch is the range's top; with memory taken so that half the rest holds N images
    (about 0.26 GB each), it is N, and evaluation runs a batch of N distinct images without running out."""
    from datasets import concatenate_datasets, load_from_disk

    from medtune.evaluation import evaluate
    from medtune.inference import SCORING_BATCH_RANGE, default_batch_size, scoring_bytes_per_image
    from medtune.model import load_model, load_processor, resolve_precision
    from medtune.tasks import task_for

    recipe = _recipe("lora", real_checkpoint, small_crc, tmp_path, "eval.mode=score")
    model, processor = load_model(recipe, resolve_precision(recipe.model.precision)), load_processor(recipe)
    per_image = scoring_bytes_per_image(model.config)
    torch.cuda.empty_cache()  # what loading left cached would count as free (evaluation may reuse it)
    free = torch.cuda.mem_get_info()[0]
    idle = default_batch_size(model, "score")
    print(f"\ngpu-check | real shape, scoring: {per_image / GIB:.3f} GiB an image by the estimate, "
          f"{free / GIB:.1f} GiB free with the model loaded: batch {idle}")
    if free >= 2 * SCORING_BATCH_RANGE[1] * per_image:
        assert idle == SCORING_BATCH_RANGE[1]

    splits = load_from_disk(str(small_crc / "data"))
    # distinct images: copies of one image next to each other are encoded once (medtune.model)
    rows = concatenate_datasets([splits["train"], splits["test"]])
    n = min(32, len(rows))
    rows = rows.select(range(n))
    assert n > SCORING_BATCH_RANGE[0]
    leave = int((n + 0.5) * 2 * per_image)
    if free < leave + GIB:
        pytest.skip(f"{free / GIB:.1f} GiB free: too little to leave {leave / GIB:.1f} GiB")
    taken = torch.empty(free - leave, dtype=torch.uint8, device=model.device)  # what another process might hold
    torch.cuda.reset_peak_memory_stats()
    result = evaluate(model, processor, rows, task_for(recipe.task), recipe.eval, name="scored", out_dir=tmp_path,
                      model_label="real shape")
    chosen = result["decoding"]["batch_size"]
    print(f"gpu-check | real shape, scoring with {leave / GIB:.1f} GiB left: batch {chosen} (expected {n}), peak "
          f"{(torch.cuda.max_memory_allocated() - taken.numel()) / GIB:.2f} GiB besides the memory taken")
    assert abs(chosen - n) <= 1 and result["n"] == n  # ran at that size without running out of memory
