"""Your own classes: multiple choice over the classes of a dataset that `data_prep imagefolder` or `data_prep
table` prepared, with the question and the option texts the recipe gives (`task.question`, `task.options`:
class -> text), else sensible ones. The same prompt, parsing, option scoring and metrics as the built-in
classification tasks (`_multiple_choice`), so the confusion matrix and AUROC come with it.
"""
from __future__ import annotations

from medtune.tasks._multiple_choice import MultipleChoiceTask

NAME = "classification"
READERS = ("imagefolder", "table", "hub")  # the data_prep readers that write its data
DEFAULT_QUESTION = "Which of the following best describes this image?"
MAX_OPTIONS = 26  # the options are lettered A to Z


def default_option(class_name: str) -> str:
    """The option text of a class named only by its folder or label: `smooth_muscle` -> `smooth muscle`."""
    return " ".join(class_name.replace("_", " ").replace("-", " ").split())


def configure(question: str | None, options: dict[str, str] | None) -> MultipleChoiceTask:
    """The task for these classes (`options`: class -> option text, in label order)."""
    if not options:
        raise ValueError("classification takes its classes from the prepared dataset: set data.path to it")
    return MultipleChoiceTask(
        name=NAME,
        dataset=READERS[0],
        question=question or DEFAULT_QUESTION,
        options=tuple(options.values()),
        class_names=tuple(options),
        table_metrics=("weighted_f1", "macro_f1", "accuracy", "auroc", "unparsable"),
        # your own data may be a hospital's: its images stay out of trackers unless tracking.log_images says so
        credentialed=True,
    )
