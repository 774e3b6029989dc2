"""NCT-CRC-HE-100K (train/validation) and CRC-VAL-HE-7K (test), as unzipped from Zenodo record 1214456.

    RAW/NCT-CRC-HE-100K/<CLASS>/<CLASS>-XXXXXXXX.tif   (or NCT-CRC-HE-100K-NONORM/)
    RAW/CRC-VAL-HE-7K/<CLASS>/<CLASS>-XXXXXXXX.tif

224x224 RGB TIFFs in nine class folders. train/validation: a stratified 90/10 split of 100K (the report's
10% per label); test: 7K. The recipe can cap each split; --limit-train/--limit-test cap them here too, to
keep the prepared dataset small on disk.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_prep._common import (PrepError, PrepReport, build_split, conversation, conversation_features,
                               read_image_bytes, save_dataset, staged_output, stratified_sample, stratified_split,
                               synthetic_tile)
from medtune.tasks import get_task

TASK = get_task("tissue_classification")
CLASSES = TASK.class_names  # folder names, in label order
TRAIN_DIRS = ("NCT-CRC-HE-100K", "NCT-CRC-HE-100K-NONORM")
TEST_DIR = "CRC-VAL-HE-7K"
IMAGE_SUFFIXES = (".tif", ".tiff")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", choices=["norm", "nonorm"], default=None,
                        help="NCT-CRC-HE-100K (Macenko-normalised, the notebook's) or -NONORM; "
                             "default: the one present")
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument("--limit-train", type=int, default=None, help="use at most N images of 100K (stratified)")
    parser.add_argument("--limit-test", type=int, default=None, help="use at most N images of 7K (stratified)")
    parser.add_argument("--seed", type=int, default=42)


def _train_dir(src: Path, variant: str | None) -> Path:
    wanted = {None: TRAIN_DIRS, "norm": TRAIN_DIRS[:1], "nonorm": TRAIN_DIRS[1:]}[variant]
    for name in wanted:
        if (src / name).is_dir():
            return src / name
    raise PrepError(f"{src} has no {' or '.join(wanted)}/ folder: unzip NCT-CRC-HE-100K.zip from Zenodo "
                    f"record 1214456 into it")


def _list_images(root: Path, src: Path, report: PrepReport) -> dict[str, list[Path]]:
    """Class -> image paths under root/<CLASS>/; anything else is skipped and reported."""
    by_class: dict[str, list[Path]] = {name: [] for name in CLASSES}
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and entry.name in by_class:
            for path in sorted(entry.rglob("*")):
                if path.is_dir():
                    continue
                if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                    by_class[entry.name].append(path)
                else:
                    report.skip(path.relative_to(src), "stray file: not a .tif image")
        elif entry.is_dir():
            report.skip(entry.relative_to(src), f"unknown class folder (expected one of {', '.join(CLASSES)})")
        else:
            report.skip(entry.relative_to(src), "stray file: outside the class folders")
    for name, paths in by_class.items():
        if not paths:
            report.notes.append(f"{root.name}: class {name} has no images")
    return by_class


def _rows(items: list[Path], src: Path, report: PrepReport, desc: str):
    def generate():
        prompt = TASK.prompt()
        for path in tqdm(items, desc=f"reading {desc}", unit="img", mininterval=1.0):
            data, problem = read_image_bytes(path)
            if problem:
                report.skip(path.relative_to(src), problem)
                continue
            label = CLASSES.index(path.parent.name)
            yield {"id": path.relative_to(src).with_suffix("").as_posix(), "image": {"bytes": data, "path": None},
                   "messages": conversation(prompt, TASK.answer(label)), "answer": TASK.answer(label), "label": label}
    return generate


def prepare(src: Path, out: Path, args: argparse.Namespace) -> PrepReport:
    from datasets import ClassLabel, DatasetDict

    options = {k: getattr(args, k) for k in ("variant", "validation_fraction", "limit_train", "limit_test", "seed")}
    report = PrepReport(dataset="crc100k", task={"name": TASK.name}, source=str(src), options=options)
    train_root = _train_dir(src, args.variant)
    if not (src / TEST_DIR).is_dir():
        raise PrepError(f"{src} has no {TEST_DIR}/ folder: unzip CRC-VAL-HE-7K.zip from Zenodo record 1214456 into it")
    pool = stratified_sample(_list_images(train_root, src, report), args.limit_train, args.seed)
    test = stratified_sample(_list_images(src / TEST_DIR, src, report), args.limit_test, args.seed)
    if not any(pool.values()):
        raise PrepError(f"no .tif images under {train_root}/<CLASS>/ (classes: {', '.join(CLASSES)})")

    features = conversation_features({"label": ClassLabel(names=list(CLASSES))})
    flat = lambda by_class: [p for name in sorted(by_class) for p in by_class[name]]  # noqa: E731
    with staged_output(out, args.overwrite) as staging:
        train_pool = build_split(_rows(flat(pool), src, report, "100K"), features, staging, "pool")
        kept, held = stratified_split(train_pool["label"], args.validation_fraction, args.seed)
        dataset_dict = DatasetDict({
            "train": train_pool.select(kept), "validation": train_pool.select(held),
            "test": build_split(_rows(flat(test), src, report, "7K"), features, staging, "test"),
        })
        save_dataset(dataset_dict, report, staging, list(CLASSES))
    return report


# ----------------------------------------------------------------------------- synthetic stand-in
def synthesize(out: Path, seed: int = 0, train_per_class: int = 40, test_per_class: int = 12) -> None:
    """A small stand-in in the publisher's layout, with the broken files real downloads have."""
    rng = np.random.default_rng(seed)
    for folder, per_class in ((TRAIN_DIRS[0], train_per_class), (TEST_DIR, test_per_class)):
        for label, name in enumerate(CLASSES):
            class_dir = out / folder / name
            class_dir.mkdir(parents=True, exist_ok=True)
            for _ in range(per_class):
                code = "".join(rng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), 8))
                synthetic_tile(label, rng).save(class_dir / f"{name}-{code}.tif")
    broken = out / TRAIN_DIRS[0]
    (broken / "ADI" / "ADI-EMPTYFILE.tif").write_bytes(b"")
    truncated = (broken / "TUM").glob("TUM-*.tif").__next__().read_bytes()
    (broken / "TUM" / "TUM-TRUNCATED.tif").write_bytes(truncated[: len(truncated) // 3])
    (broken / "MUC" / "MUC-NOTANIMAGE.tif").write_text("this is not an image\n")
    (broken / "LYM" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (broken / "STR" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (out / TEST_DIR / "DEB" / "DEB-EMPTYFILE.tif").write_bytes(b"")
