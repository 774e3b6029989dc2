"""Evaluation's input pipeline, per dataset at its real size, before and after model-ready pixels (issue 15),
in one run on one machine; then `medtune eval` end to end on one core.

    python benchmarks/input_pipeline.py [--workdir /tmp/medtune-pipeline] [--images 64] [--repeats 3]

Stand-ins written by data_prep's own synthesizers and prepared by data_prep:
- CRC-100K: 224 px RGB tiles, stored as the publisher's TIFs (both before and after);
- SIIM-ACR: 1,024 px films. Before: stored 1,024 px as PNG (data_prep until this change, re-encoded here
  from the same pixels); after: as data_prep stores them now (896 px, uncompressed TIFF);
- MIMIC-CXR: 2,544 x 3,056 JPEG films as stored after prep (896 px JPEG; unchanged).

Each row prepares batches of 16 (the recipes' eval batch) for MedGemma's processor at 896 px, through
`medtune.inference.PromptInputs`, from the prepared rows (image decoding included):
- before: the processor as it is (RGB, PIL resize, float32 rescale and normalise, numpy copies) + tokenizer;
- after: `medtune.pixels` (uint8, torch's 8-bit resize where the size differs) + tokenizer; the rescale and
  normalisation then run on the model's device (on a GPU, microseconds a batch; the end-to-end line below
  includes them on this CPU).
Timed on one core (this process pinned to it, one torch thread, no loader worker: images/s per core) and with
one loader worker per core. Also prints how far the after path's pixel values are from the processor's.

End to end: the whole `medtune eval recipes/pneumothorax/lora.yaml` command in score mode with 0 loader workers,
pinned to one core, with a model of MedGemma's image geometry and negligible cost (benchmarks/medgemma_shapes.py
`geometry`), timed from launch to exit (Python and library imports, recipe and data checks, model load,
tokenising, scoring, metrics, figures, files): films per second of wall time against the before pipeline alone
on the same core. Run on the stand-in's test split, where the fixed start-up dominates, and on a test split of
SIIM-ACR's real size (2,418 films: the stand-in's films repeated), where it does not.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCH = 16


def run(*command: str) -> None:
    subprocess.run(command, check=True, cwd=REPO, capture_output=True)


def prepare(workdir: Path, patients: int) -> dict[str, Path]:
    """Prepared stand-ins, made once: {name: DatasetDict folder}."""
    from data_prep.crc100k import synthesize as crc
    from data_prep.mimic_cxr import synthesize as mimic
    from data_prep.siim_acr import synthesize as siim

    made = {"crc": workdir / "crc", "siim": workdir / "siim", "siim-1024": workdir / "siim-1024",
            "mimic": workdir / "mimic"}
    if not (made["crc"] / "data").is_dir():
        crc(made["crc"] / "raw", test_per_class=8)
        run(sys.executable, "-m", "data_prep", "crc100k", "--src", str(made["crc"] / "raw"), "--out",
            str(made["crc"] / "data"))
    if not (made["siim"] / "data").is_dir():
        siim(made["siim"] / "raw", patients=patients, image_size=1024)
        for name, size in (("siim", "896"), ("siim-1024", "0")):
            run(sys.executable, "-m", "data_prep", "siim_acr", "--src", str(made["siim"] / "raw"), "--out",
                str(made[name] / "data"), "--image-size", size)
    if not (made["mimic"] / "data").is_dir():
        mimic(made["mimic"] / "raw", subjects=40)
        run(sys.executable, "-m", "data_prep", "mimic_cxr", "--src", str(made["mimic"] / "raw"), "--out",
            str(made["mimic"] / "data"))
    return {name: path / "data" for name, path in made.items()}


def rows_of(path: Path, n: int, as_png: bool = False):
    """The first `n` rows of all splits (a Dataset: images decode as the loader reads them), optionally with
    the images re-encoded as PNG (SIIM-ACR as data_prep stored it before this change)."""
    from datasets import concatenate_datasets, load_from_disk

    splits = load_from_disk(str(path))
    rows = concatenate_datasets([splits[s].select_columns(["image", "messages"]) for s in splits])
    rows = rows.select(range(min(n, len(rows))))
    if as_png:
        def png(row):
            buffer = io.BytesIO()
            row["image"].save(buffer, format="PNG")
            return {"image": {"bytes": buffer.getvalue(), "path": None}}

        rows = rows.map(png, features=rows.features)
    return rows


def images_per_second(rows, collate, workers: int, repeats: int) -> float:
    """Best of `repeats` passes over `rows`, after one untimed pass (workers started, files in the page cache)."""
    from torch.utils.data import DataLoader

    loader = DataLoader(rows, batch_size=BATCH, collate_fn=collate, num_workers=workers,
                        persistent_workers=workers > 0)
    best = 0.0
    for attempt in range(repeats + 1):
        start = time.perf_counter()
        for _ in loader:
            pass
        if attempt:
            best = max(best, len(rows) / (time.perf_counter() - start))
    return best


def largest_level_difference(before_rows, after_rows, plain, ready, normalizer) -> float:
    """Max |after - before| over the pixel values of the first batch, in 8-bit levels (the same films in the
    same order: data_prep's splits do not depend on how images are stored)."""
    n = min(BATCH, len(after_rows))
    before = plain([before_rows[i] for i in range(n)])["pixel_values"]
    after = normalizer(ready([after_rows[i] for i in range(n)])["pixel_values"])
    return float((after - before).abs().max()) * 255 * 0.5  # std 0.5: one level is 2/255 once normalised


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/medtune-pipeline"))
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--patients", type=int, default=200, help="SIIM-ACR stand-in size (test split ~20%%)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    data = prepare(args.workdir, args.patients)

    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    sys.path.insert(0, str(REPO / "benchmarks"))
    from medgemma_shapes import write_checkpoint

    from medtune.inference import PromptInputs
    from medtune.pixels import model_ready_inputs

    checkpoint = write_checkpoint("geometry", args.workdir / "medgemma-geometry-random")
    processor = AutoProcessor.from_pretrained(checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint)
    ready_processor, pixels = model_ready_inputs(model, processor)
    plain = PromptInputs(processor, None, torch.float32)
    ready = PromptInputs(ready_processor, pixels, torch.float32)
    normalizer = model.model.vision_tower.medtune_pixel_normalizer

    cores = sorted(os.sched_getaffinity(0))
    print(f"machine: {platform.processor() or platform.machine()}, {len(cores)} cores, Python "
          f"{platform.python_version()}, torch {torch.__version__}, Pillow {Image.__version__}; MedGemma's "
          f"processor at {processor.image_processor.size['height']} px; batches of {BATCH}; best of "
          f"{args.repeats}\n")
    datasets = [("CRC-100K tiles 224 px (TIF)", rows_of(data["crc"], args.images), None),
                ("SIIM-ACR films 1,024 px", rows_of(data["siim"], args.images),
                 rows_of(data["siim-1024"], args.images, as_png=True)),
                ("MIMIC-CXR films 2,544 x 3,056, stored 896 px (JPEG)", rows_of(data["mimic"], args.images), None)]
    print("| dataset | path | stored as | loader workers | images/s | per core | per core vs before |")
    print("|---|---|---|---|---|---|---|")
    siim_plain_per_core = None
    for name, after_rows, before_rows in datasets:
        before_rows = before_rows or after_rows
        stored = {id(after_rows): f"{after_rows[0]['image'].size[0]} px {after_rows[0]['image'].format}",
                  id(before_rows): f"{before_rows[0]['image'].size[0]} px {before_rows[0]['image'].format}"}
        baseline = None
        for path, rows, collate in (("before", before_rows, plain), ("after", after_rows, ready)):
            os.sched_setaffinity(0, {cores[0]})
            torch.set_num_threads(1)
            one_core = images_per_second(rows, collate, 0, args.repeats)
            os.sched_setaffinity(0, cores)
            torch.set_num_threads(len(cores))
            all_cores = images_per_second(rows, collate, len(cores), args.repeats)
            baseline = baseline or one_core
            for workers, rate, per_core in ((0, one_core, one_core), (len(cores), all_cores, all_cores / len(cores))):
                print(f"| {name} | {path} | {stored[id(rows)]} | {workers} | {rate:.1f} | {per_core:.1f} | "
                      f"{per_core / baseline:.2f}x |")
            if path == "before" and name.startswith("SIIM"):
                siim_plain_per_core = one_core
        difference = largest_level_difference(before_rows, after_rows, plain, ready, normalizer)
        print(f"| {name} | largest pixel difference, after vs before: {difference:.3f} levels | | | | | |")

    # ---------------------------------------------------------------- end to end: `medtune eval`, one core
    # The whole command as a user runs it, timed from launch to exit: Python, imports, recipe and data checks,
    # model load, tokenising, scoring, metrics, figures and files. Once on the stand-in's own test split (its
    # fixed cost shows), once on a test split of SIIM-ACR's real size.
    plain = siim_plain_per_core
    print(f"\nend to end on one core: the whole `medtune eval recipes/pneumothorax/lora.yaml ... eval.mode=score "
          f"eval.num_workers=0` command, wall clock (launch to exit), MedGemma's image geometry; against the "
          f"before pipeline alone on one core ({plain:.1f} images/s)\n")
    print("| evaluated split | films | wall s | of which scoring s | films/s end to end | vs before pipeline |")
    print("|---|---|---|---|---|---|")
    real_size = full_size_test(data["siim"], args.workdir)
    for label, path in (("stand-in test split", data["siim"]),
                        (f"SIIM-ACR's real test size ({REAL_SIIM_TEST} films)", real_size)):
        wall, result = medtune_eval_wall(checkpoint, path, args.workdir / "eval-run", cores[0])  # test split
        rate = result["n"] / wall
        print(f"| {label} | {result['n']} | {wall:.2f} | {result['inference_seconds']:.2f} | {rate:.1f} | "
              f"{rate / plain:.2f}x |")


# SIIM-ACR's 12,089 training DICOMs, 20% of the patients held out for test (recipes/pneumothorax: data.test_fraction)
REAL_SIIM_TEST = round(12089 * 0.2)


def full_size_test(prepared: Path, workdir: Path) -> Path:
    """The prepared stand-in with a test split of SIIM-ACR's real size: its films, repeated (each row a new id);
    what the evaluation pays per film does not depend on which film it is."""
    import shutil

    from datasets import DatasetDict, concatenate_datasets, load_from_disk

    out = workdir / "siim-real-test-size"
    if not (out / "dataset_dict.json").is_file():
        splits = load_from_disk(str(prepared))
        films = concatenate_datasets([splits[name] for name in splits])
        repeats = concatenate_datasets([films] * -(-REAL_SIIM_TEST // len(films))).select(range(REAL_SIIM_TEST))
        test = repeats.map(lambda row, i: {"id": f"{row['id']}-{i}"}, with_indices=True)
        DatasetDict({"train": splits["train"], "validation": splits["validation"], "test": test}).save_to_disk(str(out))
        shutil.copy(prepared / "prep_report.json", out / "prep_report.json")
    return out


def medtune_eval_wall(checkpoint: Path, data: Path, out: Path, core: int) -> tuple[float, dict]:
    """(seconds from launch to exit, the eval JSON) of `medtune eval` pinned to one core, as `taskset -c`."""
    command = [sys.executable, "-m", "medtune.cli", "eval", "recipes/pneumothorax/lora.yaml",
               f"model.name_or_path={checkpoint}", f"data.path={data}", f"training.output_dir={out}",
               "eval.mode=score", "eval.num_workers=0", f"eval.batch_size={BATCH}", "tracking.backend=none"]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, capture_output=True,
                   preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    wall = time.perf_counter() - started
    return wall, json.loads((out / "eval" / "base.json").read_text())

if __name__ == "__main__":
    main()
