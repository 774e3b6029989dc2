"""What a run records about itself: the resolved recipe, the command, library versions, the git revision."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from medtune.config import Recipe, mask_secrets, save_recipe

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
    save_recipe(recipe, out_dir / "recipe.yaml")
    info = {"recipe_file": recipe.source, "command": mask_secrets(sys.argv),
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "git_revision": git_revision(), "versions": library_versions(), **(extra or {})}
    (out_dir / "run_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
