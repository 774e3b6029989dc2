"""Task plug-ins. Each public module here defines `TASK` (a task with a fixed prompt and classes), or
`configure(question, options)` (a task the recipe's `task.question` / `task.options` shape, for the user's own
data): its prompt, answer parsing and metrics.

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


def _module(name: str):
    if name not in task_names():
        raise KeyError(f"unknown task {name!r}; built in: {', '.join(task_names())}")
    return importlib.import_module(f"{__name__}.{name}")


def is_configurable(name: str) -> bool:
    """Whether the task takes the recipe's question and options (else its prompt and classes are fixed)."""
    return not hasattr(_module(name), "TASK")


def data_prep_readers(name: str) -> tuple[str, ...]:
    """The data_prep readers that write data for the task (a configurable task's module names them)."""
    module = _module(name)
    return (module.TASK.dataset,) if hasattr(module, "TASK") else module.READERS


def get_task(name: str, question: str | None = None, options: dict[str, str] | None = None):
    module = _module(name)
    return module.TASK if hasattr(module, "TASK") else module.configure(question, options)


def task_for(section):
    """The task a recipe's `task` section names, shaped by its question and options."""
    return get_task(section.name, section.question, section.options)
