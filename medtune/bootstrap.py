"""How sure a difference between two models is: the paired bootstrap over the examples both answered.

Both models' predictions of the same examples are resampled together (the same draw of examples for both, B times),
and the metric's difference is recomputed on each draw; the 2.5th and 97.5th percentiles of those differences are
the 95% interval (Efron and Tibshirani's percentile interval; Koehn 2004 for paired system comparison). A drop whose
whole interval lies below zero is a regression: a fine-tune that made the model worse on that benchmark, beyond what
the choice of examples explains.

The metric of a draw is the weighted mean of a per-example score where the task says the metric is one
(`task.mean_of`: accuracy is the mean of `correct`, token F1 of `token_f1`): one matrix product for all B draws.
Otherwise the task recomputes it on each draw's references and predictions (macro F1 over findings, BLEU).
"""
from __future__ import annotations

from typing import Any, Callable

RESAMPLES, LEVEL, SEED = 1000, 0.95, 0


def paired_difference(task, metric: str, base: list[dict[str, Any]], other: list[dict[str, Any]],
                      resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, Any] | None:
    """The difference `other - base` in `metric` over the examples both answered (prediction records matched by
    id, as the predictions files hold them), with its paired-bootstrap 95% interval and whether it is a
    regression; None where the metric cannot be computed on these examples."""
    import numpy as np

    others = {r["id"]: r for r in other}
    pairs = [(b, others[b["id"]]) for b in base if b["id"] in others]
    if not pairs:
        return None
    statistic = _statistic(task, metric, [b for b, _ in pairs]), _statistic(task, metric, [o for _, o in pairs])
    n = len(pairs)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)  # how often each example is drawn
    everything = np.ones((1, n), dtype=np.int64)
    observed = statistic[1](everything)[0] - statistic[0](everything)[0]
    differences = statistic[1](draws) - statistic[0](draws)
    differences = differences[~np.isnan(differences)]
    if np.isnan(observed) or not len(differences):
        return None
    low, high = np.percentile(differences, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return {"difference": float(observed), "low": float(low), "high": float(high), "n": n,
            "resamples": resamples, "regression": bool(high < 0)}


def _statistic(task, metric: str, records: list[dict[str, Any]]) -> Callable:
    """weights (draws x examples) -> the metric on each draw."""
    import numpy as np

    field = getattr(task, "mean_of", {}).get(metric)
    if field is not None:
        values = np.array([_number(r.get(field)) for r in records], dtype=float)
        counted = ~np.isnan(values)  # an example the metric does not count (an open question for closed accuracy)
        values = np.where(counted, values, 0.0)

        def weighted_mean(weights):
            with np.errstate(invalid="ignore", divide="ignore"):
                return (weights @ values) / (weights @ counted)
        return weighted_mean

    references = [r["reference"] for r in records]
    predictions = [r["parsed"] for r in records]
    scores = [r.get("scores") for r in records]  # option scoring's: what an AUROC is computed from
    scored = all(s is not None for s in scores)

    def recomputed(weights):
        out = []
        for row in weights:
            chosen = np.repeat(np.arange(len(records)), row)
            value = task.compute_metrics([references[i] for i in chosen], [predictions[i] for i in chosen],
                                         *([[scores[i] for i in chosen]] if scored else []))[metric]
            out.append(np.nan if value is None else float(value))
        return np.array(out)
    return recomputed


def _number(value) -> float:
    if value is None:
        return float("nan")
    return float(value)
