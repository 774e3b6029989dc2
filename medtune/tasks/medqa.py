"""Multiple-choice medical QA, text only: MedQA (USMLE-style questions), each with its own options A to E.

The prompt is the question and its lettered options; the answer is the correct option line (`C: Metformin`).
Unlike the image classification tasks, the classes are the letters, and each row brings the texts behind
them (its `options` column): a reply is parsed by its letter (`C`, `(C)`, `C: ...`, `The answer is C`), and
option scoring compares the first token of each of the row's letters, the letters the row lacks left out
(4-option MedQA asks among A to D). The metric is accuracy.

Published accuracies a user can check (MedGemma technical report, MedQA 4-option): MedGemma 4B IT 64.4
against Gemma 3 4B's 50.7; MedGemma 27B text 87.7 against Gemma 3 27B's 74.9. `medtune eval` of any adapter of
the same base model on this task shows how much general medical knowledge a fine-tune kept.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from medtune.tasks._multiple_choice import UNPARSABLE, MultipleChoiceTask

LETTERS = "ABCDE"
_STATED = re.compile(r"\banswer(?:\s+is)?\s*:?\s*\(?([A-E])\b\)?", re.IGNORECASE)


@dataclass(frozen=True)
class LetteredQuestionTask(MultipleChoiceTask):
    """Questions that each carry their own option texts: the task knows only the letters."""

    def option_line(self, label: int) -> str:
        return f"{self.letters[label]}:"  # the reply's first token, as option scoring reads it

    def row_prompt(self, question: str, options: list[str]) -> str:
        lines = [f"{self.letters[i]}: {text}" for i, text in enumerate(options)]
        return "\n".join([question.strip(), *lines, self.question])

    def row_answer(self, options: list[str], label: int) -> str:
        return f"{self.letters[label]}: {options[label]}"

    def option_count(self, row: dict[str, Any]) -> int:
        return len(row["options"])

    def parse_answer(self, text: str) -> int:
        """The letter a reply gives: leading it (`C`, `(C)`, `C.`, `C: Metformin`) or stated (`The answer is C`).
        Option texts are not matched: they live in the row, and a bare `a` is an article."""
        clean = " ".join(text.strip().strip("\"'`*").split())
        leading = self.leading_letter(clean)
        if leading != UNPARSABLE:
            return leading
        stated = {m.group(1).upper() for m in _STATED.finditer(clean)}
        return LETTERS.index(stated.pop()) if len(stated) == 1 else UNPARSABLE


TASK = LetteredQuestionTask(
    name="medqa",
    dataset="medqa",
    question="Answer with the letter of the correct option.",
    options=tuple(LETTERS),
    class_names=tuple(LETTERS),
    table_metrics=("accuracy", "unparsable"),
)
