"""MIMIC-CXR image preparation: reduced-scale JPEG decode (medtune) vs a plain full decode + resize.

    python benchmarks/image_prep.py [--images 24] [--repeats 3] [--num-proc 2]

Writes synthetic frontal films at a real MIMIC-CXR-JPG size (2544 x 3056, JPEG quality 95, with film-grain
noise so that files are as large as real ones, ~1-2 MB), then times, per image, the two ways to reach the
896 x 896 grayscale JPEG that data_prep stores:
- plain: decode the whole film, convert to grayscale, resize to 896 x 896, encode;
- medtune (data_prep._common.read_image_resized): JPEG draft mode decodes at 1/2 scale (1528 x 1272, the
  smallest DCT scale not below 896), then the same resize and encode.
Both use one process; medtune's path is also timed on --num-proc processes (data_prep's --num-proc).
The best of --repeats passes is kept. Prints a markdown table and the mean pixel difference between the two
outputs.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep._common import MODEL_IMAGE_SIZE, read_image_resized
from data_prep.mimic_cxr import REAL_SIZE, synthetic_film


def plain(path: Path, size: int = MODEL_IMAGE_SIZE) -> bytes:
    with Image.open(path) as image:
        square = image.convert("L").resize((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    square.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def medtune(path: Path, size: int = MODEL_IMAGE_SIZE) -> bytes:
    data, problem = read_image_resized(path, size)
    assert problem is None, problem
    return data


def best_rate(function, paths: list[Path], repeats: int, num_proc: int = 1) -> float:
    """Images per second, best of `repeats` passes."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        if num_proc > 1:
            with Pool(num_proc) as pool:
                list(pool.imap(function, paths, chunksize=2))
        else:
            for path in paths:
                function(path)
        best = max(best, len(paths) / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-proc", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.images):
            film = np.asarray(synthetic_film(i % 3, rng), dtype=np.float32)
            grain = rng.normal(0, 2, film.shape).astype(np.float32)  # film grain: real files are 1-2 MB
            path = Path(tmp) / f"{i:03d}.jpg"
            Image.fromarray(np.clip(film + grain, 0, 255).astype(np.uint8), "L").save(path, quality=95)
            paths.append(path)
        mean_mb = sum(p.stat().st_size for p in paths) / len(paths) / 2**20
        rows = [("plain: full decode + resize", 1, best_rate(plain, paths, args.repeats)),
                ("medtune: reduced-scale decode + resize", 1, best_rate(medtune, paths, args.repeats))]
        if args.num_proc > 1:
            rows.append((f"medtune, --num-proc {args.num_proc}", args.num_proc,
                         best_rate(medtune, paths, args.repeats, args.num_proc)))
        with Image.open(io.BytesIO(plain(paths[0]))) as a, Image.open(io.BytesIO(medtune(paths[0]))) as b:
            difference = np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, Pillow {Image.__version__}")
    print(f"{args.images} films of {REAL_SIZE[0]} x {REAL_SIZE[1]} px, {mean_mb:.2f} MB each on average -> "
          f"{MODEL_IMAGE_SIZE} x {MODEL_IMAGE_SIZE}; best of {args.repeats}\n")
    print("| method | processes | images/s | vs plain |\n|---|---|---|---|")
    for name, processes, rate in rows:
        print(f"| {name} | {processes} | {rate:.1f} | {rate / rows[0][2]:.2f}x |")
    print(f"\nmean absolute pixel difference between the two outputs: {difference:.2f} / 255")


if __name__ == "__main__":
    main()
