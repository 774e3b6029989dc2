"""Your own images, one folder per class, for the `classification` task:

    SRC/<class>/...                              splits drawn per class (--test-fraction, --validation-fraction)
    SRC/{train,validation,test}/<class>/...      your own splits (a missing validation or test drawn from train)

Any image Pillow reads, and DICOM as hospitals export it (colour, 16-bit and signed greyscale, every common
transfer syntax: data_prep/_dicom.py), in any sub-folder of a class folder. The class names are the folder
names; the option text the model reads is the name (`smooth_muscle` -> `smooth muscle`) unless --option or the
recipe's task.options give one. Images larger than --image-size are stored at the model's 896 px. A DICOM's
patient stays in one split (its PatientID, hashed), and DICOM names, which hold UIDs, are stored and reported
only as keyed hashes; --hash-ids does the same for every file (names that hold patient ids).

With --series-slices N, each folder of slice DICOMs under a class folder (a CT or MR series, as a PACS exports
it: `SRC/<class>/<series>/*.dcm`) is one example of up to N slices (data_prep/_own_data.py: read_series).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from data_prep import _dicom, _own_data
from data_prep._common import (PrepError, PrepReport, build_split, conversation, conversation_features, hashed_id,
                               id_key, save_dataset, staged_output)

STRAY_NAMES = ("thumbs.db", "desktop.ini")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _own_data.add_arguments(parser)
    parser.add_argument("--hash-ids", action="store_true",
                        help="store and report every file name as a keyed hash (names that hold identifiers)")


def _layout(src: Path) -> dict[str, Path]:
    """split -> its folder of class folders: {"pool": SRC}, or the user's train/validation/test folders."""
    folders = {entry.name.lower(): entry for entry in src.iterdir() if entry.is_dir()}
    if "train" not in folders:
        return {"pool": src}
    return {_own_data.SPLIT_NAMES[name]: path for name, path in sorted(folders.items())
            if name in _own_data.SPLIT_NAMES}


def _list_images(layout: dict[str, Path], src: Path, skip, series: bool) -> dict[str, list[tuple[Path, str]]]:
    """split -> [(file, class)], or with `series` [(series folder, class)]; files outside the class folders,
    system files and unknown folders are skipped, and with `series` files that are not slice DICOMs."""
    found: dict[str, list[tuple[Path, str]]] = {split: [] for split in layout}
    for split, root in layout.items():
        for entry in sorted(root.iterdir()):
            if not entry.is_dir() or entry.name.startswith("."):
                skip(entry, "stray file: outside the class folders")
                continue
            folders = set()
            for path in sorted(p for p in entry.rglob("*") if p.is_file()):
                if path.name.startswith(".") or path.name.lower() in STRAY_NAMES:
                    skip(path, "stray file: a system file, not an image")
                elif not series:
                    found[split].append((path, entry.name))
                elif _dicom.is_dicom(path):
                    folders.add(path.parent)
                else:
                    skip(path, "not a DICOM slice (--series-slices reads folders of slice DICOMs)")
            found[split] += [(folder, entry.name) for folder in sorted(folders)]
    if layout.keys() != {"pool"}:
        for entry in sorted(src.iterdir()):
            if entry.name.lower() not in _own_data.SPLIT_NAMES:
                skip(entry, "not a split folder (train, validation or test)")
    return found


