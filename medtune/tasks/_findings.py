"""Findings: one image, a yes/no question for each of several findings (the chest X-ray findings of MedGemma's
benchmark table; your own). Shared by `cxr_findings` and `findings`.

A row holds its image and `finding_labels`, one per finding in the task's order: 1 present, 0 absent, -1 not scored
(an uncertain or unmentioned label a reader was told to exclude). Its conversation asks the scored findings one after
another (user: image + question, model: answer, user: question, ...); they are independent questions, and training
treats each as if asked alone about the image (`independent_questions`: medtune/shared_prefix.py trains them in one
sequence that encodes the image once). Evaluation asks every finding of every row as its own conversation, as the
report does, and the row's prediction is one answer per finding.

Protocols: `medgemma`, the MedGemma technical report's question and instruction (Table A7: "Is there <CONDITION> in
this image?" and the "Final Answer: X" instruction); `medgemma-1.5`, the MedGemma 1.5 report's (Table 8). A finding
whose phrase is a whole question ("Are there any fractures in the image?", CXR14's fracture) is asked as it is. The
answer is `Final Answer: yes` or `Final Answer: no`; a reply is read after its last "Final Answer:" (else by its
first word), and one that says neither yes nor no is unparsable: wrong for a present finding (a miss) and for an
absent one (not a correct no).

Metrics, over the scored (row, finding) pairs: per finding F1 of "present", sensitivity, specificity and, with
option scoring (the probability of yes against no), AUROC; their macro averages over the findings (the report's
figure is macro F1); accuracy and the unparsable count over all pairs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtune.tasks import _medgemma_prompts as prompts
from medtune.tasks._multiple_choice import UNPARSABLE

PRESENT, ABSENT, NOT_SCORED = 1, 0, -1
ANSWERS = ("no", "yes")  # the option scored for each question, in label order (absent, present)
PROTOCOLS = {"medgemma": prompts.A7_FINDINGS, "medgemma-1.5": prompts.T8_FINDINGS}
DEFAULT_QUESTION = prompts.A7_FINDING_QUESTION


def finding_key(name: str) -> str:
    """A finding's name as a metric key: `Pleural Effusion` -> `pleural_effusion`."""
    return "_".join(name.lower().replace("/", " ").replace("-", " ").split())


