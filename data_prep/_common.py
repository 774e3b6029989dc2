"""What every data_prep reader shares: the skip report, image checks, stratified splits, the conversation
rows, and publishing the DatasetDict atomically (an interrupted run never leaves a loadable half-dataset).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import random
import shutil
import uuid
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from PIL import Image, UnidentifiedImageError


class PrepError(Exception):
    """A problem with the whole input (wrong folder, nothing usable): reported as one line, exit 2. With the
    prep's `report`, the line is followed by why its rows were skipped (a prep that kept nothing says why)."""

    def __init__(self, message: str, report: "PrepReport | None" = None):
        super().__init__(message)
        self.report = report


def require_column(name: str, columns: set[str], column: str | None, flag: str) -> None:
    if column not in columns:
        raise PrepError(f"{name} has no column {column!r} (it has {', '.join(sorted(columns))}): "
                        f"name it with --{flag}-column")


def comma_list(text: str | None) -> list[str]:
    """`a, b,c` -> [a, b, c] (a flag's names)."""
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def read_json_file(path: Path, expected: type, what: str):
    """A download's JSON file whose top level is `expected` (dict or list); PrepError naming the file and `what` it
    should hold otherwise (a truncated download, the wrong file)."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PrepError(f"cannot read {path} ({type(e).__name__}: {e}): download it again") from None
    if not isinstance(loaded, expected):
        raise PrepError(f"{path.name} is not {what}")
    return loaded


@dataclass
class PrepReport:
    dataset: str
    source: str
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # how the splits were made (seed, fractions)
    # the task whose prompts the rows carry: {name} (and a generic task's question and options), which the
    # recipe validator checks against the recipe's task section
    task: dict[str, Any] = field(default_factory=dict)
    hash_key: bytes | None = field(default=None, repr=False)  # for skip_hashed
    in_clear: list[str] = field(default_factory=list, repr=False)  # skip_hashed's lines, for the terminal only

    def skip(self, path: Path | str, reason: str) -> None:
        self.skipped.append({"path": str(path), "reason": reason})

    def skip_hashed(self, prefix: str, identifying: str, reason: str) -> None:
        """Skip something whose name holds identifiers (DICOM UIDs, subject and study ids): the report lists
        it by keyed hash; the clear name is kept for the terminal (`in_clear`), never written to a file."""
        self.skip(f"{prefix}{hashed_id(identifying, self.hash_key or id_key())}", reason)
        self.in_clear.append(f"  {prefix}{identifying}: {reason}")

    def compare_count(self, split: str, kept: int, published: int, what: str, source: str) -> None:
        """A note that says at once whether the prepared split holds the examples a published figure was measured
        on: `test: kept 1,061 questions; the MedGemma technical report evaluated 1,061 (Table 2)`."""
        verdict = "the same count" if kept == published else f"{kept - published:+,}"
        self.notes.append(f"{split}: kept {kept:,} {what}; {source} evaluated {published:,} ({verdict})")
        self.options.setdefault("published_counts", {})[split] = published

    def count_split(self, split: str, labels: Iterable[str]) -> None:
        per_class = Counter(labels)
        # what a reader has already said of the split (findings' counts per finding) stays
        self.splits[split] = {**self.splits.get(split, {}), "total": sum(per_class.values())}
        if None not in per_class:
            self.splits[split]["per_class"] = dict(sorted(per_class.items()))

    def reasons(self) -> Counter:
        """Skips counted by reason, without the detail after a colon (`image not found: a.png` counts as
        `image not found`)."""
        return Counter(s["reason"].split(":")[0] for s in self.skipped)

    def why_skipped(self, first: int = 5) -> list[str]:
        """Lines for the terminal: the skips counted by reason, then the first few with their reasons."""
        if not self.skipped:
            return ["  nothing was skipped: the source holds no example"]
        counts = ", ".join(f"{n} {reason}" for reason, n in self.reasons().most_common())
        more = len(self.skipped) - first
        return [f"  skipped {len(self.skipped)}: {counts}",
                *(f"    {s['path']}: {s['reason']}" for s in self.skipped[:first]),
                *([f"    ... and {more} more"] if more > 0 else [])]

    def to_dict(self) -> dict[str, Any]:
        reasons = self.reasons()
        versions = {}
        for package in ("medtune", "datasets", "pillow", "pydicom"):
            try:
                versions[package] = metadata.version(package)
            except metadata.PackageNotFoundError:
                pass
        return {
            "dataset": self.dataset, "source": self.source,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions, "task": self.task, "options": self.options, "splits": self.splits,
            "skipped_count": len(self.skipped), "skipped_by_reason": dict(reasons),
            "skipped": self.skipped, "notes": self.notes,
        }

    def summary(self) -> str:
        sizes = ", ".join(f"{k} {v['total']}" for k, v in self.splits.items())
        return f"{self.dataset}: {sizes}; skipped {len(self.skipped)} file(s)"


# ----------------------------------------------------------------------------- images
MODEL_IMAGE_SIZE = 896  # MedGemma's SigLIP input: large images are stored at this size
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # PIL's convert() would clip these to 0 or 255


def scale_to_uint8(pixels):
    """Any-depth pixel values stretched to 0..255 (a constant image becomes black)."""
    import numpy as np

    pixels = np.asarray(pixels, dtype=np.float64)
    low, high = float(pixels.min()), float(pixels.max())
    return ((pixels - low) / (high - low or 1.0) * 255.0).round().astype(np.uint8)


def read_image_bytes(path: Path) -> tuple[bytes | None, str | None]:
    """(bytes ready to store, None) for a readable image, else (None, reason).

    RGB files are stored as they are; other modes (16-bit, float, palette, CMYK, 1-bit, alpha) are
    converted to 8-bit RGB and stored as PNG.
    """
    try:
        if path.stat().st_size == 0:
            return None, "empty file"
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes the pixels: catches truncated files that open() accepts
            if image.mode == "RGB":
                return data, None
            buffer = io.BytesIO()
            eight_bit(image).convert("RGB").save(buffer, format="PNG")
            return buffer.getvalue(), None
    except IMAGE_ERRORS as e:
        return None, image_problem(e)


def read_image_resized(path: Path, size: int, quality: int = 95) -> tuple[bytes | None, str | None]:
    """(JPEG bytes of the image as `size` x `size` grayscale, None), else (None, reason): for large
    radiographs that the model sees much smaller.

    A JPEG is decoded at reduced scale (draft mode: the decoder skips DCT detail, by 1/2, 1/4 or 1/8, never
    below `size`), so a 3000 x 2500 film costs a fraction of a full decode; then one resize to the square
    the Gemma 3 processor feeds the model (it does not keep the aspect ratio either), so the model sees what
    it would have seen from the full image, and the processor's own resize does nothing.
    """
    try:
        if path.stat().st_size == 0:
            return None, "empty file"
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("L", (size, size))
            image.load()
            square = eight_bit(image).convert("L").resize((size, size), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        square.save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue(), None
    except IMAGE_ERRORS as e:
        return None, image_problem(e)


def stored_image(image: Image.Image, size: int) -> bytes:
    """An 8-bit greyscale or RGB image as stored for training: SIZE x SIZE when it is larger (the square the
    Gemma 3 processor resizes every image to, with its filter, so the model sees the same pixels; 0: as it is).
    Greyscale as uncompressed TIFF (decodes in ~0.5 ms, against ~8 ms as PNG: benchmarks/input_pipeline.md, for
    about the disk space a 1,024 px PNG takes); RGB as fast-compressed PNG (uncompressed it would take 2.4 MB)."""
    if size and (image.width > size or image.height > size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    if image.mode == "L":
        image.save(buffer, format="TIFF")
    else:
        image.convert("RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def eight_bit(image: Image.Image) -> Image.Image:
    return Image.fromarray(scale_to_uint8(image), "L") if image.mode in HIGH_DEPTH_MODES else image


IMAGE_ERRORS = (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError)


def image_problem(error: Exception) -> str:
    """The skip reason for an image that Pillow could not read."""
    if isinstance(error, UnidentifiedImageError):
        return "not an image"
    if isinstance(error, Image.DecompressionBombError):
        return f"too large: {error}"
    return f"unreadable: {error}"


# ----------------------------------------------------------------------------- splits
def stratified_split(labels: list[Any], fraction: float, seed: int,
                     groups: list[Any] | None = None) -> tuple[list[int], list[int]]:
    """Indices (kept, held out): `fraction` of each label held out, at least one where a label has two.

    With `groups` (e.g. patients), whole groups are held out, so no group straddles the two parts; a group's
    label is its highest (a patient with any positive image counts as positive). Done on the rows actually
    written, so that unreadable files cannot empty a class's held-out share.
    """
    groups = list(range(len(labels))) if groups is None else groups
    members = group_by(range(len(labels)), lambda i: groups[i])
    group_label = {g: max(labels[i] for i in idx) for g, idx in members.items()}
    rng = random.Random(seed)
    kept, held = [], []
    for _, names in sorted(group_by(sorted(members), lambda g: group_label[g]).items()):
        rng.shuffle(names)
        n_held = round(len(names) * fraction)
        if n_held == 0 and len(names) >= 2 and fraction > 0:
            n_held = 1
        held += [i for g in names[:n_held] for i in members[g]]
        kept += [i for g in names[n_held:] for i in members[g]]
    return sorted(kept), sorted(held)


def id_key() -> bytes:
    """The key for hashing identifiers: MEDTUNE_ID_KEY, or a random one made once per machine.

    Hashed ids are stable across reruns on one machine (predictions stay comparable) but cannot be
    reversed or linked to the source identifiers without the key, which never leaves this machine.
    """
    if os.environ.get("MEDTUNE_ID_KEY"):
        return os.environ["MEDTUNE_ID_KEY"].encode()
    path = Path(os.environ.get("MEDTUNE_CACHE", Path.home() / ".cache" / "medtune")) / "id_key"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32).hex().encode())
    return path.read_bytes().strip()


def hashed_id(value: str, key: bytes) -> str:
    return hashlib.blake2b(value.encode(), key=key[:64], digest_size=10).hexdigest()


def stratified_sample(items_by_class: dict[str, list[Any]], limit: int | None, seed: int) -> dict[str, list[Any]]:
    """At most `limit` items in all, drawn in proportion to each class's size."""
    total = sum(len(v) for v in items_by_class.values())
    if limit is None or limit >= total:
        return items_by_class
    rng = random.Random(seed)
    out = {}
    for name in sorted(items_by_class):
        items = sorted(items_by_class[name])
        rng.shuffle(items)
        out[name] = items[: max(1, round(len(items) * limit / total))]
    return out


