"""Fine-tune MedGemma on one task with LoRA/QLoRA, evaluate the base model and the adapter, export.

    accelerate launch medtune/train.py recipes/tissue_classification/qlora.yaml [section.key=value ...]
    medtune train RECIPE [section.key=value ...]           # the same, in this process

Steps: validate the recipe (before anything heavy loads) -> training arguments -> data -> model ->
training (TRL SFTTrainer, loss on the answer only; or with `training.method: grpo` TRL's GRPOTrainer, rewarded by
the task's own metric: medtune/grpo.py) -> fine-tuned, SFT-adapter (GRPO from one) and out-of-box evaluation ->
comparison table -> adapter + processor + model card in OUTPUT_DIR -> optional merge and Hub upload.
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

from medtune.checkpoints import newest_complete_checkpoint, resume_checkpoint  # noqa: E402
from medtune.config import Recipe, load_recipe  # noqa: E402  (light: no torch)
from medtune.errors import MedtuneError, RankLocalError, explain_out_of_memory  # noqa: E402
from medtune.medsiglip import is_encoder_recipe  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="medtune train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="a recipe YAML, e.g. recipes/tissue_classification/qlora.yaml")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. model.name_or_path=tiny")
    return parser.parse_args(argv)


def run(recipe: Recipe) -> str | None:
    """Train, evaluate and export; returns the comparison table on the main process."""
    import torch
    from accelerate import PartialState
    from transformers import set_seed

    from medtune import run_folder
    from medtune.callbacks import NonFiniteLossGuard
    from medtune.comparison import report_results
    from medtune.data import load_split
    from medtune.evaluation import evaluate
    from medtune.export import export
    from medtune.model import resolve_precision
    from medtune.run_info import describe_hardware, schedule, update_run_info, write_run_info
    from medtune.tasks import task_for
    from medtune.trainer import build_trainer, describe_training, sft_config, training_memory_advice

    grpo = recipe.method == "grpo"
    if grpo:
        from medtune.grpo import build_grpo_trainer, describe_grpo, finish_grpo, grpo_config

    # On a machine without GPUs, accelerate forms several ranks (gloo) only when told it runs on CPU.
    on_cpu = not torch.cuda.is_available()
    state = PartialState(cpu=on_cpu)
    out_dir, eval_dir = recipe.output_dir, run_folder.eval_dir(recipe.output_dir)
    task = task_for(recipe.task)
    precision = resolve_precision(recipe.model.precision)
    set_seed(recipe.training.get("seed", 42))

    # ---------------------------------------------------------------- training arguments
    # Before the model: under DeepSpeed ZeRO-3 they tell from_pretrained to partition the weights as they load.
    args = (grpo_config if grpo else sft_config)(recipe, precision, on_cpu)
    if state.is_main_process:
        plugin = getattr(args, "deepspeed_plugin", None)
        write_run_info(recipe, out_dir, {"precision": precision, "processes": state.num_processes,
                                         "hardware": describe_hardware(state.num_processes),
                                         "schedule": schedule(args),
                                         "distributed": str(state.distributed_type),
                                         "deepspeed_zero_stage": plugin.zero_stage if plugin else None})

    # ---------------------------------------------------------------- data, model and training
    test_set = load_split(recipe, recipe.eval.split)
    trainer, processor = (build_grpo_trainer if grpo else build_trainer)(recipe, args, precision)
    guard = NonFiniteLossGuard()
    trainer.add_callback(guard)
    checkpoint = resume_checkpoint(recipe)
    if state.is_main_process:
        print(describe_training(args, recipe, state.num_processes))
        if grpo:
            print(describe_grpo(recipe, args))
        if checkpoint:
            print(f"resuming from {checkpoint}")
    with explain_out_of_memory("training", training_memory_advice(args)):
        trained = trainer.train(resume_from_checkpoint=checkpoint)
    if guard.bad_step is not None:
        last_good = newest_complete_checkpoint(out_dir)
        raise MedtuneError(f"training stopped at step {guard.bad_step}: the loss is not finite (nan/inf). Lower "
                           f"training.learning_rate or raise training.warmup_steps; last good checkpoint: "
                           f"{last_good or 'none yet'} (resume with training.resume_from_checkpoint=auto)")
    if grpo:
        finish_grpo(trainer)
    trainer.save_model(str(out_dir))  # the adapter and the processor, complete even under ZeRO-3, written once
    if state.is_main_process:
        facts = {"train_seconds": round(trained.metrics.get("train_runtime", 0.0), 1)}
        if args.load_best_model_at_end and trainer.state.best_global_step:  # what the Trainer loaded back
            facts["best_checkpoint"] = {"step": trainer.state.best_global_step, "last_step": trainer.state.global_step,
                                        "metric": args.metric_for_best_model, "value": trainer.state.best_metric}
        update_run_info(out_dir, facts)

    # ---------------------------------------------------------------- evaluation: fine-tuned and out-of-box
    # Both after training, on the same model: the base model is the adapter switched off. So every launch
    # (one process, DDP, ZeRO-2, ZeRO-3 with partitioned weights) evaluates the same way, with all ranks.
    model, results = trainer.model, {}

    def run_eval(name: str, label: str):
        return evaluate(model, processor, test_set, task, recipe.eval, name=name, out_dir=eval_dir,
                        model_label=label)

    if recipe.eval.finetuned:
        results["finetuned"] = run_eval("finetuned", f"{recipe.model.name_or_path} + adapter")
    if grpo and recipe.model.adapter and recipe.eval.finetuned:
        # the SFT adapter GRPO started from, beside it: loaded next to the trained one and switched to, then back
        model.load_adapter(recipe.model.adapter, adapter_name="sft")
        model.set_adapter("sft")
        results["sft"] = run_eval("sft", f"{recipe.model.name_or_path} + SFT adapter")
        model.set_adapter("default")
        model.delete_adapter("sft")
    if recipe.eval.baseline:
        with model.disable_adapter():
            results["baseline"] = run_eval("baseline", recipe.model.name_or_path)
    try:
        benchmarks = run_benchmarks(recipe, model, processor)
    except MedtuneError as e:  # the task's own evaluation and the export still happen
        benchmarks = None
        if state.is_main_process:
            print(f"medtune: eval.benchmarks not run: {e}", file=sys.stderr)

    # ---------------------------------------------------------------- report and export (main process)
    table = None
    if state.is_main_process:
        table = report_results(recipe, task, results, test_set, benchmarks)
        print(f"adapter and processor: {out_dir}")
        export(out_dir, merge=recipe.export.merge, push=recipe.export.push, repo_id=recipe.export.repo_id,
               private=recipe.export.private)
    state.wait_for_everyone()
    return table


def run_benchmarks(recipe: Recipe, model, processor) -> dict | None:
    """`eval.benchmarks`: the suite on the base model (the adapter off) and the fine-tuned one, each benchmark with
    its protocol, into OUTPUT_DIR/bench/ (medtune/bench.py); the results on the main process."""
    import dataclasses
    from contextlib import nullcontext
    from pathlib import Path

    from medtune.suite import suite_of

    suite = suite_of(recipe.eval.benchmarks)
    if suite is None:
        return None
    from medtune.bench import Variant, adapter_fingerprint, run_suite

    # the fine-tuned variant named by the adapter just saved: a run retrained into the same folder is measured anew
    variants = [Variant("baseline", model.disable_adapter, is_base=True),
                Variant("finetuned", nullcontext, fingerprint=adapter_fingerprint(Path(recipe.output_dir)))]
    # the task's answer budget (eval.max_new_tokens: 16 for a pneumothorax label) is not a benchmark's: each keeps
    # its protocol's
    settings = dataclasses.replace(recipe.eval, max_new_tokens=None)
    return run_suite(model, processor, suite, Path(recipe.eval.benchmark_data), recipe.output_dir, variants,
                     recipe.model.name_or_path, settings)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)  # refuse a bad recipe before anything heavy loads
        if is_encoder_recipe(recipe):  # MedSigLIP: zero-shot, a probe or LoRA on the tower (medtune/encoder.py)
            from medtune.encoder import run as run_encoder

            table = run_encoder(recipe)
        else:
            table = run(recipe)
    except MedtuneError as e:
        # every rank meets a recipe's problem: say it once; running out of memory may be one rank's alone
        if os.environ.get("RANK", "0") == "0" or isinstance(e, RankLocalError):
            print(f"medtune: {e}", file=sys.stderr)
        return 2
    if table:
        print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
