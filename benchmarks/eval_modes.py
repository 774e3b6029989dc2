"""Evaluation throughput: greedy generation vs option scoring, on the same test split, through medtune's own
evaluation code (medtune.evaluation) and model loading (medtune.model.load_model).

    python benchmarks/eval_modes.py [--shape auto|real|scaled] [--method lora|qlora] [--workdir /tmp/medtune-bench]

Builds the synthetic SIIM-ACR stand-in (1024 x 1024 films, as the real ones), prepares it, fine-tunes the tiny
model with recipes/demo/pneumothorax.yaml, then times, with the pneumothorax recipe's eval settings (batch 16,
max_new_tokens 16):
1. the input pipeline alone (decode + MedGemma's 896 px images + tokenizer), the image processor's float path
   and medtune's model-ready pixels (medtune.pixels), with 0, 1, 2, ... loader workers: the images per second
   no evaluation can exceed, whatever the accelerator;
2. the tiny model, base and fine-tuned (4 image tokens, 609-token vocabulary: overheads, not MedGemma);
3. MedGemma's shape with random weights (`--shape auto`: the real 4B architecture on a GPU, loaded by the
   recipe's own code in bf16 (or 4-bit with `--method qlora`); the scaled one on a CPU: real vocabulary and
   256 image tokens, narrow layers, 224 px). Random weights never emit <end_of_turn>, so generation runs to
   max_new_tokens (an out-of-box model rambling); 5 tokens stands for a fine-tuned model that stops after
   `B: pneumothorax`. Scoring is timed with 0 and 1 loader workers and the default number, and at the batch
   size an unset eval.batch_size gives (on a GPU, as many as fit).
Prints markdown tables.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FINE_TUNED_ANSWER_TOKENS = 5  # "B: pneumothorax" and <end_of_turn>


def prepare(workdir: Path, patients: int) -> tuple[Path, Path]:
    """The prepared SIIM-ACR stand-in and the tiny model's pneumothorax adapter, made once."""
    raw, data, run = workdir / "raw", workdir / "data", workdir / "run"
    if not data.is_dir():
        from data_prep.siim_acr import synthesize

        synthesize(raw, patients=patients, image_size=1024)
        subprocess.run([sys.executable, "-m", "data_prep", "siim_acr", "--src", str(raw), "--out", str(data)],
                       check=True, cwd=REPO, capture_output=True)
    if not (run / "adapter_config.json").is_file():
        subprocess.run([sys.executable, "medtune/train.py", "recipes/demo/pneumothorax.yaml", f"data.path={data}",
                        f"training.output_dir={run}", "eval.baseline=false", "eval.finetuned=false"],
                       check=True, cwd=REPO, capture_output=True)
    return data, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["auto", "real", "scaled"], default="auto")
    parser.add_argument("--method", choices=["lora", "qlora"], default="lora",
                        help="which pneumothorax recipe loads the MedGemma-shaped model (qlora: 4-bit)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/medtune-bench"))
    parser.add_argument("--patients", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()

    data, run = prepare(args.workdir, args.patients)

    import torch
    from datasets import load_from_disk
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from medgemma_shapes import write_checkpoint  # benchmarks/, beside this script
    from medtune.config import load_recipe
    from medtune.inference import (PromptInputs, default_batch_size, default_num_workers, generate_answers,
                                   score_options, scoring_plan)
    from medtune.model import load_model, resolve_precision
    from medtune.tasks import get_task
    from medtune.tiny import tiny_checkpoint_dir

    torch.manual_seed(0)
    on_gpu = torch.cuda.is_available()
    shape = args.shape if args.shape != "auto" else ("real" if on_gpu else "scaled")
    task = get_task("pneumothorax")
    test = load_from_disk(str(data))["test"]
    workers = default_num_workers()

    def timed(fn) -> float:
        seconds = []
        for _ in range(args.repeats):
            if on_gpu:
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if on_gpu:
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        return statistics.median(seconds)

    device = torch.cuda.get_device_name() if on_gpu else "cpu"
    print(f"machine: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
          f"device {device}, torch {torch.__version__}; test split: {len(test)} images "
          f"({test[0]['image'].size[0]} px); batch {args.batch_size}; median of {args.repeats}; "
          f"default loader workers here: {workers}\n")

    # ------------------------------------------------------------------ 1. the input pipeline alone
    from torch.utils.data import DataLoader

    from medtune.pixels import model_ready_inputs

    # MedGemma's 896 px processor, and a model of its image geometry to set up model-ready pixels for
    geometry = write_checkpoint("geometry", args.workdir / "medgemma-geometry-random")
    real_processor = AutoProcessor.from_pretrained(geometry)
    ready_processor, pixels = model_ready_inputs(AutoModelForImageTextToText.from_pretrained(geometry),
                                                 real_processor)
    collates = {"image processor (before)": PromptInputs(real_processor, None, torch.bfloat16),
                "model-ready pixels (medtune)": PromptInputs(ready_processor, pixels, torch.bfloat16)}
    print("input pipeline at MedGemma's 896 px (decode, images, tokenizer; no model):\n")
    print("| images | loader workers | s | images/s |")
    print("|---|---|---|---|")
    for name, collate in collates.items():
        for n in sorted({0, 1, 2, workers}):
            seconds = timed(lambda n=n, c=collate: list(DataLoader(test, batch_size=args.batch_size, num_workers=n,
                                                                   collate_fn=c)))
            print(f"| {name} | {n} | {seconds:.2f} | {len(test) / seconds:.1f} |")

    # ------------------------------------------------------------------ 2. the tiny model
    processor = AutoProcessor.from_pretrained(run)
    option_ids = scoring_plan(processor.tokenizer, task)[1]
    models = {"base (out-of-box)": AutoModelForImageTextToText.from_pretrained(tiny_checkpoint_dir()),
              "fine-tuned adapter": PeftModel.from_pretrained(
                  AutoModelForImageTextToText.from_pretrained(tiny_checkpoint_dir()), str(run))}
    print("\ntiny model (CPU), the pneumothorax demo recipe's adapter:\n")
    print("| model | generation s | option scoring s | speed-up |")
    print("|---|---|---|---|")
    for name, model in models.items():
        generate = timed(lambda m=model: generate_answers(m, processor, test, args.batch_size, args.max_new_tokens,
                                                          "generate", show_progress=False))
        score = timed(lambda m=model: score_options(m, processor, test, option_ids, args.batch_size, "score",
                                                    show_progress=False))
        print(f"| {name} | {generate:.2f} | {score:.2f} | {generate / score:.1f}x |")

    # ------------------------------------------------------------------ 3. MedGemma's shape
    checkpoint = write_checkpoint(shape, args.workdir / f"medgemma-{shape}-random")
    recipe = load_recipe(REPO / f"recipes/pneumothorax/{args.method}.yaml",
                         [f"model.name_or_path={checkpoint}", f"data.path={data}"])
    model = load_model(recipe, resolve_precision(recipe.model.precision))
    shaped_processor = AutoProcessor.from_pretrained(checkpoint)
    print(f"\nMedGemma shape `{shape}` (random weights, vocabulary 262,208, 256 image tokens per image, "
          f"{shaped_processor.image_processor.size['height']} px), loaded by recipes/pneumothorax/{args.method}.yaml "
          f"({model.dtype}; attention: language model {recipe.model.attn_implementation}, vision tower "
          f"{recipe.model.vision_attn_implementation}):\n")
    print("| mode | new tokens | batch | loader workers | s | images/s | time vs scoring |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for n in sorted({0, 1, workers}):
        seconds = timed(lambda n=n: score_options(model, shaped_processor, test, option_ids, args.batch_size,
                                                  "score", show_progress=False, num_workers=n))
        rows.append(("option scoring", "—", args.batch_size, n, seconds))
    scoring = next(seconds for _, _, _, n, seconds in rows if n == workers)  # with the default loader
    fits = default_batch_size(model, "score")  # eval.batch_size unset: on a GPU, as many as fit
    if fits != args.batch_size:
        seconds = timed(lambda: score_options(model, shaped_processor, test, option_ids, fits, "score",
                                              show_progress=False, num_workers=workers))
        rows.append(("option scoring", "—", fits, workers, seconds))
    for tokens in (args.max_new_tokens, FINE_TUNED_ANSWER_TOKENS):
        seconds = timed(lambda t=tokens: generate_answers(model, shaped_processor, test, args.batch_size, t,
                                                          "generate", show_progress=False, num_workers=workers))
        rows.append(("generation", tokens, args.batch_size, workers, seconds))
    for mode, tokens, batch, n, seconds in rows:
        print(f"| {mode} | {tokens} | {batch} | {n} | {seconds:.2f} | {len(test) / seconds:.1f} | "
              f"{seconds / scoring:.2f}x |")


if __name__ == "__main__":
    main()
