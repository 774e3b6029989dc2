"""The checks of a recipe that span its sections or reach its prepared data, after `medtune.config` has checked
every key's name and type: a known task with only the settings it takes; the prepared dataset there, prepared
for this task, with the recipe's split options; the model family's keys (medtune/medsiglip.py); and what the
commands need (a repo id to push to, a model that exists). Each problem is a `RecipeError` naming the key.

Also the one thing loading takes from the data: a generic task's question and classes, as its prompts hold them
(`task_as_prepared`), an explicit step of `load_recipe`. Light: no torch, no transformers.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any

from medtune import medsiglip
from medtune.errors import RecipeError
from medtune.tasks import MEDTUNE_PROTOCOL, data_prep_readers, is_configurable, is_multiple_choice, task_for, task_names
from medtune.tiny import TINY_TWINS


def suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ----------------------------------------------------------------------------- the task
def check_task(recipe) -> None:
    """A task medtune has, with a question and options only where it takes them."""
    section = recipe.task
    if section.name not in task_names():
        raise RecipeError("task.name", f"unknown task {section.name!r}{suggest(section.name, task_names())}; "
                                       f"built in: {', '.join(task_names())}")
    _check_task_settings(section)


def _check_task_settings(section) -> None:
    configurable = is_configurable(section.name)
    for key in ("question", "options"):
        if getattr(section, key) is not None and not configurable:
            generic = " and ".join(n for n in task_names() if is_configurable(n))
            raise RecipeError(f"task.{key}", f"{section.name} asks its own question of fixed classes: remove "
                                             f"task.{key} (the generic tasks, {generic}, take it)")
    if section.options is not None and not all(isinstance(k, str) and isinstance(v, str) and v.strip()
                                               for k, v in section.options.items()):
        raise RecipeError("task.options", "must map each class name to its option text, e.g. {TUM: tumour}")
    if section.options:
        resolved_task(section)  # a task that takes no options refuses them here
    if section.protocol is not None and not is_configurable(section.name):
        resolved_task(section)  # an unknown protocol is refused here (a generic task's, once its data is read)


def resolved_task(section):
    try:
        return task_for(section)
    except ValueError as e:  # a generic task shaped by settings it cannot take, or without them; a protocol unknown
        raise RecipeError("task.protocol" if "protocol" in str(e) else "task.options", str(e)) from None


# ----------------------------------------------------------------------------- the prepared data
def check_data(recipe) -> None:
    """The prepared dataset is there, was prepared for the recipe's task, and agrees with its split options."""
    data_path = Path(recipe.data.path) if recipe.data.path else None
    if data_path is None or not (data_path / "dataset_dict.json").is_file():
        if data_path is None:
            what = "is not set"
        else:
            what = f"{str(data_path)!r} " + ("is not a prepared dataset" if data_path.exists() else "does not exist")
        raise RecipeError("data.path", f"{what}; prepare one with `python -m data_prep "
                                       f"{'|'.join(data_prep_readers(recipe.task.name))} --src RAW --out DIR` and pass "
                                       "data.path=DIR")
    report = prep_report(data_path)
    _check_prepared_task(recipe.task, report.get("task"), data_path)
    prepared = report.get("options") or {}
    if recipe.data.test_fraction is not None and prepared and "test_fraction" not in prepared:
        raise RecipeError("data.test_fraction", f"{data_path} has the publisher's own test split, not one data_prep "
                                                "draws: remove data.test_fraction")
    if recipe.data.test_fraction is not None and prepared.get("test_fraction", recipe.data.test_fraction) != \
            recipe.data.test_fraction:
        raise RecipeError("data.test_fraction", f"{recipe.data.test_fraction} but {data_path} was prepared with "
                                                f"{prepared['test_fraction']}: prepare it again with --recipe, or "
                                                f"set data.test_fraction={prepared['test_fraction']}")


def _check_prepared_task(section, prepared: dict[str, Any] | None, data_path: Path) -> None:
    """The dataset was prepared for this task (datasets prepared before data_prep recorded it pass); a generic
    task takes the question and options its prompts were written with, and the recipe's must agree with them."""
    if not prepared:
        return
    if prepared.get("name") != section.name:
        raise RecipeError("task.name", f"{section.name} but {data_path} was prepared for {prepared.get('name')}: "
                                       f"set task.name={prepared.get('name')}, or point data.path at "
                                       f"data prepared for {section.name}")
    if section.protocol is not None and section.protocol != prepared.get("protocol", MEDTUNE_PROTOCOL):
        raise RecipeError("task.protocol", f"{section.protocol} but {data_path}'s prompts are "
                                           f"{prepared.get('protocol', 'medtune')}'s: prepare it again with --recipe "
                                           "(the prompts are written then), or remove task.protocol")
    if not is_configurable(section.name):
        return
    if section.question is not None and section.question != prepared.get("question"):
        raise RecipeError("task.question", f"{section.question!r} but {data_path}'s prompts ask "
                                           f"{prepared.get('question')!r}: prepare it again with --recipe "
                                           "(the prompts are written then), or remove task.question")
    classes = prepared.get("options") or {}
    unknown = [c for c in section.options or {} if c not in classes]
    if unknown:
        raise RecipeError("task.options", f"no class {unknown[0]!r} in {data_path} (its classes: "
                                          f"{', '.join(classes)})")
    changed = [c for c, text in (section.options or {}).items() if classes[c] != text]
    if changed:
        raise RecipeError("task.options", f"{changed[0]}: {section.options[changed[0]]!r} but {data_path}'s prompts "
                                          f"read {classes[changed[0]]!r}: prepare it again with --recipe (the "
                                          "prompts are written then), or remove the option")


