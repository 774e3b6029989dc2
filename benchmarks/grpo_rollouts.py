"""GRPO's speed on this machine with the tiny model: rollouts (sampled completions) per second and optimizer steps
per second, through the trainer users run (medtune.grpo.build_grpo_trainer: TRL's GRPOTrainer, the task's rewards).

    python benchmarks/grpo_rollouts.py [--steps 12] [--generations 8] [--prompts 2] [--completion-tokens 16]

Synthetic CRC stand-in (python -m data_prep synthetic crc100k), a new LoRA adapter on the tiny twin, fp32 on the CPU.
Sampling time is the time inside TRL's `_generate` (tokenising the prompts, images, `model.generate`, decoding); the
rest of a step is the rewards, the log-probability forward and the backward pass. Figures: benchmarks/grpo_rollouts.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--generations", type=int, default=8, help="completions a prompt (grpo.num_generations)")
    parser.add_argument("--prompts", type=int, default=2, help="prompts an optimizer step")
    parser.add_argument("--completion-tokens", type=int, default=16, help="grpo.max_completion_length")
    parser.add_argument("--qlora", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from data_prep.crc100k import synthesize
    from medtune.config import load_recipe
    from medtune.grpo import build_grpo_trainer, grpo_config

    work = Path(tempfile.mkdtemp(prefix="grpo-bench-"))
    synthesize(work / "raw", seed=1, train_per_class=4, test_per_class=1)
    import subprocess

    subprocess.run([sys.executable, "-m", "data_prep", "crc100k", "--src", str(work / "raw"), "--out",
                    str(work / "data")], check=True, capture_output=True)
    batch = args.prompts * args.generations
    recipe = load_recipe("recipes/tissue_classification/grpo.yaml", [
        "model.name_or_path=tiny", "model.precision=fp32", "model.adapter=null", f"data.path={work / 'data'}",
        f"training.output_dir={work / 'run'}", f"quantization.load_in_4bit={args.qlora}", "tracking.backend=none",
        f"training.max_steps={args.steps}", f"training.per_device_train_batch_size={batch}",
        "training.gradient_accumulation_steps=1", "training.activation_checkpointing=false",
        "training.save_strategy=no", "training.learning_rate=1.0e-4", f"grpo.num_generations={args.generations}",
        f"grpo.max_completion_length={args.completion_tokens}", "grpo.mask_truncated_completions=false",
        "training.logging_steps=1000"])
    training_args = grpo_config(recipe, "fp32", on_cpu=True)
    trainer, _ = build_grpo_trainer(recipe, training_args, "fp32")

    sampling = {"seconds": 0.0, "completions": 0, "tokens": 0}
    generate = trainer._generate

    def timed_generate(prompts):
        started = time.perf_counter()
        out = generate(prompts)
        sampling["seconds"] += time.perf_counter() - started
        sampling["completions"] += len(out[1])
        sampling["tokens"] += sum(len(ids) for ids in out[1])
        return out

    trainer._generate = timed_generate
    started = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - started
    figures = {
        "steps": args.steps, "prompts_per_step": args.prompts, "generations": args.generations,
        "max_completion_length": args.completion_tokens, "qlora": args.qlora,
        "optimizer_steps_per_s": round(args.steps / total, 3),
        "rollouts_per_s": round(sampling["completions"] / sampling["seconds"], 1),
        "sampled_tokens_per_s": round(sampling["tokens"] / sampling["seconds"], 1),
        "sampling_share": round(sampling["seconds"] / total, 2), "seconds": round(total, 1),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                   f"{torch.__version__}, {torch.get_num_threads()} threads",
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
