"""Fine-tune MedGemma on one task with LoRA/QLoRA, evaluate the base model and the adapter, export.

    accelerate launch medtune/train.py recipes/tissue_classification/qlora.yaml [section.key=value ...]
    medtune train RECIPE [section.key=value ...]           # the same, in this process

Steps: validate the recipe (before anything heavy loads) -> data -> model -> out-of-box evaluation ->
training (TRL SFTTrainer, loss on the answer only) -> fine-tuned evaluation -> comparison table ->
adapter + processor + model card in OUTPUT_DIR -> optional merge and Hub upload.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
    # Run as a script, Python puts medtune/ itself first on sys.path, where our modules (config, data, ...)
    # would shadow libraries' of the same name: import the package from the repository root instead.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))

import argparse  # noqa: E402

from medtune.config import Recipe, load_recipe  # noqa: E402  (light: no torch)
from medtune.errors import MedtuneError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="medtune train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="a recipe YAML, e.g. recipes/tissue_classification/qlora.yaml")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. model.name_or_path=tiny")
    return parser.parse_args(argv)


def resume_checkpoint(recipe: Recipe) -> str | None:
    """training.resume_from_checkpoint: a path, or `auto` for the last complete checkpoint in output_dir."""
    from transformers.trainer_utils import get_last_checkpoint

    wanted = recipe.training.get("resume_from_checkpoint")
    if wanted != "auto":
        return wanted
    return get_last_checkpoint(str(recipe.output_dir)) if recipe.output_dir.is_dir() else None


def run(recipe: Recipe) -> str | None:
    """Train, evaluate and export; returns the comparison table on the main process."""

    from accelerate import PartialState
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from medtune import tracking
    from medtune.collator import build_collator
    from medtune.data import load_split
    from medtune.evaluation import comparison_table, evaluate
    from medtune.export import merge_adapter, push_to_hub, write_model_card
    from medtune.model import load_model, load_processor, lora_config, resolve_precision
    from medtune.run_info import write_run_info
    from medtune.tasks import get_task

    import torch

    # On a machine without GPUs, accelerate forms several ranks (gloo) only when told it runs on CPU.
    on_cpu = not torch.cuda.is_available()
    state = PartialState(cpu=on_cpu)
    out_dir, eval_dir = recipe.output_dir, recipe.output_dir / "eval"
    task = get_task(recipe.task.name)
    precision = resolve_precision(recipe.model.precision)
    set_seed(recipe.training.get("seed", 42))
    if state.is_main_process:
        write_run_info(recipe, out_dir, {"precision": precision, "processes": state.num_processes})

    # ---------------------------------------------------------------- data
    train_set, validation_set = load_split(recipe, "train"), load_split(recipe, "validation")
    test_set = load_split(recipe, recipe.eval.split)

    # ---------------------------------------------------------------- model
    processor = load_processor(recipe)
    model = load_model(recipe, precision)

    def run_eval(m, name: str, label: str):
        return evaluate(m, processor, test_set, task, name=name, out_dir=eval_dir, batch_size=recipe.eval.batch_size,
                        max_new_tokens=recipe.eval.max_new_tokens, model_label=label,
                        mode=recipe.eval.mode)

    # ---------------------------------------------------------------- out-of-box evaluation
    results = {}
    if recipe.eval.baseline:
        results["baseline"] = run_eval(model, "baseline", recipe.model.name_or_path)

    # ---------------------------------------------------------------- training
    training = {k: v for k, v in recipe.training.items() if k != "resume_from_checkpoint"}
    args = SFTConfig(**training, bf16=precision == "bf16", assistant_only_loss=True, use_cpu=on_cpu,
                     **tracking.training_arguments(recipe))
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_set,
                         eval_dataset=validation_set if args.eval_strategy != "no" else None,
                         processing_class=processor, data_collator=build_collator(processor, args.max_length),
                         peft_config=lora_config(recipe))
    trainer.train(resume_from_checkpoint=resume_checkpoint(recipe))
    trainer.save_model(str(out_dir))  # the adapter and the processor, by the main process

    # ---------------------------------------------------------------- fine-tuned evaluation
    if recipe.eval.finetuned:
        results["finetuned"] = run_eval(trainer.model, "finetuned", f"{recipe.model.name_or_path} + adapter")

    # ---------------------------------------------------------------- report and export
    if state.is_main_process:
        table = comparison_table(task, results.get("baseline"), results.get("finetuned"))
        (eval_dir).mkdir(parents=True, exist_ok=True)
        (eval_dir / "comparison.md").write_text(table, encoding="utf-8")
        write_model_card(recipe, out_dir)
        tracking.log_evaluation(recipe, {k: v for k, v in results.items() if v}, table, eval_dir, test_set)
        print(f"adapter, processor and model card: {out_dir}")
    state.wait_for_everyone()
    if state.is_main_process and recipe.export.merge:
        print(f"merged model: {merge_adapter(recipe, out_dir)}")
    if state.is_main_process and recipe.export.push:
        print(f"uploaded: {push_to_hub(out_dir, recipe.export.repo_id, recipe.export.private)}")
    return table if state.is_main_process else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)  # refuse a bad recipe before anything heavy loads
        table = run(recipe)
    except MedtuneError as e:
        print(f"medtune: {e}", file=sys.stderr)
        return 2
    if table:
        print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
