"""The prepared DatasetDict, with the recipe's caps on each split."""
from __future__ import annotations

from medtune.config import Recipe
from medtune.errors import MedtuneError

CAPS = {"train": "max_train_samples", "validation": "max_validation_samples", "test": "max_test_samples"}


def load_split(recipe: Recipe, split: str):
    from datasets import load_from_disk

    dataset_dict = load_from_disk(recipe.data.path)
    if split not in dataset_dict:
        raise MedtuneError(f"{recipe.data.path} has no {split!r} split (it has {', '.join(dataset_dict)}): "
                           "rerun data_prep")
    dataset = dataset_dict[split]
    cap = getattr(recipe.data, CAPS.get(split, ""), None)
    if cap is not None and cap < len(dataset):
        # a seeded shuffle before the cut keeps every class in proportion (the files are sorted by class)
        dataset = dataset.shuffle(seed=recipe.data.seed).select(range(cap))
    return dataset
