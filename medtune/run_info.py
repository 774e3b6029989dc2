"""What a run records about itself: the resolved recipe, the command, library versions, the git revision, the
hardware, and (after training) the training wall time. The model card reads it."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from medtune.config import Recipe
from medtune.run_folder import RECIPE, RUN_INFO, read_run_info

_TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{20,}")  # Hugging Face access tokens
# keys that name a secret; not pad_token/eos_token, which are SFTConfig's special-token strings
_SECRET_KEYS = re.compile(r"^(hub_)?token$|(^|_)(api_key|secret|password)$", re.IGNORECASE)


def mask_secrets(value: Any, key: str = "") -> Any:
    """A copy with token-like strings, and every value under a secret-sounding key, replaced by ***."""
    if isinstance(value, dict):
        return {k: mask_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_secrets(v, key) for v in value]
    if isinstance(value, str):
        return "***" if value and _SECRET_KEYS.search(key) else _TOKEN_LIKE.sub("***", value)
    return value




def save_recipe(recipe: Recipe, path: Path) -> None:
    """The resolved recipe as a run records it (recipe.yaml), secrets masked."""
    path.write_text(yaml.safe_dump(mask_secrets(recipe.to_dict()), sort_keys=False), encoding="utf-8")


PACKAGES = ("medtune", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes",
            "deepspeed", "huggingface_hub", "wandb")


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def git_revision() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def write_run_info(recipe: Recipe, out_dir: Path, extra: dict | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    save_recipe(recipe, out_dir / RECIPE)
    info = {"recipe_file": recipe.source, "command": mask_secrets(sys.argv),
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "git_revision": git_revision(), "versions": library_versions(), **(extra or {})}
    (out_dir / RUN_INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")


def describe_hardware(processes: int) -> str:
    """e.g. `2 x NVIDIA H100 80GB HBM3` or `CPU (2 cores)`: what the run trained on."""
    import torch

    if torch.cuda.is_available():
        return f"{processes} x {torch.cuda.get_device_name()}"
    return f"CPU ({os.cpu_count()} cores)"


def schedule(args) -> dict:
    """The training schedule as the Trainer runs it (the recipe's values over transformers' defaults)."""
    return {"per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "num_train_epochs": args.num_train_epochs, "max_steps": args.max_steps,
            "learning_rate": args.learning_rate,
            "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))}


def update_run_info(out_dir: Path, fields: dict) -> None:
    """Add what a run learns as it goes (the training wall time) to its run_info.json."""
    info = read_run_info(out_dir)
    (out_dir / RUN_INFO).write_text(json.dumps({**info, **fields}, indent=2), encoding="utf-8")
