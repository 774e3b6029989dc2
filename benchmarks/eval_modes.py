"""Evaluation throughput: greedy generation vs option scoring, on the same test split.

    python benchmarks/eval_modes.py [--workdir /tmp/medtune-bench] [--patients 150] [--repeats 3]

Builds the synthetic SIIM-ACR stand-in, prepares it, fine-tunes the tiny model with
recipes/demo/pneumothorax.yaml, then times both modes with the pneumothorax recipe's eval settings
(batch 16, max_new_tokens 16) on:
- the tiny model, base and fine-tuned (4 image tokens, 609-token vocabulary: preprocessing dominates);
- a scaled MedGemma shape with random weights: the real 262,208-token vocabulary and 256 image tokens per
  image (SigLIP at 224 px, patch 14), 4 decoder layers. Random weights never emit <end_of_turn>, so it
  generates max_new_tokens (as an out-of-box model rambling) and, to stand for a fine-tuned model that
  stops after its option line, 5 tokens.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/medtune-bench"))
    parser.add_argument("--patients", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()

    raw, data, run = args.workdir / "raw", args.workdir / "data", args.workdir / "run"
    if not data.is_dir():
        from data_prep.siim_acr import synthesize

        synthesize(raw, patients=args.patients)
        subprocess.run([sys.executable, "-m", "data_prep", "siim_acr", "--src", str(raw), "--out", str(data)],
                       check=True, cwd=REPO)
    if not (run / "adapter_config.json").is_file():
        subprocess.run([sys.executable, "medtune/train.py", "recipes/demo/pneumothorax.yaml", f"data.path={data}",
                        f"training.output_dir={run}", "eval.baseline=false", "eval.finetuned=false"],
                       check=True, cwd=REPO)

    import torch
    from datasets import load_from_disk
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from medtune.evaluation import generate_answers, option_first_tokens, score_options
    from medtune.tasks import get_task
    from medtune.tiny import tiny_checkpoint_dir

    torch.manual_seed(0)
    task = get_task("pneumothorax")
    test = load_from_disk(str(data))["test"]
    processor = AutoProcessor.from_pretrained(run)
    option_ids = option_first_tokens(processor.tokenizer, task)
    base = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint_dir())
    models = {"base (out-of-box)": base}
    models["fine-tuned adapter"] = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(
        tiny_checkpoint_dir()), str(run))

    from medgemma_shapes import build_model, build_processor  # benchmarks/, beside this script

    scaled_processor = build_processor("scaled")
    scaled = build_model("scaled", scaled_processor.tokenizer), scaled_processor

    def timed(fn) -> float:
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - start)
        return statistics.median(seconds)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}; test split: {len(test)} images; "
          f"batch {args.batch_size}; median of {args.repeats}\n")
    print("| model | generation s | option scoring s | speed-up | generation img/s | scoring img/s |")
    print("|---|---|---|---|---|---|")
    for name, model in models.items():
        generate = timed(lambda m=model: generate_answers(m, processor, test, args.batch_size, args.max_new_tokens,
                                                          "generate", show_progress=False))
        score = timed(lambda m=model: score_options(m, processor, test, option_ids, args.batch_size, "score",
                                                    show_progress=False))
        print(f"| {name} | {generate:.2f} | {score:.2f} | {generate / score:.1f}x | {len(test) / generate:.1f} | "
              f"{len(test) / score:.1f} |")

    model, scaled_processor = scaled
    print("\nscaled MedGemma shape (random weights, vocabulary 262,208, 256 image tokens per image):\n")
    print("| generated tokens | generation s | option scoring s | speed-up |")
    print("|---|---|---|---|")
    score = timed(lambda: score_options(model, scaled_processor, test, option_ids, args.batch_size, "score",
                                        show_progress=False))
    for tokens in (args.max_new_tokens, 5):
        generate = timed(lambda n=tokens: generate_answers(model, scaled_processor, test, args.batch_size, n,
                                                           "generate", show_progress=False))
        print(f"| {tokens} | {generate:.2f} | {score:.2f} | {generate / score:.1f}x |")


if __name__ == "__main__":
    main()
