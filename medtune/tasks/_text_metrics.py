"""Metrics of generated text against a reference, shared by the tasks that answer in free text: ROUGE-L
(Google's `rouge-score`), BLEU-4 (`sacrebleu`) and SQuAD's token F1 (`torchmetrics`), all offline, and the
per-answer ROUGE-L histogram."""
from __future__ import annotations

from pathlib import Path
from typing import Any


class TextAnswers:
    """For tasks answered in free text: the reference is the row's answer, a generated answer is taken as it is."""

    def reference(self, row: dict[str, Any]) -> str:
        return row["answer"]

    def parse_answer(self, text: str) -> str:
        return text.strip()


class MetricUnavailable(Exception):
    """A metric's library or model is missing, or it failed: reported as unavailable, with this reason."""


def rouge_l(refs: list[str], hyps: list[str]) -> tuple[float, list[float]]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    each = [scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(refs, hyps)]
    return (sum(each) / len(each) if each else 0.0), each


def bleu4(refs: list[str], hyps: list[str]) -> tuple[float, list[float]]:
    """Corpus BLEU-4 (sacrebleu's standard 13a tokenisation), per answer with sacrebleu's default smoothing;
    on a 0-1 scale like the other metrics."""
    import sacrebleu

    corpus = sacrebleu.corpus_bleu(hyps, [refs]).score / 100
    return corpus, [sacrebleu.sentence_bleu(h, [r]).score / 100 for r, h in zip(refs, hyps)]


def token_f1(refs: list[str], hyps: list[str]) -> tuple[float, list[float]]:
    """SQuAD v1.1's token F1 (lower case, punctuation and articles removed, unigram overlap), the "tokenized F1"
    medical VQA (VQA-RAD, SLAKE, PathVQA) is reported with: torchmetrics' implementation of the official script,
    per answer; the corpus figure is their mean, on a 0-1 scale."""
    from torchmetrics.functional.text import squad

    each = [float(squad([{"prediction_text": h, "id": "0"}], [{"answers": {"text": [r], "answer_start": [0]},
                                                               "id": "0"}])["f1"]) / 100 for r, h in zip(refs, hyps)]
    return (sum(each) / len(each) if each else 0.0), each


def rouge_l_histogram(task_name: str, unit: str, metrics: dict[str, Any], per_example: list[dict[str, Any]],
                      out_dir: Path, prefix: str) -> list[Path]:
    """A histogram of per-answer ROUGE-L: a few perfect copies and many failures look alike in a mean."""
    from medtune.tasks import _figures

    values = [e["rouge_l"] for e in per_example if "rouge_l" in e]
    if not values:
        return []
    fig, ax = _figures.pyplot().subplots(figsize=(5, 3.5))
    ax.hist(values, bins=20, range=(0, 1), color="tab:blue")
    ax.set_xlabel(f"ROUGE-L per {unit}")
    ax.set_ylabel(f"{unit}s")
    ax.set_title(f"{task_name} — {prefix}\nROUGE-L {metrics['rouge_l']:.3f}")
    return [_figures.save(fig, out_dir / f"{prefix}_rouge_l.png")]


def add_metrics(metrics: dict[str, Any], per_example: list[dict[str, Any]], refs: list[str], hyps: list[str],
                computes: dict[str, Any]) -> None:
    """Each of `computes` (name -> metric function) into `metrics` (corpus figure) and `per_example`; a metric
    that cannot be computed is None with `<name>_unavailable` saying why, and evaluation still completes."""
    for name, compute in computes.items():
        try:
            corpus, each = compute(refs, hyps)
        except MetricUnavailable as e:
            metrics.update({name: None, f"{name}_unavailable": str(e)})
            continue
        metrics[name] = corpus
        for row, value in zip(per_example, each):
            row[name] = value
