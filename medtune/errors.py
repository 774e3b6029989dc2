"""Errors a user can fix: printed as one line (no traceback), exit code 2."""
from __future__ import annotations

import contextlib


class MedtuneError(Exception):
    """A problem with the user's input or environment, with the fix in its message."""


class RecipeError(MedtuneError):
    """A recipe problem: `key` is the dotted key at fault, the message says what to do."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


class RankLocalError(MedtuneError):
    """A problem that one rank of several may meet alone (running out of memory): every rank that meets it
    says so, where a recipe error is said once."""


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's out-of-memory error, or the CPU allocator's (a plain RuntimeError)."""
    import torch

    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(error))


@contextlib.contextmanager
def explain_out_of_memory(doing: str, advice: str):
    """Turn running out of memory while `doing` into one line with `advice`: the recipe keys that fix it."""
    try:
        yield
    except RuntimeError as e:
        if not is_out_of_memory(e):
            raise
        raise RankLocalError(f"out of memory while {doing}: {advice}") from None
