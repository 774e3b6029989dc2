"""The Trainer set-up of a GRPO run (`training.method: grpo`), beside medtune/trainer.py's SFT one: TRL's
GRPOTrainer on the recipe's data, model and adapter, rewarded by the task's own metric (medtune/rewards.py).

    accelerate launch medtune/train.py recipes/tissue_classification/grpo.yaml model.adapter=OUTPUT_DIR_OF_SFT

A prompt is what evaluation asks of a row (its protocol's conversation, its images); TRL samples
`grpo.num_generations` completions of it in one `generate` call, scores each with the rewards, and pushes the policy
towards the completions that scored above their group's mean. In the sampling pass the group's copies of an image
sit next to each other, so the vision tower encodes each image once for the whole group (medtune.model's
`encode_each_distinct_image_once`). TRL 1.16 then shuffles the generation batch before cutting it into
micro-batches, so the log-probability passes encode a row's image once per completion (a loss independent of the
rows' order would let each micro-batch be sorted by prompt again: not done yet).

From an SFT run (`model.adapter`), its adapter is trained on, not merged into the base first:
- under QLoRA the base is 4-bit, and merging into quantized weights would requantize them (lossy) or need the
  full-precision weights in memory; continuing the adapter keeps the base exactly as the SFT run saw it;
- the result is one adapter of the same shape as the SFT one (the card, `medtune export`, `--merge` and plain PEFT
  load it unchanged), and the out-of-box model stays one switch away (the adapter disabled) for evaluation;
- with `grpo.beta > 0` TRL keeps a frozen copy of the starting adapter as the reference policy: the KL term then
  holds GRPO near the SFT model, not near the base model.
The adapter's own LoRA shape (rank, targets) is kept; the recipe's lora section applies to a new adapter only.
"""
from __future__ import annotations

from medtune.config import GRPO_KEYS, MEDTUNE_TRAINING_KEYS, Recipe
from medtune.errors import MedtuneError


# ----------------------------------------------------------------------------- arguments
def grpo_config(recipe: Recipe, precision: str, on_cpu: bool):
    """TRL's GRPOConfig: the recipe's `training` and `grpo` sections plus what medtune owns (precision, tracker,
    what sampled completions the tracker may see). TRL's own consistency checks (a generation batch of whole
    groups, ...) become one-line errors."""
    from trl import GRPOConfig

    from medtune import tracking
    from medtune.tasks import task_for
    from medtune.trainer import saves_at_every_validation

    training = {k: v for k, v in recipe.training.items()
                if k != "resume_from_checkpoint" and k not in MEDTUNE_TRAINING_KEYS}
    own = {k: v for k, v in recipe.grpo.items() if k not in GRPO_KEYS}
    if training.get("eval_strategy", "no") != "no":
        # TRL's validation samples and scores completions of the validation split: the best checkpoint is the one
        # whose completions earned the most
        training.setdefault("metric_for_best_model", "eval_reward")
        training.setdefault("greater_is_better", True)
        training.setdefault("load_best_model_at_end", saves_at_every_validation(training))
    samples, images = tracking.sampled_completions(recipe, task_for(recipe.task))
    owned = dict(bf16=precision == "bf16", use_cpu=on_cpu, **tracking.training_arguments(recipe),
                 # the reward functions read the dataset's columns (label, answer, options, ...)
                 remove_unused_columns=False, log_completions=samples, log_multimodal=images)
    try:
        return GRPOConfig(**{**training, **own, **owned})
    except ValueError as e:
        raise MedtuneError(f"grpo: {' '.join(str(e).split())}") from None


# ----------------------------------------------------------------------------- data
def grpo_dataset(task, dataset):
    """The split as TRL's GRPOTrainer reads it: a `prompt` column (the conversation evaluation asks of each row,
    without its answer), the row's images where they were (`image` or `images`), and the other columns, which the
    rewards read (the reference: `label`, `answer`, ...). Read from the rows' text alone: no image is decoded."""
    from medtune.inference import row_conversations
    from medtune.rows import images_per_row, without_images

    if "images" in dataset.column_names:  # from the column's list lengths, not its (decoded) images
        import pyarrow.compute as pc

        counts = [n or 0 for n in pc.list_value_length(dataset.data.column("images")).to_pylist()]
    else:
        counts = [images_per_row(dataset)] * len(dataset)
    prompts = [row_conversations(task, {**row, "image": None, "images": [True] * n})[0]
               for row, n in zip(without_images(dataset), counts)]
    return dataset.add_column("prompt", prompts)


# ----------------------------------------------------------------------------- the trainer
def _trainer_class():
    from trl import GRPOTrainer

    class MedtuneGRPOTrainer(GRPOTrainer):
        """TRL's GRPOTrainer; where sampled completions may go to the tracker and it is tensorboard (which TRL's
        completions table skips), the latest completions, their rewards and advantages go there as a text table
        (wandb gets TRL's own table, with images when tracking.log_images allows)."""

        def log(self, logs, start_time=None):
            super().log(logs, start_time)
            if self.log_completions and self.accelerator.is_main_process and self.model.training:
                _completions_to_tensorboard(self)

    return MedtuneGRPOTrainer


