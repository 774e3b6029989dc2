"""Fine-tune MedGemma on one task with LoRA/QLoRA, evaluate the base model and the adapter, export.

    accelerate launch medtune/train.py recipes/tissue_classification/qlora.yaml [section.key=value ...]
    medtune train RECIPE [section.key=value ...]           # the same, in this process

Steps: validate the recipe (before anything heavy loads) -> training arguments -> data -> model ->
training (TRL SFTTrainer, loss on the answer only) -> fine-tuned and out-of-box evaluation -> comparison table ->
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

from medtune.checkpoints import newest_complete_checkpoint, resume_checkpoint  # noqa: E402
from medtune.config import Recipe, load_recipe  # noqa: E402  (light: no torch)
from medtune.errors import MedtuneError, RankLocalError, explain_out_of_memory  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="medtune train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="a recipe YAML, e.g. recipes/tissue_classification/qlora.yaml")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. model.name_or_path=tiny")
    return parser.parse_args(argv)


def saves_at_every_validation(training: dict) -> bool:
    """Whether a checkpoint is written at each validation step, which keeping the best one needs."""
    strategy = training.get("save_strategy", "steps")
    if strategy != training.get("eval_strategy"):
        return False
    if strategy != "steps":
        return True
    every = training.get("eval_steps") or training.get("logging_steps", 500)  # the Trainer's fallback
    return training.get("save_steps", 500) % every == 0


def sft_config(recipe: Recipe, precision: str, on_cpu: bool):
    """The trainer's arguments: the recipe's `training` section plus what medtune owns (precision, loss, tracker)."""
    from transformers.integrations import is_deepspeed_zero3_enabled
    from trl import SFTConfig

    from medtune import tracking

    from medtune.config import MEDTUNE_TRAINING_KEYS
    from medtune.tasks import task_for

    training = {k: v for k, v in recipe.training.items()
                if k != "resume_from_checkpoint" and k not in MEDTUNE_TRAINING_KEYS}
    if training.get("eval_strategy", "no") != "no":
        # Validation scores the task's own metric (medtune.evaluation.validation_metrics); the checkpoint kept,
        # evaluated and exported is the best one on its headline metric, unless the recipe says otherwise.
        if "metric_for_best_model" not in training:
            training.update(metric_for_best_model=f"eval_{task_for(recipe.task).table_metrics[0]}",
                            greater_is_better=True)
        training.setdefault("load_best_model_at_end", saves_at_every_validation(training))
    args = SFTConfig(**training, bf16=precision == "bf16", assistant_only_loss=True, use_cpu=on_cpu,
                     **tracking.training_arguments(recipe))
    if is_deepspeed_zero3_enabled() and recipe.quantization.load_in_4bit:
        raise MedtuneError("quantization.load_in_4bit: QLoRA is not run under DeepSpeed ZeRO-3 (4-bit weights "
                           "cannot be partitioned here); a 4-bit MedGemma 4B fits one GPU: use "
                           "accelerate_configs/multi_gpu.yaml or deepspeed_zero2.yaml")
    return args


def checkpointed_every(args) -> int | None:
    """Every how many layers activation checkpointing applies (1: every layer); None when it is off."""
    if not args.activation_checkpointing:
        return None
    return (args.activation_checkpointing_kwargs or {}).get("every_n_layers", 1)


def training_memory_advice(args) -> str:
    """What to change when training runs out of memory, with the values in force."""
    batch, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    advice = (f"halve training.per_device_train_batch_size (now {batch}) and double "
              f"training.gradient_accumulation_steps (now {accumulation}), which keeps the effective batch")
    every = checkpointed_every(args)
    if every is None:
        advice += ", or set training.activation_checkpointing=true"
    elif every > 1:
        advice += (f", or checkpoint every layer (training.activation_checkpointing_kwargs has every_n_layers: "
                   f"{every}; make it 1)")
    else:
        advice += " (training.activation_checkpointing is on already)"
    return (advice + "; in validation, lower training.per_device_eval_batch_size "
                     f"(now {args.per_device_eval_batch_size})")


def project_labelled_positions_only() -> None:
    """TRL's fused LM head (its default loss path) projects through the 262k-row head only the positions that
    carry a label on CUDA/XPU, but every position elsewhere, to keep tile shapes fixed for compilers such as
    Neuron's. A CPU compiles nothing: there too only the labelled positions (the answer: a few tokens of ~300)
    are projected. Same loss, a fraction of the work; it also makes CPU measurements reflect what a GPU runs.
    TRL 1.16 decides this with `trl.trainer.utils._use_triton`; where that name is gone, nothing changes."""
    import trl.trainer.utils as trl_utils

    decide = getattr(trl_utils, "_use_triton", None)
    if decide is None or getattr(decide, "medtune_compact", False):
        return

    def compact(device) -> bool:
        return device.type == "cpu" or decide(device)

    compact.medtune_compact = True
    trl_utils._use_triton = compact


def _medtune_trainer(**kwargs):
    """TRL's SFTTrainer whose validation also scores the task's own metrics."""
    from trl import SFTTrainer

    class MedtuneTrainer(SFTTrainer):
        """At each validation, the task's metrics on the validation split (`validate(model)`) join the loss, as
        `eval_<metric>`: logged to the tracker, seen by early stopping, and what `metric_for_best_model` picks
        the best checkpoint on. The Trainer's documented extension point: `evaluation_loop`'s metrics."""

        def __init__(self, *args, validate=None, selection_fallbacks=(), **kwargs):
            super().__init__(*args, **kwargs)
            self.validate, self.selection_fallbacks = validate, selection_fallbacks

        def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                            metric_key_prefix="eval"):
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                             metric_key_prefix)
            if self.validate is not None and metric_key_prefix == "eval":
                metrics = self.validate(self.model)
                output.metrics.update({f"eval_{k}": v for k, v in metrics.items() if not isinstance(v, str)})
                self._select_on_an_available_metric(metrics)
            return output

        def _select_on_an_available_metric(self, metrics):
            """A headline metric that cannot be computed here (RadGraph without its model) hands the choice of
            the best checkpoint to the next of the task's metrics, once, saying why."""
            wanted = (self.args.metric_for_best_model or "").removeprefix("eval_")
            if wanted in metrics or wanted not in self.selection_fallbacks:
                return
            fallback = next((k for k in self.selection_fallbacks if isinstance(metrics.get(k), float)), None)
            if fallback is not None:
                self.args.metric_for_best_model = f"eval_{fallback}"
                if self.is_world_process_zero():
                    print(f"checkpoints are compared on eval_{fallback}: {wanted} is unavailable "
                          f"({metrics.get(wanted + '_unavailable', 'not computed')})")

    return MedtuneTrainer(**kwargs)