def group_by(items: Iterable[Any], key: Callable[[Any], str]) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return dict(groups)


# ----------------------------------------------------------------------------- rows and publishing
def conversation(prompt: str, answer: str, images: int = 1) -> list[dict[str, Any]]:
    """The chat every task trains on: user turn = its images (one, several in the row's `images` order, or none
    for text) + prompt, assistant turn = the answer."""
    return [
        {"role": "user", "content": [*({"type": "image", "text": None} for _ in range(images)),
                                     {"type": "text", "text": prompt}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]


def conversation_features(extra: dict[str, Any], images: str = "one"):
    """The columns of a prepared split: `images` is "one" (an `image` column), "several" (an `images` list:
    medtune/rows.py) or "none" (text only)."""
    from datasets import Features, List, Value
    from datasets import Image as ImageFeature

    image_columns = {"one": {"image": ImageFeature()}, "several": {"images": List(ImageFeature())}, "none": {}}[images]
    return Features({
        "id": Value("string"),
        **image_columns,
        "messages": List({"role": Value("string"),
                          "content": List({"type": Value("string"), "text": Value("string")})}),
        "answer": Value("string"),
        **extra,
    })


def build_split(rows: Callable[[], Iterator[dict[str, Any]]], features, staging: Path, name: str):
    """A Dataset written from a row generator into the staging folder's cache (never held in memory)."""
    from datasets import Dataset

    # an explicit fingerprint: hashing the generator's closure (every file path) is slow and useless here
    try:
        return Dataset.from_generator(rows, features=features, cache_dir=str(staging / "cache"), split=name,
                                      fingerprint=f"{staging.name}-{name}-{uuid.uuid4().hex}")
    except ValueError as e:  # every row skipped: `datasets` refuses a split it wrote nothing to
        if "corresponds to no data" not in str(e):
            raise
        return Dataset.from_dict({column: [] for column in features}, features=features, split=name)


@contextmanager
def staged_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """A hidden sibling folder to build in; its `dataset/` replaces `out` only when the block completes.

    An interrupted run leaves no folder that loads as a complete dataset, and rerunning finishes the job.
    """
    out = out.resolve()
    if out.exists() and not overwrite:
        raise PrepError(f"{out} already exists: pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        final = staging / "dataset"
        if out.exists():
            trash = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, trash)
            os.rename(final, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(final, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_dataset(dataset_dict, report: PrepReport, staging: Path, label_names: list[str] | None,
                 count_by: str | None = "label") -> None:
    """Count the rows written (per value of `count_by`, named by `label_names` when it is a class index; None:
    totals only), then save the DatasetDict and its report into the staging folder."""
    for name, split in dataset_dict.items():
        values = split[count_by] if count_by else [None] * len(split)
        report.count_split(name, (label_names[v] if label_names else v for v in values))
    dataset_dict.save_to_disk(str(staging / "dataset"))
    (staging / "dataset" / "prep_report.json").write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")


# ----------------------------------------------------------------------------- synthetic stand-ins
# One colour and one texture per class, far apart, so that even a tiny random vision tower separates them.
_COLOURS = [(250, 235, 215), (30, 30, 30), (150, 80, 30), (60, 40, 160), (120, 200, 230),
            (220, 60, 90), (60, 170, 60), (240, 150, 200), (110, 20, 60)]


def synthetic_tile(label: int, rng, size: int = 224) -> Image.Image:
    """A stand-in image of class `label` (0 to 8) for the synthetic datasets."""
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size]
    period = 8 + 4 * (label % 4)
    pattern = (np.sin((xx * np.cos(label) + yy * np.sin(label)) * 2 * np.pi / period) + 1) / 2  # stripes
    base = np.array(_COLOURS[label % len(_COLOURS)], dtype=np.float32)
    tile = base * (0.8 + 0.2 * pattern[..., None]) + rng.normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(tile, 0, 255).astype(np.uint8), "RGB")
