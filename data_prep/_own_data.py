"""What the readers of the user's own data (imagefolder, table) share: their options, reading any image (every
format Pillow reads, and DICOM), the generic task's prompts, and splits drawn where the user gave none."""
from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

from PIL import Image

from data_prep import _dicom
from data_prep._common import (IMAGE_ERRORS, MODEL_IMAGE_SIZE, PrepError, PrepReport, eight_bit, image_problem,
                               stored_image, stratified_split)
from medtune.tasks import get_task
from medtune.tasks.classification import MAX_OPTIONS, default_option

SPLIT_NAMES = {"train": "train", "validation": "validation", "val": "validation", "valid": "validation",
               "dev": "validation", "test": "test"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--question", help="the question asked with each image (default: the task's)")
    parser.add_argument("--option", action="append", metavar="CLASS=TEXT", default=[],
                        help="the option text the model reads for a class (repeatable; default: the class name)")
    parser.add_argument("--validation-fraction", type=float, default=0.1,
                        help="share of each class drawn for validation where the data has no validation split")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="share of each class drawn for test where the data has no test split")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--image-size", type=int, default=MODEL_IMAGE_SIZE,
                        help="larger images are stored SIZE x SIZE, the model's input (default 896; 0: as they are)")
    parser.add_argument("--frame", choices=_dicom.FRAME_RULES, default=None,
                        help="keep this frame of a multi-frame DICOM (a series, a clip); default: skip such files")
    parser.add_argument("--ct-windows", action="store_true",
                        help="CT DICOMs as MedGemma 1.5's three-window RGB (-1024..1024, -135..215, 0..80 HU)")
    parser.add_argument("--series-slices", type=int, default=0, metavar="N",
                        help="a folder of slice DICOMs (a CT or MR series) is one example of up to N slices, "
                             "sampled evenly in InstanceNumber order (MedGemma 1.5's CT notebook: 85); 0: off")


