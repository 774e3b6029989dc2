"""Figures the tasks write beside their metrics: matplotlib without a display, saved one way."""
from __future__ import annotations

from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: training machines have no display
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    """Saved with the canvas cut to what is drawn (plus a small pad): a long title or a class name wider than
    the axes grows the image instead of running off its edge, and no empty margin is left beside the axes."""
    fig.savefig(path, dpi=100, bbox_inches="tight", pad_inches=0.1)
    pyplot().close(fig)
    return path
