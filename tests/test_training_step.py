"""One real training step of the shipped LoRA recipe on the tiny model (TRL's SFTTrainer as `medtune train`
builds it, activation checkpointing on): the frozen vision tower stays out of autograd without changing the
loss or a gradient; model-ready uint8 pixels train like the image processor's values; the vision side still
trains when the recipe asks; the language model's attention implementation does not change the loss; running
out of memory ends with the keys that fix it."""
from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback, set_seed

from medtune.config import load_recipe
from medtune.errors import MedtuneError, explain_out_of_memory
from medtune.model import VISION_TOWER
from medtune.trainer import build_trainer, sft_config, training_memory_advice
from tests.conftest import REPO

LORA = REPO / "recipes" / "tissue_classification" / "lora.yaml"


def _trainer(small_crc, tmp_path, *overrides):
    set_seed(0)
    recipe = load_recipe(LORA, [
        "model.name_or_path=tiny", f"data.path={small_crc / 'data'}", f"training.output_dir={tmp_path}",
        "training.max_steps=1", "training.warmup_steps=0", "training.logging_steps=1", "training.eval_strategy=no",
        "training.save_strategy=no", "training.dataloader_num_workers=0", "tracking.backend=none", *overrides])
    args = sft_config(recipe, "fp32", on_cpu=True)
    assert args.activation_checkpointing  # the recipe's, as users run it
    return build_trainer(recipe, args, "fp32")[0]


class _Step(TrainerCallback):
    """What one optimizer step saw: the loss, the trainable gradients (before the optimizer applies them) and
    the trainable weights before and after it."""

    def __init__(self, model):
        self.before = self._trainable(model)
        self.losses, self.grads, self.after = [], {}, {}

    @staticmethod
    def _trainable(model):
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.after = self._trainable(model)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])

    def changed(self, fragment: str) -> bool:
        """Whether a trainable weight whose name holds `fragment` moved in the step."""
        return any(not torch.equal(w, self.before[n]) for n, w in self.after.items() if fragment in n)


def _train_one_step(trainer):
    """Runs the step; returns (what it saw, the grad_fn of each vision tower output)."""
    tower = trainer.model.get_base_model().get_submodule(VISION_TOWER)
    grad_fns = []
    tower.register_forward_hook(lambda module, inputs, output: grad_fns.append(output.last_hidden_state.grad_fn))
    step = _Step(trainer.model)
    trainer.add_callback(step)
    trainer.train()
    return step, grad_fns


def test_the_frozen_tower_leaves_autograd_and_nothing_else_changes(small_crc, tmp_path):
    step, grad_fns = _train_one_step(_trainer(small_crc, tmp_path))
    assert grad_fns and all(fn is None for fn in grad_fns)
    assert step.grads and all("lora_" in n and "language_model" in n for n in step.grads)
    assert step.changed("lora_B")

    # The same step with the tower in autograd, as TRL + PEFT's input-gradient hooks leave it: without medtune's
    # routing of the tower's forward (an attribute on the instance) the class's forward runs.
    plain = _trainer(small_crc, tmp_path)
    del plain.model.get_base_model().get_submodule(VISION_TOWER).forward
    plain_step, plain_grad_fns = _train_one_step(plain)
    assert plain_grad_fns and all(fn is not None for fn in plain_grad_fns)  # what the change removes
    assert step.losses == plain_step.losses
    assert step.grads.keys() == plain_step.grads.keys()
    for name, grad in step.grads.items():
        torch.testing.assert_close(grad, plain_step.grads[name], rtol=0, atol=0)


