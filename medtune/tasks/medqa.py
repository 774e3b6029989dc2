"""Multiple-choice medical questions, each with its own options (two to ten, lettered A to J), text only or with
images: MedQA (USMLE), MedMCQA, PubMedQA, MMLU's medical subjects and MedXpertQA, as MedGemma's model card reports
them (accuracy).

A row holds its question (`question`, the stem alone), its option texts (`options`, in letter order), the correct
letter's index (`label`), and for PubMedQA the abstract it asks about (`context`). The task knows only the letters:
a reply is parsed by its letter, and option scoring compares the token of each of the row's letters after the
answer's opening (`answer_prefix`), the letters the row lacks left out (4-option MedQA asks among A to D).

Protocols (the prompt asked and the answer form trained and read):
- `medtune`: the question, its options as `A: text` lines, "Answer with the letter of the correct option."; the
  answer is the option line (`C: Metformin`).
- `medgemma-medqa` (MedQA and MMLU), `medgemma-medmcqa`, `medgemma-pubmedqa`, `medgemma-medxpertqa` (text) and
  `medgemma-medxpertqa-mm` (images, each after its "Figure A" label): the MedGemma technical report's prompts
  (Tables A6 and A7), the step-by-step instruction ending in "Final Answer:" and the letter in parentheses.
  The report does not print how the options sit inside <QUESTION>: here each follows the stem on its line as
  `(A) text`, the form its answers take. The answer is `Final Answer: (C)`.
- `medgemma-1.5`: the MedGemma 1.5 report's multiple-choice prompt (Table 7), with thinking turned on as that report
  does for these benchmarks; the answer is `Final Answer: C`.

A reply's letter is read after its last "Final Answer:" where it has one, else as it leads the reply (`C`, `(C)`,
`C: ...`) or is stated (`The answer is C`). Option texts are not matched: they live in the row, and a bare `a` is
an article.

Published accuracies (MedGemma 4B IT model card; Gemma 3 4B in brackets): MedQA 64.4 (50.7), MedMCQA 55.7 (45.4),
PubMedQA 73.4 (68.4), MMLU medical 70.0 (67.2), MedXpertQA text 14.2 (11.6); MedGemma 27B text MedQA 87.7.
`recipes/benchmarks/medgemma-card.yaml` holds them with their sources.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from medtune.tasks import MEDTUNE_PROTOCOL
from medtune.tasks import _medgemma_prompts as prompts
from medtune.tasks._multiple_choice import UNPARSABLE, MultipleChoiceTask

LETTERS = "ABCDEFGHIJ"  # MedXpertQA's text questions have ten options
_STATED = re.compile(r"\banswer(?:\s+is)?\s*:?\s*\(?([A-J])\b\)?", re.IGNORECASE)
_LETTER = re.compile(r"^\(?([A-J])\)?(?=$|[\s.:,)])")
MEDTUNE_INSTRUCTION = "Answer with the letter of the correct option."


@dataclass(frozen=True)
class Protocol:
    template: str  # with {question} (the stem and its options) and, for PubMedQA, {context}
    answer_prefix: str  # what a trained answer says before the letter
    answer_suffix: str = ""  # and after it
    figure_labels: bool = False  # each image after its "Figure A" label (MedXpertQA's multimodal questions)
    system: str | None = None  # a system turn (MedGemma 1.5's thinking switch)
    max_new_tokens: int = 1024  # step by step: room to reason before the final answer


PROTOCOLS = {
    MEDTUNE_PROTOCOL: Protocol("{question}\n" + MEDTUNE_INSTRUCTION, "", ": {text}", max_new_tokens=32),
    "medgemma-medqa": Protocol(prompts.A6_MEDQA, "Final Answer: (", ")"),
    "medgemma-medmcqa": Protocol(prompts.A6_MEDMCQA, "Final Answer: (", ")"),
    "medgemma-pubmedqa": Protocol(prompts.A6_PUBMEDQA, "Final Answer: (", ")"),
    "medgemma-medxpertqa": Protocol(prompts.A6_MEDXPERTQA, "Final Answer:(", ")"),
    "medgemma-medxpertqa-mm": Protocol(prompts.A7_MEDXPERTQA_MM, "Final Answer: (", ")", figure_labels=True),
    # thinking first (a trace of its own before the argument): more room
    "medgemma-1.5": Protocol(prompts.T7_TEXT_MCQ, "Final Answer: ", system=prompts.THINKING_SYSTEM,
                             max_new_tokens=2048),
}


@dataclass(frozen=True)
class LetteredQuestionTask(MultipleChoiceTask):
    """Questions that each carry their own option texts: the task knows only the letters."""

    protocols: tuple[str, ...] = tuple(PROTOCOLS)
    mean_of: dict[str, str] = field(default_factory=lambda: {"accuracy": "correct"})

    @property
    def _protocol(self) -> Protocol:
        return PROTOCOLS[self.protocol]

    @property
    def answer_prefix(self) -> str:  # type: ignore[override]
        return self._protocol.answer_prefix

    @property
    def max_new_tokens(self) -> int:  # type: ignore[override]
        return self._protocol.max_new_tokens

    def option_line(self, label: int) -> str:
        """What follows `answer_prefix` in an answer of this option, up to what the row's text would add: its first
        token is what option scoring reads."""
        return f"{self.letters[label]}{self._protocol.answer_suffix.split('{text}')[0]}".rstrip()

    def row_prompt(self, question: str, options: list[str], context: str | None = None) -> str:
        if self.protocol == MEDTUNE_PROTOCOL:
            stem = "\n".join([question.strip(), *(f"{self.letters[i]}: {text}" for i, text in enumerate(options))])
        else:
            stem = "\n".join([question.strip(), *(f"({self.letters[i]}) {text}" for i, text in enumerate(options))])
        template, context = self._protocol.template, (context or "").strip()
        if context and "{context}" not in template:
            # a protocol written for questions without one (MedGemma 1.5's, medtune's) still shows PubMedQA's
            # abstract: before the question, as the report's PubMedQA prompt orders them
            stem = f"Context: {context}\nQuestion: {stem}"
        return template.format(question=stem, context=context)

    def row_answer(self, options: list[str], label: int) -> str:
        suffix = self._protocol.answer_suffix.format(text=options[label])
        return f"{self._protocol.answer_prefix}{self.letters[label]}{suffix}"

    def conversations(self, row: dict[str, Any]) -> list[list[dict[str, Any]]]:
        """The row's question and options under this protocol, after its images (with their figure labels where the
        protocol names them)."""
        from medtune.prompts import user_turn
        from medtune.tasks.free_text import image_count, own_prompt

        if "question" not in row:
            return own_prompt(row, self)
        images = image_count(row)
        labels = ([prompts.FIGURE_LABEL.format(letter=self.letters[i]) for i in range(images)]
                  if self._protocol.figure_labels else None)
        turn = user_turn(self.row_prompt(row["question"], row["options"], row.get("context")), images, labels)
        system = self._protocol.system
        return [[{"role": "system", "content": [{"type": "text", "text": system}]}, turn] if system else [turn]]

    def messages(self, question: str, options: list[str], label: int, context: str | None = None,
                 images: int = 0) -> list[dict[str, Any]]:
        """The training conversation of a question: its prompt under this protocol (after its images), its answer."""
        row = {"question": question, "options": options, "context": context, "images": [None] * images}
        return [*self.conversations(row)[0],
                {"role": "assistant", "content": [{"type": "text", "text": self.row_answer(options, label)}]}]

    def option_count(self, row: dict[str, Any]) -> int:
        return len(row["options"])

    def parse_answer(self, text: str) -> int:
        """The letter after the reply's last "Final Answer:", else the letter leading it (`C`, `(C)`, `C.`,
        `C: Metformin`) or stated in it (`The answer is C`)."""
        stated = prompts.final_answer(text)
        if stated is not None:
            found = _LETTER.match(stated.strip())
            return LETTERS.index(found.group(1)) if found and found.group(1) in self.letters else UNPARSABLE
        clean = " ".join(text.strip().strip("\"'`*").split())
        leading = self.leading_letter(clean)
        if leading != UNPARSABLE:
            return leading
        named = {m.group(1).upper() for m in _STATED.finditer(clean)}
        return LETTERS.index(named.pop()) if len(named) == 1 and next(iter(named)) in self.letters else UNPARSABLE


TASK = LetteredQuestionTask(
    name="medqa",
    dataset="medqa",
    question=MEDTUNE_INSTRUCTION,
    options=tuple(LETTERS),
    class_names=tuple(LETTERS),
    table_metrics=("accuracy", "unparsable"),
)
