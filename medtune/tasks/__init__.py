"""Task plug-ins. Each public module here defines `TASK`: its prompt, answer parsing and metrics.

Adding a task means adding a module (and a reader in data_prep/): nothing else names tasks.
Modules whose name starts with `_` are shared helpers, not tasks.
"""
from __future__ import annotations

import importlib
import pkgutil
from functools import cache


@cache
def task_names() -> tuple[str, ...]:
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def get_task(name: str):
    if name not in task_names():
        raise KeyError(f"unknown task {name!r}; built in: {', '.join(task_names())}")
    return importlib.import_module(f"{__name__}.{name}").TASK