def build_trainer(recipe: Recipe, args, precision: str):
    """(SFTTrainer, processor) for the recipe: its data, model, LoRA adapter and answer-only collator.
    Shared with benchmarks/, so that what is measured is what users run."""
    from transformers import EarlyStoppingCallback

    from medtune.collator import build_collator
    from medtune.data import load_split
    from medtune.evaluation import validation_metrics
    from medtune.model import (compile_decoder_layers, keep_frozen_vision_tower_out_of_autograd, load_model,
                               load_processor, lora_config, vision_tower)
    from medtune.pixels import model_ready_inputs
    from medtune.prompts import is_plain
    from medtune.rows import check_model_takes
    from medtune.tasks import task_for

    project_labelled_positions_only()
    train_set, validation_set = load_split(recipe, "train"), load_split(recipe, "validation")
    processor = load_processor(recipe)
    check_model_takes(processor, train_set, recipe.model.name_or_path)
    model = load_model(recipe, precision)
    keep_frozen_vision_tower_out_of_autograd(model)
    if recipe.model.compile_decoder_layers:
        compile_decoder_layers(model)
    collator_processor, pixels = model_ready_inputs(model, processor)  # the processor itself is saved, unchanged
    # a pt model's plain form has no assistant turn to mask: its collator keeps the loss on the completion
    args.assistant_only_loss = not is_plain(processor)
    # Every row reaches our collator as it is stored (TRL would tokenize text-only data itself, and drop the
    # columns a text model's forward does not name): one path for rows with any number of images, or none.
    args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    args.remove_unused_columns = False
    validating = args.eval_strategy != "no"
    task = task_for(recipe.task)
    patience = recipe.training.get("early_stopping_patience")
    trainer = _medtune_trainer(
        model=model, args=args, train_dataset=train_set, eval_dataset=validation_set if validating else None,
        processing_class=processor, data_collator=build_collator(collator_processor, args.max_length, pixels),
        peft_config=lora_config(recipe, text_only=vision_tower(model) is None),
        callbacks=[EarlyStoppingCallback(early_stopping_patience=patience)] if patience else None,
        validate=(lambda m: validation_metrics(m, processor, validation_set, task, recipe.eval)) if validating
        else None,
        selection_fallbacks=task.table_metrics)
    # TRL 1.16 edits `gradient_checkpointing_kwargs` (it forces reentrant checkpointing under ZeRO-3, which PEFT
    # needs there), but transformers 5.24 made that a deprecated alias of `activation_checkpointing_kwargs`, the
    # one its Trainer reads, and TRL may have put a new dict under the old name: carry TRL's edit over.
    args.activation_checkpointing_kwargs = args.gradient_checkpointing_kwargs
    return trainer, processor


