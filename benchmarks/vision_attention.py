"""Attention in MedGemma's vision tower: eager vs SDPA, at its real width and sequence length.

    python benchmarks/vision_attention.py [--layers N] [--batch N]

MedGemma's SigLIP tower (hidden 1152, 16 heads, MLP 4304) sees 4096 patches per 896 px image. Eager attention
materialises a 4096 x 4096 score matrix per head and image; SDPA does not. Each implementation runs in a
process of its own (so that peak memory is its own) on the same random weights and images, and the outputs
are compared. Defaults: on a GPU all 27 layers in bf16 at the pneumothorax recipe's eval batch (16); on a CPU 2
layers in fp32 at batch 2. The time per layer scales with the layer count, so the CPU's ratio holds for
the full tower on a CPU. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

IMPLEMENTATIONS = ("eager", "sdpa")


def measure(implementation: str, layers: int, batch: int, out: Path) -> dict:
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    on_gpu = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if on_gpu else ("cpu", torch.float32)
    torch.manual_seed(0)
    config = SiglipVisionConfig(image_size=896, patch_size=14, hidden_size=1152, intermediate_size=4304,
                                num_hidden_layers=layers, num_attention_heads=16, vision_use_head=False)
    config._attn_implementation = implementation
    model = SiglipVisionModel(config).to(device, dtype).eval()
    images = torch.randn(batch, 3, 896, 896, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    with torch.no_grad():
        model(pixel_values=images[:1])  # warm-up
        if on_gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        features = model(pixel_values=images).last_hidden_state
        if on_gpu:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    torch.save(features.float().cpu(), out / f"{implementation}.pt")
    peak = (torch.cuda.max_memory_allocated() / 2**30 if on_gpu
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)  # KiB on Linux
    return {"implementation": implementation, "s_per_image": seconds / batch, "peak_gb": peak,
            "device": torch.cuda.get_device_name() if on_gpu else f"CPU ({os.cpu_count()} cores)",
            "dtype": str(dtype).removeprefix("torch.")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, help="default: 27 (all) on a GPU, 2 on a CPU")
    parser.add_argument("--batch", type=int, help="default: 16 on a GPU, 2 on a CPU")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/medtune-vision-attention"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    on_gpu = torch.cuda.is_available()
    layers = args.layers or (27 if on_gpu else 2)
    batch = args.batch or (16 if on_gpu else 2)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.child:
        print("RESULT " + json.dumps(measure(args.child, layers, batch, args.workdir)))
        return

    results = []
    for implementation in IMPLEMENTATIONS:
        run = subprocess.run([sys.executable, __file__, "--child", implementation, "--layers", str(layers),
                              "--batch", str(batch), "--workdir", str(args.workdir)], capture_output=True, text=True)
        line = next((text for text in run.stdout.splitlines() if text.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{implementation} failed:\n{run.stderr[-3000:]}")
        results.append(json.loads(line[len("RESULT "):]))
    eager, sdpa = (torch.load(args.workdir / f"{i}.pt") for i in IMPLEMENTATIONS)
    difference = (eager - sdpa).abs().max().item()

    print(f"date: {time.strftime('%Y-%m-%d')}; device: {results[0]['device']}; {results[0]['dtype']}; torch "
          f"{torch.__version__}; python {platform.python_version()}")
    print(f"SigLIP at MedGemma's width, 896 px (4096 patches), {layers} layers, batch {batch}\n")
    print("| attention | s per image | vs eager | peak memory GB |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| {r['implementation']} | {r['s_per_image']:.3f} | "
              f"{results[0]['s_per_image'] / r['s_per_image']:.2f}x | {r['peak_gb']:.2f} |")
    print(f"\nlargest difference between the two outputs: {difference:.2e} (output scale "
          f"{eager.abs().max().item():.2f})")


if __name__ == "__main__":
    main()
