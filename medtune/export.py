"""Export: the model card beside the adapter, an optional merged model, and the upload to the Hub.

The Hub token is read by huggingface_hub from HF_TOKEN or the login cache at upload time; it is never
passed around, printed or written anywhere. Uploads are private unless asked otherwise, and contain the
adapter, processor, card and metrics only (never dataset files, predictions or checkpoints).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from medtune.config import Recipe, load_recipe
from medtune.errors import MedtuneError
from medtune.tasks import get_task

HUB_FILES = [  # what an upload may contain
    "README.md", "adapter_config.json", "adapter_model.safetensors", "processor_config.json",
    "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "chat_template.jinja", "chat_template.json", "eval/baseline.json", "eval/finetuned.json", "eval/comparison.md",
    "eval/*.png",
]


EVAL_MODES = {"generate": "greedy decoding", "score": "option scoring"}  # how the table's figures were made


def model_card(recipe: Recipe, out_dir: Path) -> str:
    task = get_task(recipe.task.name)
    method = "QLoRA" if recipe.quantization.load_in_4bit else "LoRA"
    comparison = out_dir / "eval" / "comparison.md"
    table = comparison.read_text(encoding="utf-8") if comparison.is_file() else "_No evaluation was run._\n"
    prep_report = Path(recipe.data.path) / "prep_report.json"
    data_line = f"`{recipe.data.path}`"
    if prep_report.is_file():
        report = json.loads(prep_report.read_text(encoding="utf-8"))
        sizes = ", ".join(f"{k} {v['total']}" for k, v in report.get("splits", {}).items())
        data_line = f"{report.get('dataset', task.dataset)} ({sizes}; before the recipe's caps)"
    metadata = {
        "base_model": recipe.model.name_or_path, "library_name": "peft", "pipeline_tag": "image-text-to-text",
        "tags": ["medtune", "medgemma", method.lower(), task.name, "medical"],
    }
    recipe_yaml = yaml.safe_dump(recipe.to_dict(), sort_keys=False)
    return f"""---
{yaml.safe_dump(metadata, sort_keys=False).strip()}
---

# {recipe.model.name_or_path} — {task.name} ({method} adapter)

A {method} adapter for `{recipe.model.name_or_path}`, fine-tuned with
[medtune](https://github.com/) on **{task.name}**.

## Evaluation ({recipe.eval.split} split, {EVAL_MODES[recipe.eval.mode]})

{table}
## Data

{data_line}

## Intended use

Research on medical image understanding: reproducing and extending MedGemma fine-tuning experiments.
**Not for clinical decisions.** This model has not been validated for diagnosis, treatment or any
patient care; its outputs can be wrong, and it inherits the biases of its base model and training data.

## Use

```python
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor

base = AutoModelForImageTextToText.from_pretrained("{recipe.model.name_or_path}")
model = PeftModel.from_pretrained(base, "<this repo>")
processor = AutoProcessor.from_pretrained("<this repo>")
```

## Recipe

```yaml
{recipe_yaml}```
"""


def write_model_card(recipe: Recipe, out_dir: Path) -> Path:
    path = out_dir / "README.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(model_card(recipe, out_dir), encoding="utf-8")
    os.replace(tmp, path)  # a card is never half-written
    return path


def merge_adapter(recipe: Recipe, out_dir: Path) -> Path:
    """Base model (unquantized, in the recipe's precision) + adapter, merged into OUTPUT_DIR/merged."""
    from peft import PeftModel

    from medtune.model import load_model, load_processor, resolve_precision

    base = load_model(recipe, resolve_precision(recipe.model.precision), quantize=False)
    merged = PeftModel.from_pretrained(base, str(out_dir)).merge_and_unload()
    final, staging = out_dir / "merged", out_dir / ".merged.partial"
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(staging)
    load_processor(recipe).save_pretrained(staging)
    shutil.rmtree(final, ignore_errors=True)
    os.rename(staging, final)
    return final


def push_to_hub(out_dir: Path, repo_id: str, private: bool = True) -> str:
    from huggingface_hub import HfApi

    if not (out_dir / "adapter_config.json").is_file():
        raise MedtuneError(f"{out_dir} holds no adapter (adapter_config.json): train first")
    api = HfApi()  # token: HF_TOKEN or the login cache, read by huggingface_hub itself
    url = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(out_dir), repo_id=repo_id, repo_type="model", allow_patterns=HUB_FILES,
                      commit_message="Upload medtune adapter")
    return str(url)


def export(out_dir: Path, merge: bool = False, push: bool = False, repo_id: str | None = None,
           private: bool = True) -> None:
    """`medtune export OUTPUT_DIR`: rewrite the card from the run's recipe and results, merge, push."""
    recipe_file = out_dir / "recipe.yaml"
    if not recipe_file.is_file():
        raise MedtuneError(f"{out_dir} is not a medtune run (no recipe.yaml): pass the training output_dir")
    recipe = load_recipe(recipe_file)
    print(f"model card: {write_model_card(recipe, out_dir)}")
    if merge:
        print(f"merged model: {merge_adapter(recipe, out_dir)}")
    if push:
        if not repo_id:
            raise MedtuneError("--push needs --repo-id ORG/NAME")
        print(f"uploaded to {push_to_hub(out_dir, repo_id, private)} ({'private' if private else 'public'})")
