"""What a prepared row gives the model: none, one or several images beside its conversation.

A row holds its images in one of two columns, as TRL reads them: `image` (one image, what most readers write)
or `images` (a list: a prior and a current film, the slices of a CT series; empty for text-only data). A row
without either is text only. The conversation has one `{"type": "image"}` item per image, in order.

A text-only model (MedGemma 27B text) has no image processor: `AutoProcessor` gives its tokenizer, which then
stands where a processor would (`tokenizer_of`).
"""
from __future__ import annotations

from typing import Any

IMAGE_COLUMNS = ("image", "images")


def row_images(row: dict[str, Any]) -> list:
    """The row's images, in the conversation's order (an empty list for a text-only row)."""
    if row.get("image") is not None:
        return [row["image"]]
    return list(row.get("images") or [])


def images_per_row(dataset) -> int:
    """The most images a row of `dataset` holds (0: text only), read from the columns, not the images."""
    if "image" in dataset.column_names:
        return 1
    if "images" not in dataset.column_names or len(dataset) == 0:
        return 0
    import pyarrow.compute as pc

    lengths = pc.list_value_length(dataset.data.column("images"))
    return int(pc.max(lengths).as_py() or 0)


def without_images(dataset):
    """`dataset` without its image columns: for reading the other columns without decoding a picture."""
    return dataset.select_columns([c for c in dataset.column_names if c not in IMAGE_COLUMNS])


def tokenizer_of(processor):
    """The tokenizer of a processor, or the processor itself where it is a tokenizer (a text-only model)."""
    return getattr(processor, "tokenizer", processor)


def takes_images(processor) -> bool:
    return getattr(processor, "image_processor", None) is not None


def check_model_takes(processor, dataset, name_or_path: str) -> None:
    """Refuse, in one line, data with images for a model without an image processor (a text-only model)."""
    from medtune.errors import MedtuneError

    if not takes_images(processor) and images_per_row(dataset):
        raise MedtuneError(f"model.name_or_path: {name_or_path} is a text-only model and the data has images: use a "
                           "multimodal MedGemma, or text-only data (data.path)")