def split_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options recorded in the prep report (which the recipe validator reads back)."""
    return {k: getattr(args, k) for k in ("validation_fraction", "test_fraction", "seed", "image_size", "frame",
                                          "ct_windows", "series_slices")}


# ----------------------------------------------------------------------------- images
def read_image(source: Path | bytes, args: argparse.Namespace) -> tuple[dict[str, Any] | None, str | None]:
    """({bytes, patient, dicom_how}, None) for a readable image or DICOM, a file or its bytes (a Hugging Face
    dataset's `datasets.Image`), stored as `stored_image` makes it, else (None, reason). `patient`: a DICOM's
    PatientID (to keep a patient in one split), else None."""
    if _dicom.is_dicom(source):
        dicom, problem = _dicom.read_dicom(source, args.frame, args.ct_windows)
        if problem:
            return None, problem
        return {"bytes": stored_image(Image.fromarray(dicom.pixels), args.image_size), "patient": dicom.patient,
                "dicom_how": dicom.how}, None
    try:
        if (len(source) if isinstance(source, bytes) else source.stat().st_size) == 0:
            return None, "empty file"
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.load()  # decodes the pixels: catches truncated files that open() accepts
            image = eight_bit(image)  # 16-bit and float greyscale stretched to 8 bits
            converted = image.convert("L" if image.mode in ("L", "LA", "1") else "RGB")
            return {"bytes": stored_image(converted, args.image_size), "patient": None, "dicom_how": None}, None
    except IMAGE_ERRORS as e:
        return None, image_problem(e)


def read_series(folder: Path, args: argparse.Namespace) -> tuple[dict[str, Any] | None, str | None]:
    """({images, patient, dicom_how}, None) for a folder of slice DICOMs: up to --series-slices of them, evenly
    spaced from the first slice to the last in InstanceNumber order (file name where that is missing), each read
    as `read_image` reads one; else (None, reason). One unreadable slice skips the series: a gap would shift
    what the model sees."""
    import numpy as np

    slices = [path for path in folder.iterdir() if path.is_file() and _dicom.is_dicom(path)]
    if not slices:
        return None, "no DICOM slice in the series folder"
    number = {path: _dicom.instance_number(path) for path in slices}
    numbered = sorted(slices, key=lambda path: (number[path] is None, number[path] or 0, path.name))
    picks = sorted(set(np.linspace(0, len(numbered) - 1, min(args.series_slices, len(numbered))).round().astype(int)))
    images = []
    for index in picks:
        image, problem = read_image(numbered[index], args)
        if problem:
            return None, f"slice {numbered[index].name}: {problem}"
        images.append(image)
    return {"images": [image["bytes"] for image in images], "patient": images[0]["patient"],
            "dicom_how": images[0]["dicom_how"]}, None


def read_example(source: Path | bytes, args: argparse.Namespace) -> tuple[dict[str, Any] | None, str | None]:
    """An example's pictures: ({images: [bytes...], patient, dicom_how}, None), a series folder's slices or one
    image (a file or its bytes), else (None, reason)."""
    if isinstance(source, Path) and source.is_dir():
        return read_series(source, args)
    image, problem = read_image(source, args)
    return (None, problem) if problem else ({**image, "images": [image.pop("bytes")]}, None)


def image_columns(images: list[bytes], several: bool) -> dict[str, Any]:
    """A row's image column: `images` (every slice or image of the example) where examples hold several, else
    `image`."""
    stored = [{"bytes": data, "path": None} for data in images]
    return {"images": stored} if several else {"image": stored[0]}


def image_layout(several: bool) -> str:
    """conversation_features' `images`: several per example (--series-slices, a list column), else one."""
    return "several" if several else "one"


def note_dicom_handling(report: PrepReport, hows: list[str]) -> None:
    """How the DICOMs' values became 8-bit (their VOI window, min-max, ...), counted, for the prep report."""
    from collections import Counter

    if hows:
        counts = ", ".join(f"{n} {how}" for how, n in Counter(hows).most_common())
        report.notes.append(f"DICOM pixel values to 8 bits: {counts}")


# ----------------------------------------------------------------------------- the task
def classification_task(classes: list[str], args: argparse.Namespace):
    """The generic classification task for these classes, with --question and --option CLASS=TEXT (or the
    recipe's task.question / task.options, which --recipe puts there); and the prep report's task block."""
    if len(classes) > MAX_OPTIONS:
        raise PrepError(f"{len(classes)} classes: the prompt letters its options A to Z, so at most {MAX_OPTIONS}")
    given = option_texts(args)
    unknown = sorted(set(given) - set(classes))
    if unknown:
        raise PrepError(f"--option {unknown[0]}: no such class (classes: {', '.join(classes)})")
    options = {name: given.get(name) or default_option(name) for name in classes}
    texts = [text.lower() for text in options.values()]
    repeated = next((t for t in texts if texts.count(t) > 1), None)
    if repeated:
        raise PrepError(f"two classes read {repeated!r}: give them distinct texts with --option CLASS=TEXT")
    task = get_task("classification", args.question, options)
    return task, {"name": task.name, "question": task.question, "options": options}


def option_texts(args: argparse.Namespace) -> dict[str, str]:
    texts = {}
    for item in args.option or []:
        name, sep, text = item.partition("=")
        if not sep or not name.strip() or not text.strip():
            raise PrepError(f"--option {item!r} must look like CLASS=TEXT")
        texts[name.strip()] = text.strip()
    return texts


# ----------------------------------------------------------------------------- splits
def complete_splits(built: dict[str, Any], args: argparse.Namespace, report: PrepReport, group_column: str):
    """train/validation/test from the splits read: `pool` (no splits given) is split into all three, and a
    train split lends its missing validation or test. Drawn per class (`label`) and by whole groups (patients,
    or the user's group column), so that no group straddles two splits."""
    from datasets import DatasetDict

    def draw(dataset, fraction: float):
        labels = dataset["label"] if "label" in dataset.column_names else [0] * len(dataset)  # free text: one stratum
        kept, held = stratified_split(labels, fraction, args.seed, groups=dataset[group_column])
        return dataset.select(kept), dataset.select(held)

    splits = {name: data for name, data in built.items() if len(data)}
    train = splits.pop("pool", None) or splits.pop("train", None)
    if train is None:
        raise PrepError("nothing readable to train on", report)
    drawn = []
    for name, fraction in (("test", args.test_fraction), ("validation", args.validation_fraction)):
        if name not in splits and fraction > 0:
            train, splits[name] = draw(train, fraction)
            drawn.append(f"{name} ({fraction:.0%} of each class)")
    if drawn:
        report.notes.append(f"drawn from the training data: {', '.join(drawn)}; no {group_column} in two splits")
    return DatasetDict({"train": train, **{name: splits[name] for name in ("validation", "test") if name in splits}})
