"""The model card of a run, made with huggingface_hub's own card API (`ModelCard`, `ModelCardData`, `EvalResult`).

Metadata the Hub reads: the base model's Hub id, `base_model_relation`, the base model's license, tags, and a
`model-index` with one result per fine-tuned metric (the Hub's evaluation widget). The body says what a reader
needs to trust the figures: the data and what data_prep skipped, the training set-up, how evaluation decoded,
the out-of-box against fine-tuned table and figures, the intended use, how to load it, and the recipe.

A card may be public, so no local path reaches it: a base model loaded from a folder is named by the Hub id
that folder records (a Hub cache snapshot, or the config's `_name_or_path`) or said to be local, and every path
in the recipe is cut to its last component.
"""
from __future__ import annotations

import json
import os
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from medtune import medsiglip, run_folder
from medtune.bench_results import read_results
from medtune.config import Recipe
from medtune.data import CAPS
from medtune.run_folder import read_json
from medtune.run_info import mask_secrets
from medtune.serving import serving_lines
from medtune.tasks import is_multiple_choice, task_for
from medtune.tiny import TINY_TWINS

EVAL_MODES = {"generate": "greedy decoding", "score": "option scoring"}  # how the table's figures were made
# The MedGemma family's terms (its Hub cards' license fields): a derivative carries them
MEDGEMMA_TERMS = {"license": "other", "license_name": "health-ai-developer-foundations",
                  "license_link": "https://developers.google.com/health-ai-developer-foundations/terms"}
MEDGEMMA_PREFIXES = ("google/medgemma-", "google/medsiglip-")
HUB_TASK_TYPES = {"classification": "image-classification", "generation": "image-to-text"}  # by the task's kind
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_HUB_CACHE_SNAPSHOT = re.compile(r"models--([\w.-]+)--([\w.-]+)/snapshots/")
# recipe keys that hold paths (any other value that is an absolute path is cut too)
_PATH_KEYS = {("data", "path"), ("training", "output_dir"), ("training", "logging_dir"),
              ("training", "resume_from_checkpoint"), ("model", "adapter")}

CARD_TEMPLATE = """\
---
{{ card_data }}
---

# {{ title }}

A {{ method }} {{ what }} for {{ base_text }}, fine-tuned with {{ medtune }} on **{{ task }}**.

## Evaluation ({{ split }} split, {{ eval_mode }})

{{ table }}

{% for line in eval_notes %}{{ line }}
{% endfor %}
{% for figure in figures %}![{{ figure.stem }}](eval/{{ figure.name }})
{% endfor %}
## Training data

{{ data_line }}

## Training

{% for line in training_lines %}- {{ line }}
{% endfor %}
## Intended use

Research on medical image understanding: reproducing and extending MedGemma fine-tuning experiments.
**Not for clinical decisions.** This model has not been validated for diagnosis, treatment or any
patient care; its outputs can be wrong, and it inherits the biases of its base model and training data.
{{ license_line }}

## Use

```python
{{ snippet }}
```
{% if serving %}
## Serve

{{ serving }}
{% endif %}
## Recipe

```yaml
{{ recipe_yaml }}```
"""


# ----------------------------------------------------------------------------- where things come from
def hub_base_model(name_or_path: str) -> str | None:
    """The base model's Hub id, or None for a local model that records none (the tiny one included)."""
    if name_or_path in TINY_TWINS:
        return None
    folder = Path(name_or_path).expanduser()
    if not folder.exists():
        return name_or_path  # the recipe loader accepts only a Hub id (org/name) that is not a local folder
    snapshot = _HUB_CACHE_SNAPSHOT.search(folder.resolve().as_posix() + "/")
    if snapshot:
        return f"{snapshot.group(1)}/{snapshot.group(2)}"
    try:
        recorded = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_name_or_path") or ""
    except (OSError, ValueError):
        recorded = ""
    return recorded if _HUB_ID.fullmatch(recorded) and not Path(recorded).exists() else None


def project_url() -> str | None:
    """medtune's own address, from its package metadata (pyproject.toml's [project.urls])."""
    try:
        urls = metadata.metadata("medtune").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        return None
    return urls[0].split(",", 1)[1].strip() if urls else None


def dataset_title(reader_name: str) -> str:
    """A dataset's name as its publisher gives it: the first words of its data_prep reader's docstring."""
    from data_prep import get_reader

    try:
        first_line = (get_reader(reader_name).__doc__ or "").strip().splitlines()[0]
    except (ImportError, IndexError):
        return reader_name
    return re.split(r" \(|:|,", first_line)[0].strip() or reader_name