def _completions_to_tensorboard(trainer, rows: int = 16) -> None:
    from transformers.integrations import TensorBoardCallback

    from medtune.rewards import completion_text, prompt_question

    board = next((c for c in trainer.callback_handler.callbacks if isinstance(c, TensorBoardCallback)), None)
    writer = getattr(board, "tb_writer", None)
    if writer is None or not trainer._logs["completion"]:
        return
    names = list(trainer._logs["rewards"])
    lines = ["| question | completion | " + " | ".join(names) + " | advantage |",
             "|---" * (3 + len(names)) + "|"]
    logged = list(zip(trainer._logs["prompt"], trainer._logs["completion"], trainer._logs["advantages"],
                      *(trainer._logs["rewards"][n] for n in names)))
    for prompt, completion, advantage, *rewards in logged[-rows:]:
        cells = [prompt_question(prompt), repr(completion_text(None, None, completion)),
                 *(f"{r:.3f}" for r in rewards), f"{advantage:.3f}"]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    writer.add_text("train/completions", "\n".join(lines), trainer.state.global_step)


def build_grpo_trainer(recipe: Recipe, args, precision: str):
    """(GRPOTrainer, processor) for the recipe: its data as prompts, its model with a new LoRA adapter or the SFT
    run's (model.adapter, trained on), and the task's rewards."""
    from medtune.data import load_split
    from medtune.model import keep_frozen_vision_tower_out_of_autograd, load_model, load_processor, lora_config, \
        vision_tower
    from medtune.rewards import build_rewards
    from medtune.rows import check_model_takes, tokenizer_of
    from medtune.tasks import task_for

    task = task_for(recipe.task)
    train_set = load_split(recipe, "train")
    processor = load_processor(recipe)
    check_model_takes(processor, train_set, recipe.model.name_or_path)
    tokenizer = tokenizer_of(processor)
    saved = {"padding_side": tokenizer.padding_side, "add_bos_token": tokenizer.add_bos_token}
    # TRL left-pads the prompts itself and reads the processor's token types beside them: both must pad left. And TRL
    # re-tokenizes the templated prompt (which starts with <bos>) with the processor's defaults for the image inputs
    # and token types: a second <bos> (DESIGN.md's trap) would shift Gemma 3's image token types by one against TRL's
    # prompt ids. Both are put back before the processor is saved with the adapter (finish_grpo).
    tokenizer.padding_side, tokenizer.add_bos_token = "left", False
    validating = args.eval_strategy != "no"
    rewards, weights = build_rewards(task, tokenizer, recipe.grpo)  # the user's own imported before the model loads
    model = load_model(recipe, precision)
    keep_frozen_vision_tower_out_of_autograd(model)
    peft_config = None
    if recipe.model.adapter:  # continue the SFT adapter (the module docstring says why not merge)
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, recipe.model.adapter, is_trainable=True)
    else:
        peft_config = lora_config(recipe, text_only=vision_tower(model) is None)
    args.reward_weights = weights
    trainer = _trainer_class()(
        model=model, reward_funcs=rewards, args=args, train_dataset=grpo_dataset(task, train_set),
        eval_dataset=grpo_dataset(task, load_split(recipe, "validation")) if validating else None,
        processing_class=processor, peft_config=peft_config)
    # as medtune.trainer.build_trainer: transformers 5.24 reads activation_checkpointing_kwargs, TRL edits the old name
    args.activation_checkpointing_kwargs = args.gradient_checkpointing_kwargs
    trainer.medtune_tokenizer_settings = saved
    return trainer, processor


def finish_grpo(trainer) -> None:
    """Before the adapter and processor are saved: the tokenizer's own settings back, and, with grpo.beta > 0 from
    an SFT adapter, TRL's frozen copy of it (`ref`, the reference policy) dropped: not part of the result."""
    for key, value in getattr(trainer, "medtune_tokenizer_settings", {}).items():
        setattr(tokenizer_of_trainer(trainer), key, value)
    if "ref" in getattr(trainer.model, "peft_config", {}):
        trainer.model.delete_adapter("ref")


def tokenizer_of_trainer(trainer):
    from medtune.rows import tokenizer_of

    return tokenizer_of(trainer.processing_class)


def describe_grpo(recipe: Recipe, args) -> str:
    """One line with what GRPO samples and rewards, as the trainer applies it."""
    from medtune.rewards import describe_rewards
    from medtune.tasks import task_for

    rewards = describe_rewards(task_for(recipe.task), recipe.grpo)
    start = f"the SFT adapter {recipe.model.adapter}" if recipe.model.adapter else "a new adapter on the base model"
    return (f"GRPO from {start}: {args.num_generations} completions a prompt (temperature {args.temperature:g}, at "
            f"most {args.max_completion_length} tokens), {args.generation_batch_size} a generation batch; reward "
            f"{rewards}; loss {args.loss_type}, beta {args.beta:g}, epsilon {args.epsilon:g}")
