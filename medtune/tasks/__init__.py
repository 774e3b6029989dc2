"""Task plug-ins. Each public module here defines `TASK` (a task with a fixed prompt and classes), or
`configure(question, options)` (a task the recipe's `task.question` / `task.options` shape, for the user's own
data): its prompt, answer parsing and metrics. A task may know several protocols (`protocols`): the prompts it
asks and the answer form it reads, medtune's own or those MedGemma's published figures were measured with
(`_medgemma_prompts.py`); `get_task(..., protocol=...)` picks one.

Adding a task means adding a module (and a reader in data_prep/): nothing else names tasks.
Modules whose name starts with `_` are shared helpers, not tasks.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from functools import cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

# medtune's own prompts: a task's protocol unless its data was prepared with a benchmark's (the MedGemma report's)
MEDTUNE_PROTOCOL = "medtune"


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
    protocol: str  # the prompts asked and the answer form read, one of `protocols`
    protocols: tuple[str, ...]  # those the task knows, its default first
    # table metric -> the per-example score whose mean it is (what a paired bootstrap resamples quickly); a metric
    # not named is recomputed by compute_metrics on each resample
    mean_of: dict[str, str]

    def prompt(self, *args: Any) -> str: ...

    def reference(self, row: dict[str, Any]) -> Any: ...

    def parse_answer(self, text: str) -> Any: ...

    def compute_metrics(self, references: list, predictions: list,
                        scores: list[list[float]] | None = None) -> dict[str, Any]: ...

    def write_figures(self, metrics: dict[str, Any], per_example: list[dict[str, Any]], out_dir: Path,
                      prefix: str) -> list[Path]: ...

    # Optional (medtune.evaluation asks with getattr):
    # conversations(row) -> list of conversations (user turns, images as {"type": "image"} items): the questions
    #     evaluation asks of the row, rendered from its columns under `protocol` (absent: the row's own prompt).
    #     Several (one per finding of a chest X-ray) make the row's prediction a list, one answer each.
    # answer_prefix: the text a trained answer starts with before the option (option scoring reads the next token)
    # reward_metric: the per-example score (one of example_metrics) GRPO rewards a completion with (medtune/rewards.py);
    #     absent: the per-example score the headline metric is the mean of
    # independent_questions: a row's several user turns are separate questions about its image, each trained as
    #     if asked alone (medtune/shared_prefix.py packs them into one sequence)


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


def get_task(name: str, question: str | None = None, options: dict[str, str] | None = None,
             protocol: str | None = None):
    """The task `name`, shaped by a generic task's question and options, asking and reading by `protocol` (None:
    the task's default). ValueError for a protocol the task does not know."""
    module = _module(name)
    task = module.TASK if hasattr(module, "TASK") else module.configure(question, options)
    if protocol is None or protocol == task.protocol:
        return task
    if protocol not in task.protocols:
        raise ValueError(f"{name} has no protocol {protocol!r}; it has {', '.join(task.protocols)}")
    return dataclasses.replace(task, protocol=protocol)


def task_for(section):
    """The task a recipe's `task` section names, shaped by its question, options and protocol."""
    return get_task(section.name, section.question, section.options, section.protocol)
