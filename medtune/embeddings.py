"""MedSigLIP's image embeddings: batched through loader workers (the pixel batches the LoRA classifier's
evaluation reads too), and each split's kept beside the prepared dataset (`.medtune-embeddings/`, keyed by the
model's name, its weights' identity and image size), computed once, so that another run, or another cap on the
split, reuses them.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from medtune.config import Recipe
from medtune.errors import MedtuneError

CACHE_FOLDER = ".medtune-embeddings"  # beside the prepared dataset's splits


class Images:
    """A DataLoader's collate_fn: rows -> the image processor's pixel values (runs in loader workers)."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, rows: list[dict[str, Any]]):
        return self.image_processor(images=[row["image"].convert("RGB") for row in rows],
                                    return_tensors="pt")["pixel_values"]


def pixel_batches(dataset, processor, batch_size: int, num_workers: int | None, device, dtype, desc: str):
    """The rows' pixel values, a batch at a time on `device`, prepared by loader workers (as evaluation's)."""
    import torch
    from torch.utils.data import DataLoader

    from medtune.inference import default_num_workers

    if "image" not in dataset.column_names:
        raise MedtuneError("MedSigLIP takes one image an example: this dataset has none, or several (images)")
    on_cuda = torch.device(device).type == "cuda"
    loader = DataLoader(dataset.select_columns(["image"]), batch_size=batch_size,
                        collate_fn=Images(processor.image_processor), pin_memory=on_cuda,
                        num_workers=default_num_workers() if num_workers is None else num_workers)
    for pixels in tqdm(loader, desc=desc, unit="batch"):
        yield pixels.to(device, dtype, non_blocking=on_cuda)


def image_embeddings(model, processor, dataset, batch_size: int, num_workers: int | None, desc: str) -> np.ndarray:
    """L2-normalised image embeddings (N x D, float32) of every row, in order, batch by batch."""
    import torch

    parts = []
    with torch.no_grad():
        for pixels in pixel_batches(dataset, processor, batch_size, num_workers, model.device, model.dtype, desc):
            features = model.get_image_features(pixel_values=pixels)
            features = getattr(features, "pooler_output", features)  # transformers 5 returns the model output
            parts.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu())
    return torch.cat(parts).numpy() if parts else np.zeros((0, 0), dtype=np.float32)


def _checkpoint_identity(recipe: Recipe, model) -> str:
    """The weights' identity: the Hub commit they came from, else (a local folder, the tiny twin) their files'
    sizes and times, so that changed weights never meet another model's cached embeddings."""
    from medtune.model import model_path

    commit = getattr(model.config, "_commit_hash", None)
    if commit:
        return commit
    folder = Path(model_path(recipe))
    weights = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in weights) or str(folder)


def cache_dir(recipe: Recipe, model, processor) -> Path:
    """Where a split's embeddings are kept: beside the dataset, one folder per model (its name and weights' identity)
    and image size."""
    size = processor.image_processor.size
    key = json.dumps([recipe.model.name_or_path, _checkpoint_identity(recipe, model), size.height, size.width])
    name = f"{Path(recipe.model.name_or_path).name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    return Path(recipe.data.path) / CACHE_FOLDER / name


def cached_embeddings(recipe: Recipe, model, processor, dataset, split: str) -> tuple[np.ndarray, bool]:
    """(embeddings of `dataset`'s rows, whether they came from the cache). A split's rows are computed once, all
    of them (the recipe's caps select from the cache), and written atomically."""
    import os

    folder = cache_dir(recipe, model, processor)
    path = folder / f"{split}.npz"
    ids = list(dataset["id"])
    if path.is_file():
        stored = np.load(path, allow_pickle=False)
        where = {row_id: i for i, row_id in enumerate(stored["ids"].tolist())}
        if all(row_id in where for row_id in ids):
            return stored["embeddings"][[where[row_id] for row_id in ids]], True
    from datasets import load_from_disk

    whole = load_from_disk(recipe.data.path)[split]  # every row, so that another cap reuses them
    embeddings = image_embeddings(model, processor, whole, recipe.encoder.batch_size, recipe.encoder.num_workers,
                                  f"embedding {split}")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{split}.{os.getpid()}.npz"
    np.savez(tmp, ids=np.array(list(whole["id"])), embeddings=embeddings)
    os.replace(tmp, path)
    where = {row_id: i for i, row_id in enumerate(whole["id"])}
    return embeddings[[where[row_id] for row_id in ids]], False