def task_as_prepared(recipe):
    """The recipe's task section with the protocol, and a generic task's question and classes, as the prepared
    data's prompts hold them (check_data has made sure the recipe's agree)."""
    prepared = prep_report(Path(recipe.data.path)).get("task") or {}
    if not prepared:
        return recipe.task
    protocol = recipe.task.protocol or prepared.get("protocol")  # the recipe's agrees (check_data)
    if not is_configurable(recipe.task.name):
        return dataclasses.replace(recipe.task, protocol=protocol)
    return dataclasses.replace(recipe.task, question=prepared.get("question"),
                               options=dict(prepared.get("options") or {}) or None, protocol=protocol)


def prep_report(data_path: Path) -> dict[str, Any]:
    try:
        return json.loads((data_path / "prep_report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# ----------------------------------------------------------------------------- across sections
def check_settings(recipe, raw: dict[str, Any], check_suite: bool = True) -> None:
    """What spans the sections: the model family's keys, the benchmark suite (not where a finished run is exported,
    perhaps elsewhere), option scoring for a multiple-choice task, a repo id to push to, a model that can be found."""
    from medtune.suite import suite_of

    task = resolved_task(recipe.task)
    medsiglip.check_family(recipe, raw, task)
    if check_suite:
        suite_of(recipe.eval.benchmarks)  # every benchmark checked now, not after training
    if recipe.eval.mode == "score" and not is_multiple_choice(task):
        raise RecipeError("eval.mode", f"score needs a multiple-choice task; {task.name} is scored by generation")
    if recipe.export.push and not recipe.export.repo_id:
        raise RecipeError("export.repo_id", "export.push needs a repo id such as your-org/medgemma-crc-qlora")
    check_grpo(recipe, task, check_suite)
    if recipe.model.name_or_path not in TINY_TWINS and "/" not in recipe.model.name_or_path \
            and not Path(recipe.model.name_or_path).exists():
        raise RecipeError("model.name_or_path", f"{recipe.model.name_or_path!r} is neither a Hub id (org/name), a "
                                                f"local folder, nor a tiny twin ({', '.join(TINY_TWINS)})")


# ----------------------------------------------------------------------------- GRPO (training.method: grpo)
def check_grpo(recipe, task, check_adapter: bool = True) -> None:
    """A GRPO recipe: a task a completion can be scored on, a reward metric the task saves per example, and the SFT
    run it starts from (model.adapter: an adapter of this base model, not to be overwritten). The adapter's folder
    is not looked for where a finished run is exported (`check_adapter=False`), perhaps on another machine."""
    if recipe.method != "grpo":
        if recipe.model.adapter:
            raise RecipeError("model.adapter", "continuing an adapter is GRPO's: set training.method: grpo, or remove "
                                               "model.adapter")
        return
    from medtune.rewards import reward_metric

    if medsiglip.is_encoder_recipe(recipe):
        raise RecipeError("training.method", "grpo trains MedGemma's answers; a MedSigLIP recipe (encoder.method) "
                                             "has none: remove training.method")
    if getattr(task, "independent_questions", False):
        raise RecipeError("training.method", f"grpo samples one answer a prompt; {task.name} asks several questions "
                                             "of each image: train it with sft")
    try:
        reward_metric(task, recipe.grpo.get("reward_metric"))
    except ValueError as e:
        raise RecipeError("grpo.reward_metric", str(e)) from None
    adapter = recipe.model.adapter
    if not adapter or not check_adapter:
        return
    folder = Path(adapter)
    if not (folder / "adapter_config.json").is_file():
        raise RecipeError("model.adapter", f"{adapter!r} holds no adapter (adapter_config.json): point it at the "
                                           "training.output_dir of a finished SFT run")
    if folder.resolve() == Path(recipe.training["output_dir"]).resolve():
        raise RecipeError("training.output_dir", "is model.adapter's folder: GRPO would overwrite the SFT adapter "
                                                 "it compares against; choose another output_dir")
    from medtune.run_folder import read_recipe

    trained = read_recipe(folder)
    base = (trained.get("model") or {}).get("name_or_path")
    if base and base != recipe.model.name_or_path:
        raise RecipeError("model.adapter", f"{adapter!r} was trained on {base}, not {recipe.model.name_or_path}: "
                                           f"set model.name_or_path={base}, or use an adapter of this model")
    if trained.get("encoder", {}).get("method"):
        raise RecipeError("model.adapter", f"{adapter!r} is a MedSigLIP run, not a MedGemma adapter")
