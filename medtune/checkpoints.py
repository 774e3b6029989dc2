"""Which checkpoint a run resumes from: `training.resume_from_checkpoint` as a path, or `auto` for the newest
one in the output directory that is whole (a kill, a full disk or a power cut can leave one cut short)."""
from __future__ import annotations

import json
from pathlib import Path

from medtune.config import Recipe


def checkpoint_problem(folder: Path) -> str | None:
    """Why training cannot resume from a checkpoint folder (None: it can). The Trainer writes
    trainer_state.json last, but a full disk or a power cut can still leave it, or a file written before it,
    cut short: the state must parse, every safetensors header must read, and every torch file (optimizer,
    scheduler, RNG states, DeepSpeed's shards: zip archives) must have its directory, which is written last."""
    import zipfile

    from safetensors import safe_open

    try:
        json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no trainer_state.json (written last: the save was cut short)"
    except (ValueError, OSError) as e:
        return f"trainer_state.json is unreadable ({type(e).__name__})"
    for path in sorted(folder.rglob("*")):
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt"):  # reads and checks the header against the file size
                    pass
            elif path.suffix in (".pt", ".pth", ".bin"):
                zipfile.ZipFile(path).close()  # a cut-short archive has no central directory
        except Exception as e:  # noqa: BLE001 - safetensors and zipfile raise their own kinds
            return f"{path.relative_to(folder)} is unreadable ({type(e).__name__})"
    return None


def newest_complete_checkpoint(output_dir: Path, say=lambda line: None) -> str | None:
    """The newest checkpoint training can resume from; `say` is told which newer ones were passed over, and why."""
    numbered = [p for p in output_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    for folder in sorted(numbered, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        say(f"{folder.name} passed over: {problem}")
    return None


def resume_checkpoint(recipe: Recipe) -> str | None:
    """training.resume_from_checkpoint: a path, or `auto` for the newest complete checkpoint in output_dir."""
    from accelerate import PartialState

    wanted = recipe.training.get("resume_from_checkpoint")
    if wanted != "auto":
        return wanted
    return newest_complete_checkpoint(recipe.output_dir, print if PartialState().is_main_process else lambda _: None)