def prepare(src: Path, out: Path, args: argparse.Namespace) -> PrepReport:
    from datasets import ClassLabel, Value

    report = PrepReport(dataset="imagefolder", source=str(src), options=_own_data.split_options(args),
                        hash_key=id_key())
    key = report.hash_key

    def skip(path: Path, reason: str) -> None:
        relative = path.relative_to(src).as_posix()
        # a DICOM's name, or its series folder's, holds UIDs
        if args.hash_ids or _dicom.is_dicom(path) or (args.series_slices and path.is_dir()):
            report.skip_hashed("", relative, reason)
        else:
            report.skip(relative, reason)

    files = _list_images(_layout(src), src, skip, bool(args.series_slices))
    classes = sorted({name for items in files.values() for _, name in items})
    if not classes:
        raise PrepError(f"no class folder with files under {src}: lay your images out as SRC/<class>/... "
                        "or SRC/train/<class>/...", report)
    task, report.task = _own_data.classification_task(classes, args)
    prompt, hows = task.prompt(), []

    def rows(items: list[tuple[Path, str]], split: str):
        def generate():
            for path, name in tqdm(items, desc=f"reading {split}", unit="example", mininterval=1.0):
                image, problem = _own_data.read_example(path, args)
                if problem:
                    skip(path, problem)
                    continue
                relative = path.relative_to(src)
                relative = (relative if path.is_dir() else relative.with_suffix("")).as_posix()
                hashed = args.hash_ids or image["dicom_how"] is not None
                row_id = hashed_id(relative, key) if hashed else relative
                if image["dicom_how"]:
                    hows.append(image["dicom_how"])
                label = classes.index(name)
                yield {"id": row_id, "group": hashed_id(image["patient"], key) if image["patient"] else row_id,
                       **_own_data.image_columns(image["images"], bool(args.series_slices)),
                       "messages": conversation(prompt, task.answer(label), images=len(image["images"])),
                       "answer": task.answer(label),
                       "label": label}
        return generate

    features = conversation_features({"label": ClassLabel(names=classes), "group": Value("string")},
                                     images=_own_data.image_layout(bool(args.series_slices)))
    with staged_output(out, args.overwrite) as staging:
        built = {split: build_split(rows(items, split), features, staging, split) for split, items in files.items()}
        dataset_dict = _own_data.complete_splits(built, args, report, "group")
        _own_data.note_dicom_handling(report, hows)
        present = set().union(*(split["label"] for split in dataset_dict.values()))
        report.notes += [f"class {name} has no readable image" for i, name in enumerate(classes) if i not in present]
        save_dataset(dataset_dict, report, staging, classes)
    return report


# ----------------------------------------------------------------------------- synthetic stand-in
STANDIN_CLASSES = ("benign", "malignant", "normal_tissue")


def synthesize(out: Path, seed: int = 0, per_class: int = 16) -> None:
    """Three class folders of PNG, JPEG and TIFF images, a PACS export of DICOMs (colour RLE and JPEG 2000,
    16-bit windowed JPEG-LS, a CT slice in Hounsfield units, a multi-frame clip; files without a suffix; two
    slices of one patient), and the broken files real folders have."""
    import numpy as np
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    from data_prep._common import synthetic_tile
    from data_prep._dicom import write_dicom

    rng = np.random.default_rng(seed)
    for label, name in enumerate(STANDIN_CLASSES):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            suffix = ("png", "jpg", "tif")[i % 3]
            synthetic_tile(3 * label, rng, size=128).save(folder / f"{name}-{i:03d}.{suffix}", quality=95)
    pacs = out / "malignant" / "pacs_export"
    pacs.mkdir()
    tile = lambda: np.asarray(synthetic_tile(3, rng, size=128))  # noqa: E731 - the malignant class's look
    write_dicom(pacs / "IM0001", tile(), "RGB", patient="PAT-0001", syntax=RLELossless)
    write_dicom(pacs / "IM0002", tile(), "RGB", patient="PAT-0001", syntax=JPEG2000Lossless)
    grey = (np.asarray(synthetic_tile(3, rng, size=128).convert("L"), dtype=np.uint16) * 16)
    write_dicom(pacs / "IM0003.dcm", grey, "MONOCHROME2", patient="PAT-0002", syntax=JPEGLSLossless,
                bits_stored=12, window=(2048, 4096))
    hounsfield = grey.astype(np.int16) - 1024  # stored values; the rescale intercept gives them back in HU
    write_dicom(pacs / "IM0004.dcm", hounsfield, "MONOCHROME2", patient="PAT-0003", modality="CT",
                rescale=(1, 0))
    write_dicom(pacs / "CLIP0001.dcm", np.stack([tile() for _ in range(3)]), "RGB", patient="PAT-0004")
    (out / "benign" / "benign-empty.png").write_bytes(b"")
    whole = (out / "benign" / "benign-000.png").read_bytes()
    (out / "benign" / "benign-truncated.png").write_bytes(whole[: len(whole) // 3])
    (out / "normal_tissue" / "notes.jpg").write_text("not an image\n")
    (out / "normal_tissue" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (out / "README.txt").write_text("images exported 2026-11-30\n")
