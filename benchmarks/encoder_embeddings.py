"""MedSigLIP image-embedding extraction (what the zero-shot and probe recipes spend their time on): images/s at the
tiny twin's width and at MedSigLIP-448's real vision tower (SigLIP-400M: 27 layers of width 1152, 1,024 patches
of 14 px at 448 px; random weights), through medtune.embeddings.image_embeddings, as the recipes run it.

    python benchmarks/encoder_embeddings.py [--images 64] [--real-images 8] [--batch 64] [--workers N]

The images are the synthetic NCT-CRC-HE-100K tiles (224 px RGB, resized to the model's input by its image
processor). On a GPU the model runs in bf16 and the default loader workers prepare batches meanwhile; on a CPU
in fp32, in the main process. The real width is slow on a CPU: a few images give its rate.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REAL_VISION = dict(image_size=448, patch_size=14, hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                   num_attention_heads=16)  # google/medsiglip-448's vision tower (SigLIP so400m)


def _model(width: str):
    """(model, processor) with the tiny twin's towers, or the real vision tower beside the twin's text tower."""
    import torch
    from transformers import AutoModel, AutoProcessor, SiglipConfig, SiglipModel, SiglipVisionConfig

    from medtune.tiny import TINY_ENCODER, tiny_checkpoint_dir

    tiny = tiny_checkpoint_dir(TINY_ENCODER)
    processor = AutoProcessor.from_pretrained(tiny)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if width == "tiny":
        model = AutoModel.from_pretrained(tiny, dtype=dtype)
    else:
        config = AutoModel.from_pretrained(tiny).config
        vision = SiglipVisionConfig(**REAL_VISION, attn_implementation="sdpa")
        model = SiglipModel(SiglipConfig(text_config=config.text_config, vision_config=vision)).to(dtype)
        processor.image_processor.size = {"height": 448, "width": 448}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), processor


def measure(width: str, dataset, batch: int, workers: int | None) -> dict:
    from medtune.embeddings import image_embeddings

    model, processor = _model(width)
    image_embeddings(model, processor, dataset.select(range(min(batch, len(dataset)))), batch, workers, "warm-up")
    started = time.perf_counter()
    embeddings = image_embeddings(model, processor, dataset, batch, workers, f"{width} width")
    seconds = time.perf_counter() - started
    return {"width": width, "images": len(dataset), "dim": embeddings.shape[1], "seconds": seconds,
            "images_per_s": len(dataset) / seconds}


def main() -> None:
    import torch
    from datasets import load_from_disk

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="images at the tiny width")
    parser.add_argument("--real-images", type=int, default=8, help="images at the real width")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: as the recipes)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/medtune-encoder-bench"))
    args = parser.parse_args()

    data = args.workdir / "data"
    if not (data / "dataset_dict.json").is_file():
        import subprocess

        from data_prep.crc100k import synthesize

        synthesize(args.workdir / "raw", seed=0, train_per_class=16, test_per_class=2)
        subprocess.run([sys.executable, "-m", "data_prep", "crc100k", "--src", str(args.workdir / "raw"), "--out",
                        str(data), "--overwrite"], check=True, cwd=REPO, capture_output=True)
    train = load_from_disk(str(data))["train"]
    results = [measure("tiny", train.select(range(min(args.images, len(train)))), args.batch, args.workers),
               measure("real", train.select(range(min(args.real_images, len(train)))),
                       min(args.batch, args.real_images), args.workers)]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"date: {time.strftime('%Y-%m-%d')}; device: {device}; torch {torch.__version__}; "
          f"python {platform.python_version()}\n")
    print("| vision tower | images | embedding width | seconds | images/s |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['width']} | {r['images']} | {r['dim']} | {r['seconds']:.2f} | {r['images_per_s']:.1f} |")


if __name__ == "__main__":
    main()
