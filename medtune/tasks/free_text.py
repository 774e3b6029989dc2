"""Your own questions and answers: free-text answers from a table or a Hugging Face dataset that `data_prep
table` or `data_prep hub` prepared (an answer per row, a question per row or the recipe's `task.question`).
Scored by ROUGE-L, BLEU-4 and exact match (case and spacing aside); empty answers are counted.

Medical VQA (VQA-RAD, SLAKE, PathVQA) is scored as its papers score it: SQuAD's token F1 for the open questions,
accuracy for the closed ones (those whose reference is yes or no: right when the answer's first word is the
reference's), each on its own and token F1 over all questions together (the MedGemma model card's figure).

Protocols: `medtune` asks the question alone and trains on the answer alone. The others are the prompts MedGemma's
published VQA figures were measured with (medtune/tasks/_medgemma_prompts.py): `medgemma-slake` and
`medgemma-vqa-rad` (the MedGemma report's Table A7, one each), `medgemma-1.5` (the MedGemma 1.5 report's Table 9,
both). Where the prompt asks for "Final Answer: X", the answer read is X (the whole reply where a model gives none),
and a trained answer takes that form.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtune.tasks import MEDTUNE_PROTOCOL
from medtune.tasks import _medgemma_prompts as prompts
from medtune.tasks._text_metrics import TextAnswers, add_metrics, bleu4, rouge_l, rouge_l_histogram, token_f1

NAME = "free_text"
READERS = ("table", "hub", "slake", "vqa_rad")  # the data_prep readers that write its data
DEFAULT_QUESTION = "Describe the findings in this image."
# protocol -> (prompt template, whether it asks for "Final Answer: X"), the default first
PROMPTS = {MEDTUNE_PROTOCOL: ("{question}", False),
           "medgemma-slake": (prompts.A7_SLAKE, True), "medgemma-vqa-rad": (prompts.A7_VQA_RAD, False),
           "medgemma-1.5": (prompts.T9_VQA, True)}


@dataclass(frozen=True)
class FreeTextTask(TextAnswers):
    question: str = DEFAULT_QUESTION  # asked where a row has no question of its own
    name: str = NAME
    dataset: str = READERS[0]  # the data_prep reader that produces this task's data
    # your own data may be a hospital's: its images and answers stay out of trackers unless tracking.log_images
    credentialed: bool = True
    table_metrics: tuple[str, ...] = ("rouge_l", "token_f1", "token_f1_open", "closed_accuracy", "bleu4",
                                      "exact_match", "empty")
    example_metrics: tuple[str, ...] = ("rouge_l", "token_f1", "bleu4", "exact_match", "closed_correct")
    kind: str = "generation"
    protocol: str = MEDTUNE_PROTOCOL
    protocols: tuple[str, ...] = tuple(PROMPTS)
    # corpus BLEU is not a mean of sentence BLEUs: a bootstrap recomputes it
    mean_of: dict[str, str] = field(default_factory=lambda: {
        "rouge_l": "rouge_l", "token_f1": "token_f1", "exact_match": "exact_match",
        "closed_accuracy": "closed_correct", "token_f1_open": "token_f1_open"})
    # GRPO's reward: SQuAD's token F1, the figure medical VQA is reported with (ROUGE-L, the table's first, is the
    # same kind of overlap but rewards a long answer's stray words less harshly)
    reward_metric: str = "token_f1"

    @property
    def asks_final_answer(self) -> bool:
        return PROMPTS[self.protocol][1]

    @property
    def max_new_tokens(self) -> int:
        """A short answer, or room for the argument the protocol invites before its final answer (eval.max_new_tokens
        for longer ones)."""
        return 512 if self.asks_final_answer else 128

    def prompt(self, question: str | None = None) -> str:
        return PROMPTS[self.protocol][0].format(question=(question or "").strip() or self.question)

    @property
    def answer_prefix(self) -> str:
        return f"{prompts.FINAL_ANSWER} " if self.asks_final_answer else ""

    def answer(self, text: str) -> str:
        return f"{self.answer_prefix}{text.strip()}"

    def parse_answer(self, text: str) -> str:
        """The final answer where the reply states one, else the whole reply."""
        stated = prompts.final_answer(text)
        return (stated if stated is not None else text).strip()

    def conversations(self, row: dict[str, Any]) -> list[list[dict[str, Any]]]:
        """The row's question under this protocol, after its images (data prepared without a `question` column: its
        own prompt, as prepared)."""
        from medtune.prompts import user_turn

        if "question" not in row:
            return own_prompt(row, self)
        return [[user_turn(self.prompt(row["question"]), images=image_count(row))]]

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
        for e in per_example:
            if "closed_correct" not in e and "token_f1" in e:
                e["token_f1_open"] = e["token_f1"]
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


def own_prompt(row: dict[str, Any], task) -> list[list[dict[str, Any]]]:
    """A row prepared before rows kept their question: its own prompt, which is medtune's protocol's; another
    protocol cannot be asked of it."""
    from medtune.errors import MedtuneError
    from medtune.prompts import prompt_messages

    if task.protocol != MEDTUNE_PROTOCOL:
        raise MedtuneError(f"the {task.protocol} protocol asks each row's question anew, and this data was prepared "
                           "before rows kept it (no `question` column): prepare it again with data_prep")
    return [prompt_messages(row["messages"])]


def image_count(row: dict[str, Any]) -> int:
    from medtune.rows import row_images

    return len(row_images(row))


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
