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
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Task(Protocol):
    """What every task provides (the fields and methods the core reads). A multiple-choice task (its answer one
    of `options`, scored by option too) also has `options`, `class_names`, `option_line(i)` and
    `option_count(row)`: see `is_multiple_choice`."""

    name: str  # the task's module name
    dataset: str  # the data_prep reader that writes its data (a generic task's first)
    credentialed: bool  # its data may not go to third-party trackers (PhysioNet's agreement, a hospital's data)
    max_new_tokens: int  # the generation budget when eval.max_new_tokens is unset
    table_metrics: tuple[str, ...]  # the comparison table's rows, the headline first
    example_metrics: tuple[str, ...]  # the per-example scores saved with each prediction
    kind: str  # "classification" or "generation": the Hub's task type on the model card

    def prompt(self, *args: Any) -> str: ...

    def reference(self, row: dict[str, Any]) -> Any: ...

    def parse_answer(self, text: str) -> Any: ...

    def compute_metrics(self, references: list, predictions: list,
                        scores: list[list[float]] | None = None) -> dict[str, Any]: ...

    def write_figures(self, metrics: dict[str, Any], per_example: list[dict[str, Any]], out_dir: Path,
                      prefix: str) -> list[Path]: ...


def is_multiple_choice(task: Task) -> bool:
    """Whether the task's answer is one of its options (classification, MedQA): scorable by option, with AUROC."""
    return hasattr(task, "options")


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