def describe_training(args, recipe: Recipe, processes: int) -> str:
    """One line with the speed settings in force, as the Trainer will apply them."""
    batch, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    line = (f"training: micro-batch {batch} x accumulation {accumulation} x {processes} process(es) = effective "
            f"batch {batch * accumulation * processes}; attention {recipe.model.attn_implementation} (vision tower "
            f"{recipe.model.vision_attn_implementation}); activation checkpointing ")
    every = checkpointed_every(args)
    if every is None:
        line += "off"
    else:
        reentrant = ("reentrant" if (args.activation_checkpointing_kwargs or {}).get("use_reentrant")
                     else "non-reentrant")
        line += f"on, {reentrant}, {'every layer' if every == 1 else f'every {every} layers'}"
    if args.eval_strategy != "no":
        when = f"every {args.eval_steps} steps" if args.eval_strategy == "steps" else "each epoch"
        kept = f", the best on {args.metric_for_best_model} kept" if args.load_best_model_at_end else ""
        line += f"; validation {when}{kept}"
    return line


def report_results(recipe: Recipe, task, results: dict[str, dict], test_set) -> str:
    """eval/comparison.md (out-of-box against fine-tuned) and the tracker's copy of the evaluation; the table."""
    from medtune import tracking
    from medtune.evaluation import comparison_rows, comparison_table, unavailable_notes

    eval_dir = recipe.output_dir / "eval"
    rows = comparison_rows(task, results.get("baseline"), results.get("finetuned"))
    table = comparison_table(rows, unavailable_notes(task, *results.values()))
    eval_dir.mkdir(parents=True, exist_ok=True)
    (eval_dir / "comparison.md").write_text(table, encoding="utf-8")
    tracking.log_evaluation(recipe, results, rows, eval_dir, test_set)
    return table


def run(recipe: Recipe) -> str | None:
    """Train, evaluate and export; returns the comparison table on the main process."""
    import torch
    from accelerate import PartialState
    from transformers import set_seed

    from medtune.callbacks import NonFiniteLossGuard
    from medtune.data import load_split
    from medtune.evaluation import evaluate
    from medtune.export import export
    from medtune.model import resolve_precision
    from medtune.run_info import describe_hardware, schedule, update_run_info, write_run_info
    from medtune.tasks import task_for

    # On a machine without GPUs, accelerate forms several ranks (gloo) only when told it runs on CPU.
    on_cpu = not torch.cuda.is_available()
    state = PartialState(cpu=on_cpu)
    out_dir, eval_dir = recipe.output_dir, recipe.output_dir / "eval"
    task = task_for(recipe.task)
    precision = resolve_precision(recipe.model.precision)
    set_seed(recipe.training.get("seed", 42))

    # ---------------------------------------------------------------- training arguments
    # Before the model: under DeepSpeed ZeRO-3 they tell from_pretrained to partition the weights as they load.
    args = sft_config(recipe, precision, on_cpu)
    if state.is_main_process:
        plugin = getattr(args, "deepspeed_plugin", None)
        write_run_info(recipe, out_dir, {"precision": precision, "processes": state.num_processes,
                                         "hardware": describe_hardware(state.num_processes),
                                         "schedule": schedule(args),
                                         "distributed": str(state.distributed_type),
                                         "deepspeed_zero_stage": plugin.zero_stage if plugin else None})

    # ---------------------------------------------------------------- data, model and training
    test_set = load_split(recipe, recipe.eval.split)
    trainer, processor = build_trainer(recipe, args, precision)
    guard = NonFiniteLossGuard()
    trainer.add_callback(guard)
    checkpoint = resume_checkpoint(recipe)
    if state.is_main_process:
        print(describe_training(args, recipe, state.num_processes))
        if checkpoint:
            print(f"resuming from {checkpoint}")
    with explain_out_of_memory("training", training_memory_advice(args)):
        trained = trainer.train(resume_from_checkpoint=checkpoint)
    if guard.bad_step is not None:
        last_good = newest_complete_checkpoint(out_dir)
        raise MedtuneError(f"training stopped at step {guard.bad_step}: the loss is not finite (nan/inf). Lower "
                           f"training.learning_rate or raise training.warmup_steps; last good checkpoint: "
                           f"{last_good or 'none yet'} (resume with training.resume_from_checkpoint=auto)")
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
    if recipe.eval.baseline:
        with model.disable_adapter():
            results["baseline"] = run_eval("baseline", recipe.model.name_or_path)

    # ---------------------------------------------------------------- report and export (main process)
    table = None
    if state.is_main_process:
        table = report_results(recipe, task, results, test_set)
        print(f"adapter and processor: {out_dir}")
        export(out_dir, merge=recipe.export.merge, push=recipe.export.push, repo_id=recipe.export.repo_id,
               private=recipe.export.private)
    state.wait_for_everyone()
    return table


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)  # refuse a bad recipe before anything heavy loads
        if recipe.encoder.method:  # MedSigLIP: zero-shot or a probe, no language model to fine-tune
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
