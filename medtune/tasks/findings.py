"""Your own findings: several yes/no questions about each image, from a table with one column per finding (1, 0 or
blank) or a column listing the findings present (`data_prep table` or `hub --task findings`). Asked, trained and
scored as the chest X-ray findings are (medtune/tasks/_findings.py): the question template is the recipe's
`task.question` (default "Is there {finding} in this image?"), the findings and the phrases they are asked by its
`task.options` (default the column names, underscores as spaces).
"""
from __future__ import annotations

from medtune.tasks._findings import FindingsTask, configure_findings

NAME = "findings"
READERS = ("table", "hub")  # the data_prep readers that write its data


def configure(question: str | None, options: dict[str, str] | None) -> FindingsTask:
    return configure_findings(NAME, READERS, question, options)
