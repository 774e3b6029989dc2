"""Experiment tracking: wandb (online or offline), tensorboard, or none.

Training curves come from transformers' own callbacks (`report_to`); after evaluation we add the metrics,
the comparison table, the confusion matrices and a table of sample predictions with their images.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from medtune.config import Recipe
from medtune.run_folder import predictions_file


def wandb_has_credentials() -> bool:
    """An API key in the environment, or the netrc entry that `wandb login` writes."""
    import netrc
    from urllib.parse import urlparse

    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(recipe: Recipe) -> str:
    """The recipe's mode, except that online without credentials logs offline instead of failing the run."""
    if recipe.tracking.wandb_mode == "online" and not wandb_has_credentials():
        if os.environ.get("RANK", "0") == "0":  # said once, not by every rank
            print(f"medtune: no wandb credentials (WANDB_API_KEY or `wandb login`): logging offline to "
                  f"{recipe.output_dir / 'wandb'}; upload later with `wandb sync`", file=sys.stderr)
        return "offline"
    return recipe.tracking.wandb_mode


def training_arguments(recipe: Recipe) -> dict[str, Any]:
    """SFTConfig keywords for the chosen tracker; sets the environment the callbacks read."""
    t = recipe.tracking
    if t.backend == "wandb":
        os.environ["WANDB_PROJECT"] = t.project
        os.environ["WANDB_MODE"] = wandb_mode(recipe)
        os.environ.setdefault("WANDB_DIR", str(recipe.output_dir))
        os.environ.setdefault("WANDB_LOG_MODEL", "false")  # the adapter goes to the Hub, not to wandb
    elif t.backend == "tensorboard":
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(recipe.output_dir / "tensorboard")
    args = {"report_to": t.backend}
    if t.run_name:
        args["run_name"] = t.run_name
    return args


def sampled_completions(recipe: Recipe, task) -> tuple[bool, bool]:
    """(whether GRPO's sampled completions go to the tracker, whether with their images): as sample predictions do,
    only for public datasets unless `tracking.log_images` says otherwise (a credentialed task's answers are data)."""
    t = recipe.tracking
    log_images = t.log_images if t.log_images is not None else not task.credentialed
    return t.backend != "none" and t.num_sample_predictions > 0 and (log_images or not task.credentialed), log_images


def _sample_rows(dataset, predictions_file: Path, n: int):
    import json

    with open(predictions_file, encoding="utf-8") as f:
        predictions = [json.loads(line) for _, line in zip(range(n), f)]
    from medtune.rows import row_images

    rows = dataset.select(range(len(predictions)))
    # a row's first image stands for it in the table (the current film beside a prior, a series' first slice);
    # None: text only
    return [(p, next(iter(row_images(row)), None)) for p, row in zip(predictions, rows)]


def benchmark_scalars(benchmarks: dict | None) -> dict[str, float]:
    """`bench/<benchmark>/<model>/<metric>` for each number a suite measured, and each adapter's difference."""
    if not benchmarks:
        return {}
    scalars = {f"bench/{name}/{label}/{metric}": value for name, per in benchmarks["benchmarks"].items()
               for label, metrics in per.items() for metric, value in metrics.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)}
    scalars.update({f"bench/{name}/{label}/difference": d["difference"]
                    for name, per in benchmarks.get("differences", {}).items() for label, d in per.items() if d})
    return scalars


def log_evaluation(recipe: Recipe, results: dict[str, dict], columns: list[str], comparison: list[list[str]],
                   table: str, eval_dir: Path, dataset, benchmarks: dict | None = None) -> None:
    """Add the evaluation to the run the trainer logged to (main process only): the comparison (`columns` and
    its rows, and as the markdown `table`), metrics, figures and sample predictions; the benchmarks' figures."""
    from medtune.tasks import task_for

    t = recipe.tracking
    if t.backend == "none":
        return
    task = task_for(recipe.task)
    log_images = t.log_images if t.log_images is not None else not task.credentialed
    # Credentialed data (PhysioNet's agreement forbids passing it to third-party services): its reports are
    # data as much as its images, so the sample table goes to the tracker only where images may.
    n = t.num_sample_predictions if log_images or not task.credentialed else 0
    scored = list(task.example_metrics)  # the per-example scores saved with each prediction
    if t.backend == "wandb":
        import wandb

        run = wandb.run or wandb.init(project=t.project, name=t.run_name, mode=os.environ["WANDB_MODE"],
                                      dir=str(recipe.output_dir))
        summary = {f"final/{name}/{k}": v for name, r in results.items()
                   for k, v in r["metrics"].items() if isinstance(v, (int, float))}
        summary.update(benchmark_scalars(benchmarks))
        run.log(summary)
        run.summary.update(summary)
        run.log({"final/comparison": wandb.Table(columns=columns, data=comparison)})
        for name, r in results.items():
            for figure in r.get("figures", []):
                run.log({f"final/{name}/{Path(figure).stem}": wandb.Image(str(eval_dir / figure))})
            if n:
                columns = ["id", "image", "reference", "generated", *scored]
                data = [[p["id"], wandb.Image(img) if log_images and img is not None else None, p["reference_text"],
                         p["generated"], *(p.get(k) for k in scored)]
                        for p, img in _sample_rows(dataset, eval_dir / predictions_file(name), n)]
                run.log({f"final/{name}/samples": wandb.Table(columns=columns, data=data)})
        run.finish()
    elif t.backend == "tensorboard":
        import numpy as np
        from PIL import Image
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(recipe.output_dir / "tensorboard"))
        for key, value in benchmark_scalars(benchmarks).items():
            writer.add_scalar(key, value)
        for name, r in results.items():
            for k, v in r["metrics"].items():
                if isinstance(v, (int, float)):
                    writer.add_scalar(f"final/{name}/{k}", v)
            for figure in r.get("figures", []):
                image = np.asarray(Image.open(eval_dir / figure).convert("RGB"))
                writer.add_image(f"final/{name}/{Path(figure).stem}", image, dataformats="HWC")
            if n:
                samples = _sample_rows(dataset, eval_dir / predictions_file(name), n)
                lines = ["| " + " | ".join(["id", "reference", "generated", *scored]) + " |",
                         "|---" * (3 + len(scored)) + "|"]
                for i, (p, img) in enumerate(samples):
                    cells = [p["id"], p["reference_text"], repr(p["generated"]), *(p.get(k) for k in scored)]
                    lines.append("| " + " | ".join(str(c).replace("\n", " ") for c in cells) + " |")
                    if log_images and img is not None:
                        writer.add_image(f"final/{name}/sample_{i}", np.asarray(img.convert("RGB")),
                                         dataformats="HWC")
                writer.add_text(f"final/{name}/samples", "\n".join(lines))
        writer.add_text("final/comparison", table)
        writer.close()
