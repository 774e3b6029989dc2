"""Multiple-choice classification tasks: the prompt lists lettered options, the answer is one option line.

Shared by every classification task (tissue type, pneumothorax, ...). Metrics come from scikit-learn.
An answer that names no option, or several, is *unparsable*: counted, and scored as wrong for its true
class (it is never mapped to a class).
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from medtune.tasks import MEDTUNE_PROTOCOL

UNPARSABLE = -1


@dataclass(frozen=True)
class MultipleChoiceTask:
    name: str
    dataset: str  # the data_prep reader that produces this task's data
    question: str
    options: tuple[str, ...]  # option texts, in label order
    class_names: tuple[str, ...]  # short class names, in label order (the dataset's folder names)
    table_metrics: tuple[str, ...] = ("weighted_f1", "accuracy", "macro_f1", "unparsable")  # paper's first
    positive_label: int | None = None  # binary tasks: the class whose F1/precision/recall the paper reports
    # data under a data-use agreement (e.g. PhysioNet's MIMIC): its images stay out of trackers by default
    credentialed: bool = False
    example_metrics: tuple[str, ...] = ("correct",)  # saved with each prediction
    kind: str = "classification"
    protocol: str = MEDTUNE_PROTOCOL
    protocols: tuple[str, ...] = (MEDTUNE_PROTOCOL,)
    mean_of: dict[str, str] = field(default_factory=lambda: {"accuracy": "correct"})
    reward_metric: str = "correct"  # GRPO's reward: the option parsed and compared, as evaluation scores it

    @property
    def max_new_tokens(self) -> int:
        return 16  # an option line is a few tokens; more only wastes generation time

    @property
    def answer_prefix(self) -> str:
        return ""  # the answer is the option line itself

    # -------------------------------------------------------------- prompt and answer
    @property
    def letters(self) -> str:
        return string.ascii_uppercase[: len(self.options)]

    def option_line(self, label: int) -> str:
        return f"{self.letters[label]}: {self.options[label]}"

    def prompt(self) -> str:
        return "\n".join([self.question, *(self.option_line(i) for i in range(len(self.options)))])

    def answer(self, label: int) -> str:
        return self.option_line(label)

    def reference(self, row: dict[str, Any]) -> int:
        return int(row["label"])

    # -------------------------------------------------------------- parsing
    def parse_answer(self, text: str) -> int:
        """Option index named by a generated answer, or UNPARSABLE.

        Accepted, case and whitespace aside: the option line (`A: adipose`), the letter alone (`A`, `(A)`,
        `A.`, `A)`), the letter leading an answer (`A: ...`), or exactly one option's text (`adipose`).
        """
        clean = " ".join(text.strip().strip("\"'`*").split())
        if not clean:
            return UNPARSABLE
        lowered = clean.lower()
        for i in range(len(self.options)):
            if lowered == self.option_line(i).lower() or lowered == self.options[i].lower():
                return i
        leading = self.leading_letter(clean)
        if leading != UNPARSABLE:
            return leading
        spans = {i: [m.span() for m in re.finditer(rf"(?<![\w-]){re.escape(option.lower())}(?![\w-])", lowered)]
                 for i, option in enumerate(self.options)}
        spans = {i: found for i, found in spans.items() if found}
        # an option whose every mention sits inside a longer option's ("pneumothorax" in "no pneumothorax")
        # is not named on its own
        named = {i for i, found in spans.items()
                 if any(not any(j != i and a <= start and end <= b for j, other in spans.items() for a, b in other)
                        for start, end in found)}
        return named.pop() if len(named) == 1 else UNPARSABLE

    def leading_letter(self, clean: str) -> int:
        """The option a reply opens with by letter (`A`, `(A)`, `A.`, `A)`, `A: ...`), or UNPARSABLE. A lower-case
        letter counts only alone or before `:`/`)`: `a. ...` or `a patient` is prose."""
        letters = self.letters
        leading = re.match(rf"^\(?([{letters}{letters.lower()}])\s*(?:\)|:|\.|$)", clean)
        if leading and (leading.group(0).rstrip() == clean or leading.group(0)[-1] in ":)"
                        or leading.group(1).isupper()):
            return letters.index(leading.group(1).upper())
        return UNPARSABLE

    def option_count(self, row: dict[str, Any]) -> int:
        """How many of the options (the first ones) the row's question offers: all of them here."""
        return len(self.options)

    # -------------------------------------------------------------- metrics
    def compute_metrics(self, references: list[int], predictions: list[int],
                        scores: list[list[float]] | None = None) -> dict[str, Any]:
        """`scores`: a probability per option for each example (option scoring), which AUROC needs."""
        from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

        labels = list(range(len(self.options)))
        # Unparsable answers keep the label UNPARSABLE, outside `labels`: a miss for the true class's recall,
        # a false positive for no class.
        precision, recall, f1, support = precision_recall_fscore_support(
            references, predictions, labels=labels, zero_division=0)
        metrics = {
            "n": len(references),
            "accuracy": float(accuracy_score(references, predictions)),
            "weighted_f1": float(f1_score(references, predictions, labels=labels, average="weighted", zero_division=0)),
            "macro_f1": float(f1_score(references, predictions, labels=labels, average="macro", zero_division=0)),
            "unparsable": int(sum(p == UNPARSABLE for p in predictions)),
            "per_example": [{"correct": p == r} for r, p in zip(references, predictions)],
            "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                          for name, p, r, f, s in zip(self.class_names, precision, recall, f1, support)},
            "confusion_matrix": {
                "rows": list(self.class_names), "columns": [*self.class_names, "unparsable"],
                "counts": confusion_matrix(references, predictions, labels=[*labels, UNPARSABLE])[:-1].tolist(),
            },
        }
        if self.positive_label is not None:
            positive = self.class_names[self.positive_label]
            metrics.update({k: metrics["per_class"][positive][k] for k in ("f1", "precision", "recall")})
        metrics.update(self._auroc(references, scores))
        return metrics

    def _auroc(self, references: list[int], scores: list[list[float]] | None) -> dict[str, Any]:
        from sklearn.metrics import roc_auc_score

        if scores is None:
            return {"auroc": None, "auroc_unavailable": "generation gives no scores: use eval.mode=score"}
        if len(set(references)) < 2:
            return {"auroc": None, "auroc_unavailable": "the split holds a single class"}
        if self.positive_label is not None:
            return {"auroc": float(roc_auc_score([r == self.positive_label for r in references],
                                                 [s[self.positive_label] for s in scores]))}
        present = sorted(set(references))  # one-vs-rest over the classes present, scores renormalised
        kept = [[s[i] for i in present] for s in scores]
        kept = [[v / (sum(row) or 1.0) for v in row] for row in kept]
        if len(present) == 2:
            return {"auroc": float(roc_auc_score([r == present[1] for r in references], [k[1] for k in kept]))}
        return {"auroc": float(roc_auc_score(references, kept, multi_class="ovr", labels=present))}

    def write_figures(self, metrics: dict[str, Any], per_example: list[dict[str, Any]], out_dir: Path,
                      prefix: str) -> list[Path]:
        """The confusion matrix as a PNG (rows: truth; columns: prediction, then unparsable)."""
        import numpy as np

        from medtune.tasks import _figures

        cm = metrics["confusion_matrix"]
        counts = np.array(cm["counts"])
        size = 1.0 + 0.6 * len(cm["columns"])
        fig, ax = _figures.pyplot().subplots(figsize=(size + 1, size))
        ax.imshow(counts, cmap="Blues")
        ax.set_xticks(range(len(cm["columns"])), cm["columns"], rotation=45, ha="right")
        ax.set_yticks(range(len(cm["rows"])), cm["rows"])
        for (r, c), v in np.ndenumerate(counts):
            ax.text(c, r, str(v), ha="center", va="center", color="white" if v > counts.max() / 2 else "black")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        headline = self.table_metrics[0]
        ax.set_title(f"{self.name} — {prefix}\n{headline} {metrics[headline]:.3f}")
        return [_figures.save(fig, out_dir / f"{prefix}_confusion_matrix.png")]
