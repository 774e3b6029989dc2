"""Your own questions and answers: free-text answers from a table or a Hugging Face dataset that `data_prep
table` or `data_prep hub` prepared (an answer per row, a question per row or the recipe's `task.question`).
Scored by ROUGE-L, BLEU-4 and exact match (case and spacing aside); empty answers are counted.

Medical VQA (VQA-RAD, SLAKE, PathVQA) is scored as its papers score it: SQuAD's token F1 for the open questions,
accuracy for the closed ones (those whose reference is yes or no: right when the answer's first word is the
reference's), each on its own and token F1 over all questions together (the MedGemma model card's figure).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtune.tasks._text_metrics import TextAnswers, add_metrics, bleu4, rouge_l, rouge_l_histogram, token_f1

NAME = "free_text"
READERS = ("table", "hub")  # the data_prep readers that write its data
DEFAULT_QUESTION = "Describe the findings in this image."


@dataclass(frozen=True)
class FreeTextTask(TextAnswers):
    question: str = DEFAULT_QUESTION  # asked where a row has no question of its own
    name: str = NAME
    dataset: str = READERS[0]  # the data_prep reader that produces this task's data
    # your own data may be a hospital's: its images and answers stay out of trackers unless tracking.log_images
    credentialed: bool = True
    max_new_tokens: int = 128  # eval.max_new_tokens for longer answers
    table_metrics: tuple[str, ...] = ("rouge_l", "token_f1", "token_f1_open", "closed_accuracy", "bleu4",
                                      "exact_match", "empty")
    example_metrics: tuple[str, ...] = ("rouge_l", "token_f1", "bleu4", "exact_match", "closed_correct")
    kind: str = "generation"

    def prompt(self, question: str | None = None) -> str:
        return (question or "").strip() or self.question

    def answer(self, text: str) -> str:
        return text.strip()

    def compute_metrics(self, references: list[str], predictions: list[str],
                        scores: list[list[float]] | None = None) -> dict[str, Any]:
        per_example: list[dict[str, Any]] = [{"exact_match": _normal(r) == _normal(p)}
                                             for r, p in zip(references, predictions)]
        metrics: dict[str, Any] = {
            "n": len(references), "empty": sum(not p.strip() for p in predictions),
            "exact_match": sum(e["exact_match"] for e in per_example) / len(per_example) if per_example else 0.0,
        }
        add_metrics(metrics, per_example, references, predictions,
                    {"rouge_l": rouge_l, "bleu4": bleu4, "token_f1": token_f1})
        closed = [i for i, r in enumerate(references) if closed_answer(r)]
        for i in closed:
            per_example[i]["closed_correct"] = first_word(predictions[i]) == closed_answer(references[i])
        open_ = [e["token_f1"] for e in per_example if "closed_correct" not in e]
        metrics.update(n_closed=len(closed), n_open=len(open_),
                       closed_accuracy=(sum(per_example[i]["closed_correct"] for i in closed) / len(closed)
                                        if closed else None),
                       token_f1_open=sum(open_) / len(open_) if open_ else None)
        metrics["per_example"] = per_example
        return metrics

    def write_figures(self, metrics: dict[str, Any], per_example: list[dict[str, Any]], out_dir: Path,
                      prefix: str) -> list[Path]:
        return rouge_l_histogram(self.name, "answer", metrics, per_example, out_dir, prefix)


def _normal(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .")


CLOSED_ANSWERS = ("yes", "no")


def first_word(text: str) -> str:
    """The answer's first word, lower case, without punctuation ("Yes, a small one." -> "yes")."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return words[0] if words else ""


def closed_answer(reference: str) -> str | None:
    """yes or no for a closed question's reference, else None (an open question)."""
    words = re.findall(r"[a-z0-9]+", reference.lower())
    return words[0] if len(words) == 1 and words[0] in CLOSED_ANSWERS else None


def configure(question: str | None, options: dict[str, str] | None) -> FreeTextTask:
    if options:
        raise ValueError("free_text answers in free text, without options: remove task.options")
    return FreeTextTask(question=question or DEFAULT_QUESTION)
