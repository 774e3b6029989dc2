"""Answer parsing and metrics of the multiple-choice tasks."""
from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score

from medtune.tasks import get_task, task_names
from medtune.tasks._multiple_choice import UNPARSABLE

TASK = get_task("tissue_classification")


def test_tasks_are_discovered_from_their_modules():
    assert "tissue_classification" in task_names()
    assert not any(name.startswith("_") for name in task_names())


def test_prompt_is_the_notebooks():
    lines = TASK.prompt().splitlines()
    assert lines[0] == "What is the most likely tissue type shown in the histopathology image?"
    assert lines[1:] == ["A: adipose", "B: background", "C: debris", "D: lymphocytes", "E: mucus", "F: smooth muscle",
                         "G: normal colon mucosa", "H: cancer-associated stroma",
                         "I: colorectal adenocarcinoma epithelium"]


@pytest.mark.parametrize("text, label", [
    ("A: adipose", 0), ("  a: ADIPOSE \n", 0), ("B", 1), ("(C)", 2), ("D.", 3), ("E)", 4), ("f: smooth muscle", 5),
    ("normal colon mucosa", 6), ("Cancer-associated stroma.", 7), ("I: colorectal adenocarcinoma epithelium", 8),
    ("I", 8), ("I think it is adipose", 0), ("**H: cancer-associated stroma**", 7),
    ("", UNPARSABLE), ("   ", UNPARSABLE), ("mucus or debris", UNPARSABLE), ("J: nothing", UNPARSABLE),
    ("histopathology", UNPARSABLE), ("stroma", UNPARSABLE), ("mucosa", UNPARSABLE),
])
def test_parse_answer(text, label):
    assert TASK.parse_answer(text) == label


@given(label=st.integers(0, 8), pad=st.sampled_from(["", " ", "\n", "  \t"]), upper=st.booleans())
def test_any_option_line_parses_back_to_its_label(label, pad, upper):
    line = TASK.option_line(label)
    assert TASK.parse_answer(pad + (line.upper() if upper else line) + pad) == label


@given(st.text(max_size=80))
def test_parsing_never_raises_and_never_invents_a_label(text):
    assert TASK.parse_answer(text) in set(range(9)) | {UNPARSABLE}


def test_metrics_equal_scikit_learns_with_unparsable_scored_wrong():
    rng = random.Random(0)
    refs = [rng.randrange(9) for _ in range(300)]
    preds = [r if rng.random() < 0.6 else rng.choice([*range(9), UNPARSABLE]) for r in refs]
    m = TASK.compute_metrics(refs, preds)
    labels = list(range(9))
    assert m["accuracy"] == pytest.approx(accuracy_score(refs, preds))
    assert m["weighted_f1"] == pytest.approx(f1_score(refs, preds, labels=labels, average="weighted"))
    assert m["macro_f1"] == pytest.approx(f1_score(refs, preds, labels=labels, average="macro"))
    for i, name in enumerate(TASK.class_names):
        assert m["per_class"][name]["precision"] == pytest.approx(
            precision_score(refs, preds, labels=[i], average="micro", zero_division=0))
        assert m["per_class"][name]["recall"] == pytest.approx(recall_score(refs, preds, labels=[i], average="micro"))
    assert m["unparsable"] == preds.count(UNPARSABLE) > 0
    full = confusion_matrix(refs, preds, labels=[*labels, UNPARSABLE])
    assert m["confusion_matrix"]["counts"] == full[:-1].tolist()
    assert [row[-1] for row in m["confusion_matrix"]["counts"]] == [
        sum(1 for r, p in zip(refs, preds) if r == i and p == UNPARSABLE) for i in labels]


def test_an_unparsable_answer_is_never_a_class():
    perfect = TASK.compute_metrics([0, 1, 2], [0, 1, 2])
    one_unparsable = TASK.compute_metrics([0, 1, 2], [0, 1, UNPARSABLE])
    assert perfect["accuracy"] == 1.0 and one_unparsable["accuracy"] == pytest.approx(2 / 3)
    assert one_unparsable["per_class"]["DEB"]["recall"] == 0.0
    assert all(v["precision"] == 1.0 for k, v in one_unparsable["per_class"].items() if v["support"] and k != "DEB")


def _drawn_box(path):
    """(left, top, right, bottom) margins in pixels between the image's edges and what is drawn on it."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        ink = np.asarray(image.convert("L")) < 250
    rows, columns = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return columns[0], rows[0], ink.shape[1] - 1 - columns[-1], ink.shape[0] - 1 - rows[-1]


@pytest.mark.parametrize("name", ["tissue_classification", "pneumothorax", "report_generation"])
def test_every_figure_fits_its_canvas(name, tmp_path):
    """Nothing drawn touches an edge (a title or label cut off would) and no side keeps a wide empty margin."""
    task = get_task(name)
    if name == "report_generation":
        refs = ["No acute cardiopulmonary process.", "Small left pleural effusion.", "Heart size is normal."]
        m = task.compute_metrics(refs, ["No acute process.", "Large right effusion.", "Heart size is normal."])
    else:
        labels = list(range(len(task.class_names)))
        m = task.compute_metrics(labels * 3, labels * 2 + [UNPARSABLE] * len(labels))
    paths = task.write_figures(m, m["per_example"], tmp_path, "finetuned")
    assert paths
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        margins = _drawn_box(path)
        assert all(2 <= margin <= 20 for margin in margins), (path.name, margins)
