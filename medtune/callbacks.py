"""Trainer callbacks medtune adds to TRL's defaults."""
from __future__ import annotations

from transformers import TrainerCallback


class NonFiniteLossGuard(TrainerCallback):
    """Stops training at the first step whose gradients are not finite (a nan/inf loss), before the optimizer
    applies them and before anything is saved, so the last checkpoint on disk is the last good one.

    The logged loss cannot tell: transformers replaces a nan/inf loss by the running average in its logs
    (`logging_nan_inf_filter`). A non-finite loss always gives non-finite gradients, which are checked every
    step (the adapter's parameters only: cheap). Under DeepSpeed the gradients live in DeepSpeed's
    partitions, not in `.grad`, and this guard sees nothing.
    """

    def __init__(self):
        self.bad_step: int | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        import torch

        trainable = [p for p in model.parameters() if p.grad is not None]
        if all(bool(torch.isfinite(p.grad).all()) for p in trainable):
            return
        self.bad_step = state.global_step + 1
        for p in trainable:
            p.grad = None  # the optimizer skips parameters without gradients: nothing reaches the weights...
        control.should_training_stop = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.bad_step is not None:
            control.should_save = False  # ...and nothing of it is written
            control.should_training_stop = True