def test_model_ready_pixels_train_like_the_image_processors_values(small_crc, tmp_path):
    """The recipe's collator hands the model uint8 pixels that its tower normalises (medtune.pixels); the same
    step fed the image processor's float values sees the same loss and gradients."""
    from medtune.collator import build_collator

    ready = _trainer(small_crc, tmp_path)
    assert ready.data_collator.pixels is not None
    step, _ = _train_one_step(ready)
    plain = _trainer(small_crc, tmp_path)
    plain.data_collator = build_collator(plain.processing_class, plain.args.max_length)  # the processor's path
    plain_step, _ = _train_one_step(plain)
    assert step.losses == pytest.approx(plain_step.losses, rel=1e-6)
    for name, grad in step.grads.items():
        torch.testing.assert_close(grad, plain_step.grads[name], rtol=1e-5, atol=1e-7)


def test_validation_keeps_the_best_step_on_the_task_metric_and_can_stop_early(small_crc, tmp_path):
    """With validation on, the recipe's trainer picks checkpoints on the task's headline metric; early stopping
    is there when asked; validation without a checkpoint at each step cannot keep the best and does not try."""
    from transformers import EarlyStoppingCallback

    validating = ["training.eval_strategy=steps", "training.eval_steps=2", "training.save_strategy=steps",
                  "training.save_steps=4"]
    trainer = _trainer(small_crc, tmp_path, *validating, "training.early_stopping_patience=3")
    assert trainer.args.load_best_model_at_end and trainer.args.greater_is_better
    assert trainer.args.metric_for_best_model == "eval_weighted_f1"
    (stopper,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback)]
    assert stopper.early_stopping_patience == 3
    odd = _trainer(small_crc, tmp_path, *validating[:3], "training.save_steps=3")
    assert not odd.args.load_best_model_at_end


def test_lora_on_the_tower_keeps_it_in_autograd_and_trains_it(small_crc, tmp_path):
    step, grad_fns = _train_one_step(_trainer(small_crc, tmp_path, "lora.adapt_vision_tower=true"))
    assert grad_fns and all(fn is not None for fn in grad_fns)
    # B starts at zero, so in the first step only B gets a gradient (A's is B^T times the upstream gradient)
    assert any("vision_tower" in n and "lora_B" in n and g.abs().sum() > 0 for n, g in step.grads.items())
    assert step.changed("vision_tower")


def test_the_projector_trains_on_request_with_the_tower_still_out_of_autograd(small_crc, tmp_path):
    step, grad_fns = _train_one_step(_trainer(small_crc, tmp_path, "lora.train_projector=true"))
    assert grad_fns and all(fn is None for fn in grad_fns)
    assert step.changed("multi_modal_projector")


def test_sdpa_and_eager_attention_give_the_language_model_the_same_loss(small_crc, tmp_path):
    """The recipes' SDPA against Gemma 3's eager reference, on right-padded batches longer than the tiny model's
    sliding window (32 tokens), so that padding and the sliding mask are both exercised."""
    sdpa, _ = _train_one_step(_trainer(small_crc, tmp_path, "model.attn_implementation=sdpa"))
    eager, _ = _train_one_step(_trainer(small_crc, tmp_path, "model.attn_implementation=eager"))
    assert sdpa.losses == pytest.approx(eager.losses, rel=1e-5)
    for name, grad in sdpa.grads.items():
        torch.testing.assert_close(grad, eager.grads[name], rtol=1e-4, atol=1e-6)


class _AllocateTooMuch(TrainerCallback):
    """A real allocation that no machine can satisfy (1 PiB), in the middle of a training step."""

    def on_step_begin(self, args, state, control, **kwargs):
        torch.empty(2**50, dtype=torch.uint8)


def test_running_out_of_memory_names_the_keys_that_fix_it(small_crc, tmp_path):
    trainer = _trainer(small_crc, tmp_path)
    trainer.add_callback(_AllocateTooMuch())
    with pytest.raises(MedtuneError) as error, explain_out_of_memory("training", training_memory_advice(trainer.args)):
        trainer.train()
    message = str(error.value)
    assert message.startswith("out of memory while training: ") and "\n" not in message
    assert "training.per_device_train_batch_size (now 16)" in message
    assert "training.gradient_accumulation_steps (now 1)" in message
    assert "training.activation_checkpointing is on already" in message
