"""Raw dataset downloads -> conversation DatasetDicts on disk. One module per dataset (not starting with `_`),
each with `add_arguments(parser)`, `prepare(src, out, args)` and `synthesize(out, seed)`."""
from __future__ import annotations

import importlib
import pkgutil


def dataset_names() -> tuple[str, ...]:
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def get_reader(name: str):
    return importlib.import_module(f"{__name__}.{name}")
