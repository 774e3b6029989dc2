"""Chest X-ray report generation (MIMIC-CXR): the model sees a frontal image (and, prepared `--with-prior`, the
patient's previous film, as radiologists compare) and the report's INDICATION
and writes FINDINGS and IMPRESSION. The paper's figure is RadGraph F1 (29.5 out-of-box, 30.3 fine-tuned).

Metrics: RadGraph F1 (the optional `radgraph` package, partial reward, as the RRG leaderboards use it),
ROUGE-L (Google's `rouge-score`) and BLEU-4 (`sacrebleu`), all offline but RadGraph's first model download.
A metric that cannot be computed is None with `<metric>_unavailable` saying why; evaluation still completes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from medtune.tasks import MEDTUNE_PROTOCOL
from medtune.tasks._text_metrics import MetricUnavailable, TextAnswers, add_metrics, bleu4, rouge_l, rouge_l_histogram

RADGRAPH_MODEL, RADGRAPH_REWARD = "radgraph-xl", "partial"  # the package's default model; the leaderboards' reward
_SECTION_LABEL = re.compile(r"\b(?:FINDINGS|IMPRESSION):\s*")


@dataclass(frozen=True)
class ReportGenerationTask(TextAnswers):
    name: str = "report_generation"
    dataset: str = "mimic_cxr"  # the data_prep reader that produces this task's data
    credentialed: bool = True  # PhysioNet data-use agreement: images and report text stay out of trackers
    # findings + impression run about 60-120 tokens, a few past 250; the budget bounds a model that never stops
    max_new_tokens: int = 300
    table_metrics: tuple[str, ...] = ("radgraph_f1", "rouge_l", "bleu4", "empty")  # paper's first
    example_metrics: tuple[str, ...] = ("radgraph_f1", "rouge_l", "bleu4")  # saved with each prediction
    kind: str = "generation"
    protocol: str = MEDTUNE_PROTOCOL
    protocols: tuple[str, ...] = (MEDTUNE_PROTOCOL,)
    # corpus BLEU is not a mean of sentence BLEUs: a bootstrap recomputes it
    mean_of: dict[str, str] = field(default_factory=lambda: {"radgraph_f1": "radgraph_f1", "rouge_l": "rouge_l"})
    reward_metric: str = "radgraph_f1"  # GRPO's reward; ROUGE-L where RadGraph is unavailable (medtune/rewards.py)

    # -------------------------------------------------------------- prompt and answer
    def prompt(self, indication: str, prior: bool | None = None) -> str:
        """`prior` (data_prep mimic_cxr --with-prior): True when a second image, the patient's previous study,
        follows the current one; False when the patient has none; None: the one-image prompt."""
        comparison = {None: "", True: "The first image is the current chest X-ray; the second is the patient's "
                                      "prior one, for comparison.\n",
                      False: "No prior chest X-ray of the patient is available.\n"}[prior]
        return (f"INDICATION: {indication or 'not given'}\n{comparison}"
                "Write the FINDINGS and IMPRESSION sections of the radiology report for this chest X-ray.")

    def answer(self, findings: str, impression: str) -> str:
        """The target: the sections the report has, each on its line under its header."""
        parts = [("FINDINGS", findings), ("IMPRESSION", impression)]
        return "\n".join(f"{header}: {text}" for header, text in parts if text)

    # -------------------------------------------------------------- metrics
    def compute_metrics(self, references: list[str], predictions: list[str],
                        scores: list[list[float]] | None = None) -> dict[str, Any]:
        """Corpus metrics, plus `per_example` (one dict per example, in order) for the predictions file."""
        # Scored on the report text without the two section labels, which every report shares: they would
        # lift BLEU and ROUGE of any output that merely copies the format.
        refs = [_SECTION_LABEL.sub("", r).strip() for r in references]
        hyps = [_SECTION_LABEL.sub("", p).strip() for p in predictions]
        per_example: list[dict[str, Any]] = [{} for _ in refs]
        metrics: dict[str, Any] = {"n": len(refs), "empty": sum(not h for h in hyps)}
        add_metrics(metrics, per_example, refs, hyps,
                    {"radgraph_f1": _radgraph_f1, "rouge_l": rouge_l, "bleu4": bleu4})
        metrics["radgraph"] = {"model": RADGRAPH_MODEL, "reward_level": RADGRAPH_REWARD}
        metrics["per_example"] = per_example
        return metrics

    def write_figures(self, metrics: dict[str, Any], per_example: list[dict[str, Any]], out_dir: Path,
                      prefix: str) -> list[Path]:
        return rouge_l_histogram(self.name, "report", metrics, per_example, out_dir, prefix)


def _radgraph_f1(refs: list[str], hyps: list[str]) -> tuple[float, list[float]]:
    scorer, problem = _radgraph_scorer()
    if problem:
        raise MetricUnavailable(problem)
    try:
        mean, each, _, _ = scorer(refs=refs, hyps=hyps)
    except Exception as e:  # noqa: BLE001 - a scorer failure must not lose the predictions already generated
        raise MetricUnavailable(f"radgraph failed while scoring ({type(e).__name__}: {str(e)[:200]})") from e
    return float(mean), [float(v) for v in each]


@cache
def _radgraph_scorer():
    """(scorer, None) or (None, why not), once per process: the baseline and fine-tuned evaluations share the
    model, and a failed download (retried for ~20 s without a network) is not tried twice."""
    try:
        from radgraph import F1RadGraph
    except ImportError as e:
        return None, f"the radgraph package is not installed ({e}): pip install 'medtune[radgraph]'"
    try:
        return F1RadGraph(reward_level=RADGRAPH_REWARD, model_type=RADGRAPH_MODEL), None
    except Exception as e:  # noqa: BLE001 - radgraph wraps every download failure in a bare Exception
        first_sentence = str(e).split(". ")[0][:200]
        return None, (f"radgraph could not load its model {RADGRAPH_MODEL} ({first_sentence}); "
                      "it downloads StanfordAIMI/RRG_scorers from the Hub on first use: run once with a network, "
                      "or copy ~/.cache/radgraph from a machine that has it")


TASK = ReportGenerationTask()