def card_recipe(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as the card shows it: every path cut to its last component, the base model named by
    its Hub id or said to be local."""
    def cut(value: Any, key: tuple[str, str]) -> Any:
        if isinstance(value, dict):
            return {k: cut(v, (key[0], k)) for k, v in value.items()}
        if isinstance(value, list):
            return [cut(v, key) for v in value]
        if isinstance(value, str) and value and (key in _PATH_KEYS or os.path.isabs(value) or value.startswith("~")):
            return Path(value).name
        return value

    shown = {section: cut(values, (section, "")) for section, values in mask_secrets(recipe.to_dict()).items()}
    name = recipe.model.name_or_path
    shown["model"]["name_or_path"] = hub_base_model(name) or f"{Path(name).name} (a local model)"
    return shown


# ----------------------------------------------------------------------------- the card's parts
def eval_results(recipe: Recipe, finetuned: dict[str, Any], benchmarks: dict[str, Any] | None = None) -> list:
    """One `EvalResult` per numeric fine-tuned metric, and one per benchmark of `eval.benchmarks` (its metric, on its
    dataset's Hub id): what the Hub's evaluation widget shows."""
    from huggingface_hub import EvalResult

    task = task_for(recipe.task)
    task_type, title = HUB_TASK_TYPES.get(task.kind, "image-text-to-text"), dataset_title(task.dataset)
    values = {k: v for k, v in finetuned.get("metrics", {}).items()
              if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n"}
    entries = [EvalResult(task_type=task_type, dataset_type=task.dataset, dataset_name=title,
                          dataset_split=recipe.eval.split, metric_type=name, metric_name=name, metric_value=value)
               for name, value in values.items()]
    # from the run's results alone (not the suite file, which need not be where the run is exported)
    for name, how in (benchmarks or {}).get("protocols", {}).items():
        value = benchmarks["benchmarks"].get(name, {}).get("finetuned", {}).get(how["metric"])
        if isinstance(value, (int, float)):
            entries.append(EvalResult(task_type=HUB_TASK_TYPES.get(how.get("kind"), "image-text-to-text"),
                                      dataset_type=how.get("dataset") or name, dataset_name=name,
                                      dataset_split=how["split"], metric_type=how["metric"],
                                      metric_name=f"{name} {how['metric']}", metric_value=value))
    return entries


def data_line(recipe: Recipe, evaluated: int | None) -> str:
    task = task_for(recipe.task)
    report = read_json(Path(recipe.data.path) / "prep_report.json")
    title = dataset_title(report.get("dataset", task.dataset))
    sizes = []
    for split, info in report.get("splits", {}).items():
        cap = getattr(recipe.data, CAPS.get(split, ""), None)  # as medtune.data.load_split applies it
        used = min(info["total"], cap or info["total"])
        if split == recipe.eval.split and evaluated is not None:
            used = evaluated
        sizes.append(f"{split} {used}" + (f" (of {info['total']})" if used != info["total"] else ""))
    line = f"{title}, prepared by `python -m data_prep {report.get('dataset', task.dataset)}`"
    if sizes:
        line += f": {', '.join(sizes)} examples used"
    skipped = report.get("skipped_count")
    if skipped is not None:
        reasons = ", ".join(f"{n} {why}" for why, n in report.get("skipped_by_reason", {}).items())
        line += f". data_prep skipped {skipped} file(s)" + (f" ({reasons})" if reasons else "")
    return line + "."


def _method_line(recipe: Recipe) -> str:
    lora = recipe.lora
    method = (f"QLoRA ({recipe.quantization.quant_type} 4-bit language model)" if recipe.quantization.load_in_4bit
              else "LoRA")
    vision = "LoRA on the vision tower too" if lora.adapt_vision_tower else "vision tower frozen"
    projector = "projector trained" if lora.train_projector else "projector frozen"
    return (f"{method}: rank {lora.r}, alpha {lora.alpha}, dropout {lora.dropout} on the language model's "
            f"{', '.join(lora.target_modules)}; {vision}; {projector}"
            + ("; loss on the answer only" if recipe.method == "sft" else ""))


def training_lines(method_line: str, run_info: dict[str, Any]) -> list[str]:
    """The set-up: the method, and the schedule and hardware the run recorded in run_info.json."""
    lines = [method_line]
    plan = run_info.get("schedule")
    if plan:
        batch, accumulation, processes = (plan["per_device_train_batch_size"], plan["gradient_accumulation_steps"],
                                          run_info.get("processes", 1))
        length = f"{plan['max_steps']} steps" if plan["max_steps"] > 0 else f"{plan['num_train_epochs']:g} epoch(s)"
        lines.append(f"{length}, effective batch {batch * accumulation * processes} ({batch} x {accumulation} "
                     f"accumulation x {processes} process(es)), learning rate {plan['learning_rate']:g} "
                     f"({plan['lr_scheduler_type']})")
    hardware = ", ".join(str(run_info[k]) for k in ("precision", "hardware") if run_info.get(k))
    if hardware:
        lines.append(f"precision and hardware: {hardware}")
    if run_info.get("train_seconds") is not None:
        lines.append(f"training wall time: {run_info['train_seconds'] / 60:.1f} min")
    best = run_info.get("best_checkpoint")
    if best:
        lines.append(f"the adapter is the best validation step's: step {best['step']} of {best['last_step']} "
                     f"({best['metric']} {best['value']:.4g} on the validation split)")
    return lines


def grpo_lines(recipe: Recipe, out_dir: Path) -> list[str]:
    """What a GRPO run (training.method: grpo) did: where it started, its rewards and its sampling and loss settings,
    as the trainer applied them (medtune/grpo.py, medtune/rewards.py); nothing for an SFT run."""
    if recipe.method != "grpo":
        return []
    from medtune.rewards import describe_rewards

    g = recipe.grpo
    rewards = describe_rewards(task_for(recipe.task), g, quote="`")
    shape = read_json(out_dir / "adapter_config.json")
    start = (f"from the SFT adapter `{Path(recipe.model.adapter).name}` (trained on, not merged, so of its shape: rank "
             f"{shape.get('r')}, alpha {shape.get('lora_alpha')}; its column in the table above)"
             if recipe.model.adapter else "from the base model, a new adapter")
    settings = {key: g.get(key, default) for key, default in (
        ("num_generations", 8), ("max_completion_length", 512), ("temperature", 1.0), ("beta", 0.0),
        ("epsilon", 0.2), ("loss_type", "dapo"), ("scale_rewards", "group"), ("mask_truncated_completions", False))}
    return [f"GRPO (reinforcement learning with TRL's GRPOTrainer) {start}; reward per completion: {rewards} (the "
            "task's own per-example metric as evaluation computes it; an answer naming several options or repeating "
            "the question, or a thinking trace left open, earns nothing)",
            "GRPO settings (TRL's defaults where the recipe sets none): "
            + ", ".join(f"{k} {v}" for k, v in settings.items())]


def eval_notes(results: dict[str, dict]) -> list[str]:
    """Counts a reader must see beside the table: answers that named no option (scored as wrong)."""
    counts = {label: (r["metrics"]["unparsable"], r.get("n")) for label, r in
              (("fine-tuned", results.get("finetuned")), ("out-of-box", results.get("baseline")))
              if r and isinstance(r.get("metrics", {}).get("unparsable"), int)}
    if not counts:
        return []
    said = ", ".join(f"{n} of {total} {label}" for label, (n, total) in counts.items())
    return [f"Unparsable answers (naming no option; scored as wrong): {said}."]


def usage_snippet(base: str | None, repo_id: str | None, merged: bool, text_only: bool = False) -> str:
    base_ref = base or "path/to/the/local/base/model"
    where = repo_id or "path/to/this/folder"
    # a text-only model (MedGemma 27B text) is a causal LM with a tokenizer and no image processor
    model_class, processor_class = (("AutoModelForCausalLM", "AutoTokenizer") if text_only
                                    else ("AutoModelForImageTextToText", "AutoProcessor"))
    if merged:
        return (f"from transformers import {model_class}, {processor_class}\n\n"
                f"model = {model_class}.from_pretrained(\"{where}\")\n"
                f"processor = {processor_class}.from_pretrained(\"{where}\")")
    return (f"from peft import PeftModel\nfrom transformers import {model_class}, {processor_class}\n\n"
            f"base = {model_class}.from_pretrained(\"{base_ref}\")\n"
            f"model = PeftModel.from_pretrained(base, \"{where}\")\n"
            f"processor = {processor_class}.from_pretrained(\"{where}\")")


# ----------------------------------------------------------------------------- the card
def model_card(recipe: Recipe, out_dir: Path, repo_id: str | None = None, merged: bool = False):
    """The card of the run in `out_dir` as a `huggingface_hub.ModelCard` (`str(card)` is its README.md); `merged`:
    for the merged model, whose folder holds no eval/ figures."""
    from huggingface_hub import ModelCard, ModelCardData

    task = task_for(recipe.task)
    eval_dir = run_folder.eval_dir(out_dir)
    results = {name: run_folder.read_result(out_dir, name) for name in ("finetuned", "baseline")}
    results = {name: r for name, r in results.items() if r}
    benchmarks = (read_results(out_dir) or (None, None))[0]
    base = hub_base_model(recipe.model.name_or_path)
    text_only = not (out_dir / "processor_config.json").is_file()  # a text-only model saves a tokenizer alone
    # what a MedGemma run's card says, unless the run is another family's (MedSigLIP: medtune/medsiglip.py)
    facts = {"method": "QLoRA" if recipe.quantization.load_in_4bit else "LoRA",
             "what": "model (the adapter merged into its base)" if merged else "adapter",
             "method_line": _method_line(recipe), "library_name": "transformers" if merged else "peft",
             "pipeline_tag": "text-generation" if text_only else "image-text-to-text", "family_tag": "medgemma",
             "eval_mode": EVAL_MODES[recipe.eval.mode], "snippet": usage_snippet(base, repo_id, merged, text_only),
             "adapter": not merged}
    facts.update(medsiglip.card_facts(recipe, base, repo_id, len(task.options) if is_multiple_choice(task) else 0)
                 or {})
    method = facts["method"]
    base_name = base or f"{Path(recipe.model.name_or_path).name} (a local model)"
    terms = MEDGEMMA_TERMS if base and base.startswith(MEDGEMMA_PREFIXES) else {}
    card_data = ModelCardData(
        base_model=base, library_name=facts["library_name"], pipeline_tag=facts["pipeline_tag"],
        tags=["medtune", facts["family_tag"], method.lower().replace(" ", "-"), task.name, "medical"], **terms,
        model_name=repo_id.split("/")[-1] if repo_id else out_dir.name,
        eval_results=eval_results(recipe, results.get("finetuned", {}), benchmarks) or None,
        base_model_relation="finetune" if merged else "adapter")
    comparison = run_folder.comparison_path(out_dir)
    url = project_url()
    figures = [] if merged else [eval_dir / f for r in results.values() for f in r.get("figures", [])
                                 if (eval_dir / f).is_file()]
    license_line = (f"\nUse is governed by the base model's terms: [{terms['license_name']}]({terms['license_link']})."
                    if terms else "\nUse is governed by the base model's terms.")
    return ModelCard.from_template(
        card_data, template_str=CARD_TEMPLATE,
        title=f"{base_name} — {task.name} ({method}{', merged' if merged else ' adapter' if facts['adapter'] else ''})",
        method=method, what=facts["what"], base_text=f"`{base_name}`", task=task.name,
        medtune=f"[medtune]({url})" if url else "medtune",
        split=recipe.eval.split, eval_mode=facts["eval_mode"],
        table=comparison.read_text(encoding="utf-8").strip() if comparison.is_file() else "_No evaluation was run._",
        eval_notes=eval_notes(results), figures=figures,
        data_line=data_line(recipe, (results.get("finetuned") or results.get("baseline") or {}).get("n")),
        training_lines=(training_lines(facts["method_line"], run_folder.read_run_info(out_dir))
                        + grpo_lines(recipe, out_dir)),
        license_line=license_line,
        snippet=facts["snippet"],
        serving=serving_lines(recipe, task, base, repo_id or "path/to/this/folder", merged, text_only)
        if facts["family_tag"] == "medgemma" else "",
        recipe_yaml=yaml.safe_dump(card_recipe(recipe), sort_keys=False))


def write_model_card(recipe: Recipe, out_dir: Path, repo_id: str | None = None, merged: bool = False,
                     path: Path | None = None) -> Path:
    """The card of the run in `out_dir`, written to `path` (default: the run's README.md)."""
    path = path or out_dir / "README.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(str(model_card(recipe, out_dir, repo_id, merged)), encoding="utf-8")
    os.replace(tmp, path)  # a card is never half-written
    return path
