"""Training speed of the chest X-ray findings task: five yes/no questions an image, trained three ways, at MedGemma
4B's shapes (random weights).

    python benchmarks/findings_training.py [--shape auto|real|scaled] [--images 4] [--steps 5]

- packed: medtune's way (medtune/shared_prefix.py): one sequence an image, the image and the prompt's common start
  once, each question a branch that sees only the shared start and itself.
- rows: the same questions as five single-question rows an image, shuffled into the batches as a dataset of
  separate rows would be: each question encodes its image again and reads its 256 image tokens again.
- rows-together: the five rows of an image side by side in a batch: the vision tower encodes the image once
  (medtune.model.encode_each_distinct_image_once), the language model still reads its image tokens five times.

Every way trains the same answer tokens on the same images (the losses of the first step agree: printed), LoRA on
the language model's projections, the vision tower frozen and out of autograd, as medtune's recipes. A step is
--images images (5 x --images questions); the first step is warm-up and is not timed. `--shape auto` is the real
architecture on a GPU, the scaled one on a CPU (real vocabulary and image-token count, a narrow 224 px tower):
there the tower costs little, so the CPU's packed/rows ratio understates a GPU's (BENCHMARKS.md gives the
arithmetic at the real shape).
"""
from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

FINDINGS = {"atelectasis": "atelectasis", "cardiomegaly": "cardiomegaly", "consolidation": "consolidation",
            "edema": "edema", "pleural_effusion": "pleural effusion"}
WAYS = ("packed", "rows", "rows-together")


def build(shape: str, workdir: Path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from medgemma_shapes import write_checkpoint
    from medtune.model import encode_each_distinct_image_once, keep_frozen_vision_tower_out_of_autograd
    from medtune.shared_prefix import install_branch_masks

    folder = write_checkpoint(shape, workdir / f"medgemma-{shape}")
    on_gpu = torch.cuda.is_available()
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.bfloat16 if on_gpu else torch.float32,
                                                        attn_implementation="sdpa",
                                                        device_map={"": "cuda" if on_gpu else "cpu"})
    encode_each_distinct_image_once(model)
    install_branch_masks(model.model)
    keep_frozen_vision_tower_out_of_autograd(model)
    targets = r"model\.language_model\.layers\.\d+\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules=targets, task_type="CAUSAL_LM"))
    return model, AutoProcessor.from_pretrained(folder)


def batches(way: str, processor, images: int, steps: int, seed: int = 0):
    """`steps` collated batches of `images` films each (5 questions a film), as `way` trains them."""
    import numpy as np
    from PIL import Image

    from medtune.collator import build_collator
    from medtune.prompts import single_questions
    from medtune.tasks import get_task

    task = get_task("cxr_findings", None, FINDINGS)
    rng = np.random.default_rng(seed)
    size = processor.image_processor.size["height"]
    films = [{"messages": task.messages([int(v) for v in rng.integers(0, 2, len(FINDINGS))]),
              "image": Image.fromarray(rng.integers(0, 255, (size, size), np.uint8), "L").convert("RGB")}
             for _ in range(images * steps)]
    if way == "packed":
        collate = build_collator(processor, independent_questions=True)
        return [collate(films[i:i + images]) for i in range(0, len(films), images)]
    collate, out = build_collator(processor), []
    for i in range(0, len(films), images):
        per_film = [single_questions(f["messages"]) for f in films[i:i + images]]
        if way == "rows":  # as a shuffled dataset of separate rows would batch them: no film follows itself
            order = [(k, f) for k in range(len(FINDINGS)) for f in range(len(per_film))]
        else:  # rows-together: a film's questions side by side
            order = [(k, f) for f in range(len(per_film)) for k in range(len(FINDINGS))]
        out.append(collate([{"messages": per_film[f][k], "image": films[i + f]["image"]} for k, f in order]))
    return out


def measure(way: str, model, processor, images: int, steps: int) -> dict:
    import torch

    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    prepared = batches(way, processor, images, steps + 1)
    losses, started = [], None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step, batch in enumerate(prepared):
        if step == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    tokens = sum(int(b["attention_mask"].sum()) for b in prepared[1:])
    return {"way": way, "images/s": images * steps / seconds, "questions/s": images * len(FINDINGS) * steps / seconds,
            "tokens/step": tokens // steps, "peak GiB": peak, "first loss": losses[0]}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=("auto", "real", "scaled"), default="auto")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--ways", default=",".join(WAYS))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/medtune-findings-bench"))
    args = parser.parse_args()
    shape = args.shape if args.shape != "auto" else ("real" if torch.cuda.is_available() else "scaled")
    torch.manual_seed(0)
    model, processor = build(shape, args.workdir)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'cpu'}, " \
                                                                               f"{torch.get_num_threads()} threads)"
    print(f"shape {shape}, {device}, {args.images} films x 5 questions a step, {args.steps} timed steps")
    print("| way | films/s | questions/s | tokens a step | peak GiB | first-step loss |")
    print("|---|---|---|---|---|---|")
    for way in args.ways.split(","):
        r = measure(way, model, processor, args.images, args.steps)
        print(f"| {r['way']} | {r['images/s']:.2f} | {r['questions/s']:.2f} | {r['tokens/step']:,} | "
              f"{r['peak GiB']:.1f} | {r['first loss']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