@dataclass(frozen=True)
class FindingsTask:
    name: str
    dataset: str  # the data_prep reader that produces this task's data (the first of several)
    question: str  # the question template, with {finding}
    findings: tuple[str, ...]  # the phrase each finding is asked by, in label order
    class_names: tuple[str, ...]  # the findings' keys (prep report, metric names), in label order
    credentialed: bool = True  # chest X-ray sets come under data-use agreements; your own data may be a hospital's
    protocol: str = "medgemma"
    protocols: tuple[str, ...] = tuple(PROTOCOLS)
    kind: str = "classification"
    example_metrics: tuple[str, ...] = ("correct",)
    mean_of: dict[str, str] = field(default_factory=dict)  # pair-level figures: a bootstrap recomputes them
    independent_questions: bool = True
    options: tuple[str, ...] = ANSWERS

    # -------------------------------------------------------------- prompt and answer
    @property
    def max_new_tokens(self) -> int:
        return 512  # the prompt invites an argument before the final answer

    @property
    def answer_prefix(self) -> str:
        return f"{prompts.FINAL_ANSWER} "

    @property
    def table_metrics(self) -> tuple[str, ...]:
        return ("macro_f1", "macro_auroc", *(f"f1_{key}" for key in self.class_names),
                *(f"auroc_{key}" for key in self.class_names), "accuracy", "unparsable")

    def finding_question(self, index: int) -> str:
        phrase = self.findings[index]
        return phrase if phrase.rstrip().endswith("?") else self.question.format(finding=phrase)

    def prompt(self, index: int) -> str:
        return PROTOCOLS[self.protocol].format(question=self.finding_question(index))

    def answer(self, present: int) -> str:
        return f"{self.answer_prefix}{ANSWERS[present]}"

    def option_line(self, label: int) -> str:
        return ANSWERS[label]

    def option_count(self, row: dict[str, Any]) -> int:
        return len(ANSWERS)

    def messages(self, labels: list[int], images: int = 1) -> list[dict[str, Any]]:
        """The training conversation of a row: each scored finding's question and answer, the image before the
        first question."""
        from medtune.prompts import user_turn

        turns: list[dict[str, Any]] = []
        for index, label in enumerate(labels):
            if label == NOT_SCORED:
                continue
            turns += [user_turn(self.prompt(index), images=0 if turns else images),
                      {"role": "assistant", "content": [{"type": "text", "text": self.answer(label)}]}]
        return turns

    def summary(self, labels: list[int]) -> str:
        """A row's labels as text (its `answer` column): `atelectasis: yes; edema: no; cardiomegaly: not scored`."""
        said = {PRESENT: "yes", ABSENT: "no", NOT_SCORED: "not scored"}
        return "; ".join(f"{key}: {said[int(label)]}" for key, label in zip(self.class_names, labels))

    def conversations(self, row: dict[str, Any]) -> list[list[dict[str, Any]]]:
        """One conversation per finding, each with the row's image: evaluation asks them all."""
        from medtune.prompts import user_turn
        from medtune.tasks.free_text import image_count

        images = image_count(row)
        return [[user_turn(self.prompt(i), images=images)] for i in range(len(self.findings))]

    def reference(self, row: dict[str, Any]) -> list[int]:
        return [int(v) for v in row["finding_labels"]]

    def parse_answer(self, text: str) -> int:
        """1 for yes, 0 for no, after the reply's last "Final Answer:" (else its first word); else UNPARSABLE."""
        import re

        stated = prompts.final_answer(text)
        words = re.findall(r"[a-z]+", (text if stated is None else stated).lower())
        return {"yes": PRESENT, "no": ABSENT}.get(words[0], UNPARSABLE) if words else UNPARSABLE

    # -------------------------------------------------------------- metrics
    def compute_metrics(self, references: list[list[int]], predictions: list[list[int]],
                        scores: list[list[list[float]]] | None = None) -> dict[str, Any]:
        """`scores`: for each row and finding, the probabilities of (no, yes) (option scoring), which AUROC needs."""
        per_finding: dict[str, dict[str, Any]] = {}
        for j, key in enumerate(self.class_names):
            pairs = [(r[j], p[j]) for r, p in zip(references, predictions) if r[j] != NOT_SCORED]
            tp = sum(r == PRESENT and p == PRESENT for r, p in pairs)
            fp = sum(r == ABSENT and p == PRESENT for r, p in pairs)
            positives = sum(r == PRESENT for r, _ in pairs)
            negatives = len(pairs) - positives
            tn = sum(r == ABSENT and p == ABSENT for r, p in pairs)
            per_finding[key] = {
                "f1": 2 * tp / (2 * tp + fp + positives - tp) if tp or fp or positives else 0.0,
                "sensitivity": tp / positives if positives else None,
                "specificity": tn / negatives if negatives else None,
                "positives": positives, "negatives": negatives,
                "not_scored": len(references) - len(pairs),
                "unparsable": sum(p == UNPARSABLE for _, p in pairs),
            }
            per_finding[key].update(self._auroc(references, scores, j))
        scored = [(r[j], p[j]) for r, p in zip(references, predictions) for j in range(len(self.class_names))
                  if r[j] != NOT_SCORED]
        aurocs = [f["auroc"] for f in per_finding.values() if f.get("auroc") is not None]
        metrics: dict[str, Any] = {
            "n": len(references), "pairs": len(scored),
            "macro_f1": sum(f["f1"] for f in per_finding.values()) / len(per_finding) if per_finding else 0.0,
            "macro_auroc": sum(aurocs) / len(aurocs) if aurocs else None,
            "accuracy": sum(r == p for r, p in scored) / len(scored) if scored else 0.0,
            "unparsable": sum(p == UNPARSABLE for _, p in scored),
            **{f"f1_{key}": f["f1"] for key, f in per_finding.items()},
            **{f"auroc_{key}": f.get("auroc") for key, f in per_finding.items()},
            "per_finding": per_finding,
            "per_example": [{"correct": [None if r_j == NOT_SCORED else r_j == p_j for r_j, p_j in zip(r, p)]}
                            for r, p in zip(references, predictions)],
        }
        if scores is None:
            metrics["macro_auroc_unavailable"] = "generation gives no scores: use eval.mode=score"
        return metrics

    @staticmethod
    def _auroc(references: list[list[int]], scores: list[list[list[float]]] | None, j: int) -> dict[str, Any]:
        from sklearn.metrics import roc_auc_score

        if scores is None:
            return {"auroc": None}
        pairs = [(r[j], s[j][PRESENT] / (sum(s[j]) or 1.0)) for r, s in zip(references, scores) if r[j] != NOT_SCORED]
        if len({r for r, _ in pairs}) < 2:
            return {"auroc": None, "auroc_unavailable": "one class only among the scored examples"}
        return {"auroc": float(roc_auc_score([r for r, _ in pairs], [p for _, p in pairs])),
                "roc": _roc_points([r for r, _ in pairs], [p for _, p in pairs])}

    def write_figures(self, metrics: dict[str, Any], per_example: list[dict[str, Any]], out_dir: Path,
                      prefix: str) -> list[Path]:
        """Per finding: F1, sensitivity and specificity as bars; with option scoring, the ROC curves."""
        import numpy as np

        from medtune.tasks import _figures

        plt, names = _figures.pyplot(), list(metrics["per_finding"])
        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(names), 3.6))
        x = np.arange(len(names))
        for offset, stat in zip((-0.27, 0, 0.27), ("f1", "sensitivity", "specificity")):
            ax.bar(x + offset, [metrics["per_finding"][n][stat] or 0.0 for n in names], width=0.26, label=stat)
        ax.set_xticks(x, [n.replace("_", " ") for n in names], rotation=30, ha="right")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        ax.set_title(f"{self.name} — {prefix}\nmacro F1 {metrics['macro_f1']:.3f}")
        written = [_figures.save(fig, out_dir / f"{prefix}_findings.png")]
        curves = {n: f["roc"] for n, f in metrics["per_finding"].items() if f.get("roc")}
        if curves:
            fig, ax = plt.subplots(figsize=(4.5, 4.5))
            for name, (fpr, tpr) in curves.items():
                ax.plot(fpr, tpr, label=f"{name.replace('_', ' ')} ({metrics['per_finding'][name]['auroc']:.2f})")
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
            ax.set_xlabel("1 - specificity")
            ax.set_ylabel("sensitivity")
            ax.legend(fontsize=8)
            ax.set_title(f"{self.name} — {prefix}\nmacro AUROC {metrics['macro_auroc']:.3f}")
            written.append(_figures.save(fig, out_dir / f"{prefix}_roc.png"))
        return written


def _roc_points(labels: list[int], probabilities: list[float]) -> list[list[float]]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, probabilities)
    return [[round(float(v), 4) for v in fpr], [round(float(v), 4) for v in tpr]]


def configure_findings(name: str, readers: tuple[str, ...], question: str | None,
                       options: dict[str, str] | None) -> FindingsTask:
    """The findings task `name` for these findings (`options`: key -> the phrase it is asked by, in label order),
    asked by `question` (a template with {finding}; default the report's)."""
    if not options:
        raise ValueError(f"{name} takes its findings from the prepared dataset: set data.path to it")
    question = question or DEFAULT_QUESTION
    if "{finding}" not in question:
        raise ValueError(f"{name}'s question is a template with {{finding}}, e.g. {DEFAULT_QUESTION!r}")
    return FindingsTask(name=name, dataset=readers[0], question=question, findings=tuple(options.values()),
                        class_names=tuple(options))
