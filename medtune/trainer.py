"""The Trainer set-up of a MedGemma run: the training arguments (the recipe's `training` section plus what
medtune owns), TRL's SFTTrainer with the task's own metrics at each validation, the trainer built from the
recipe's data, model and adapter, and what to print and advise around training. `medtune/train.py` runs it;
benchmarks/ build the same trainer, so that what is measured is what users run.
"""
from __future__ import annotations

from trl import SFTTrainer

from medtune.config import Recipe
from medtune.errors import MedtuneError


# ----------------------------------------------------------------------------- arguments
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
    from medtune.model import load_processor
    from medtune.prompts import is_plain
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
    owned = dict(
        bf16=precision == "bf16", use_cpu=on_cpu, **tracking.training_arguments(recipe),
        # the loss on the answer only: the assistant turn of the chat template, or for a pt model's plain form
        # (no turns to mask) the completion, which its collator keeps the loss on
        assistant_only_loss=not is_plain(load_processor(recipe)),
        # Every row reaches our collator as it is stored (TRL would tokenize text-only data itself, and drop the
        # columns a text model's forward does not name): one path for rows with any number of images, or none.
        dataset_kwargs={**(training.pop("dataset_kwargs", None) or {}), "skip_prepare_dataset": True},
        remove_unused_columns=False)
    args = SFTConfig(**{**training, **owned})
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


# ----------------------------------------------------------------------------- the trainer
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
    validating = args.eval_strategy != "no"
    task = task_for(recipe.task)
    patience = recipe.training.get("early_stopping_patience")
    trainer = MedtuneTrainer(
        model=model, args=args, train_dataset=train_set, eval_dataset=validation_set if validating else None,
        processing_class=processor,
        data_collator=build_collator(collator_processor, args.max_length, pixels,
                                     independent_questions=getattr(task, "independent_questions", False)),
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


# ----------------------------------------------------------------------------- what a run prints and advises
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
