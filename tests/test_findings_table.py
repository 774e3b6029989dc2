"""Your own findings (`data_prep table|hub --task findings`): a table with one column per finding (1/0, yes/no,
true/false; -1 uncertain and blank read by the label policies) or a column listing the findings present, prepared
as the chest X-ray findings readers prepare theirs (finding_labels, the findings task's conversation, counts per
finding), on the stand-in that `data_prep synthetic table` writes beside its table (data_prep/table.py:
synthesize_findings)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from datasets import load_from_disk

from data_prep.__main__ import main as data_prep_main
from data_prep.table import FINDINGS_STANDIN
from medtune.tasks import get_task
from tests.conftest import prepare_stand_in

COLUMNS = ",".join(FINDINGS_STANDIN)  # Cardiomegaly,Pleural_Effusion,Nodule
CELLS = {"1": 1, "1.0": 1, "yes": 1, "True": 1, "0": 0, "0.0": 0, "no": 0, "false": 0}  # the stand-in's spellings
WITH_IDS = ("--group-column", "patient", "--id-column", "id")
MISSING, MALFORMED = "F-missing", "F-malformed"


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    from data_prep.table import synthesize_findings

    root = tmp_path_factory.mktemp("findings-table")
    synthesize_findings(root / "raw", seed=0)
    return root


@pytest.fixture(scope="module")
def by_columns(standin):
    """findings.csv prepared by its finding columns, the default policies (uncertain and blank read as negative)."""
    prepare_stand_in(standin / "columns", "table", standin / "raw/findings.csv", "--finding-columns", COLUMNS,
                     *WITH_IDS)
    return read_prepared(standin / "columns/data")


@pytest.fixture(scope="module")
def by_list(standin):
    """findings.jsonl prepared by its `findings` list column (its own splits)."""
    prepare_stand_in(standin / "list", "table", standin / "raw/findings.jsonl", "--findings-column", "findings",
                     *WITH_IDS)
    return read_prepared(standin / "list/data")


def read_prepared(data: Path) -> tuple[dict, dict[str, dict]]:
    """(the prep report, id -> its row without the image, with its split)."""
    dataset = load_from_disk(str(data))
    rows = {row["id"]: {**row, "split": split} for split in dataset
            for row in dataset[split].remove_columns("image").to_list()}
    return json.loads((data / "prep_report.json").read_text()), rows


def csv_labels(standin: Path) -> dict[str, list[int]]:
    """id -> each finding's label as findings.csv spells it, for the stand-in's regular rows (F-0000...)."""
    with open(standin / "raw/findings.csv", newline="") as f:
        return {row["id"]: [CELLS[row[c]] for c in FINDINGS_STANDIN] for row in csv.DictReader(f)
                if row["id"][2:].isdigit()}


def skipped(report: dict) -> dict[str, str]:
    return {s["path"]: s["reason"] for s in report["skipped"]}


def assert_rows_are_the_tasks(report: dict, rows: dict[str, dict]) -> None:
    """Each row's conversation and answer are the findings task's for its labels, with the report's findings; the
    counts per finding are the rows'; no group is in two splits."""
    task = get_task("findings", report["task"]["question"], report["task"]["options"], report["task"]["protocol"])
    for row in rows.values():
        assert row["messages"] == task.messages(row["finding_labels"]) and row["answer"] == task.summary(
            row["finding_labels"])
    for split, counts in report["splits"].items():
        labels = [row["finding_labels"] for row in rows.values() if row["split"] == split]
        assert counts["total"] == len(labels)
        for j, key in enumerate(task.class_names):
            said = counts["per_finding"][key]
            assert (said["positives"], said["negatives"], said["not_scored"]) == tuple(
                sum(label[j] == value for label in labels) for value in (1, 0, -1))
    splits_of_group: dict[str, set] = {}
    for row in rows.values():
        splits_of_group.setdefault(row["group"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in splits_of_group.values())


# ----------------------------------------------------------------------------- one column per finding
def test_finding_columns_are_read_as_labels_and_asked_as_the_findings_task(by_columns, standin):
    report, rows = by_columns
    assert report["task"] == {"name": "findings", "question": "Is there {finding} in this image?",
                              "options": {"cardiomegaly": "cardiomegaly", "pleural_effusion": "pleural effusion",
                                          "nodule": "nodule"}, "protocol": "medgemma"}
    assert (report["options"]["uncertain"], report["options"]["unmentioned"]) == ("negative", "negative")
    expected = csv_labels(standin)
    assert len(expected) == 48 and {i: rows[i]["finding_labels"] for i in expected} == expected
    # -1 (uncertain) and blank (not mentioned) read as negative: the films do not show them
    assert rows["F-uncertain"]["finding_labels"] == [0, 0, 1]
    assert rows["F-blank"]["finding_labels"] == [1, 0, 0]
    assert rows["F-unsure"]["finding_labels"] == [0, 0, 0]
    assert rows["F-0003"]["answer"] == "cardiomegaly: yes; pleural_effusion: no; nodule: yes"  # True, false, True
    assert skipped(report) == {
        "findings.csv:53": "unreadable finding value: Pleural_Effusion is 'maybe' (1, 0, -1, yes, no, true, false or "
                           "blank)",
        "findings.csv:54": "image not found: findings/missing.png"}
    assert MISSING not in rows and MALFORMED not in rows and len(rows) == 51
    assert_rows_are_the_tasks(report, rows)
    assert any("drawn from the training data" in note for note in report["notes"])  # no split column


def test_excluded_labels_are_not_scored_and_a_row_with_none_scored_is_skipped(standin, tmp_path):
    out = tmp_path / "exclude"
    assert data_prep_main(["table", "--src", str(standin / "raw/findings.csv"), "--out", str(out),
                           "--finding-columns", COLUMNS, *WITH_IDS, "--uncertain", "exclude",
                           "--unmentioned", "exclude", "--question", "Does this film show {finding}?",
                           "--protocol", "medgemma-1.5"]) == 0
    report, rows = read_prepared(out)
    assert rows["F-uncertain"]["finding_labels"] == [-1, 0, 1]
    assert rows["F-blank"]["finding_labels"] == [1, -1, 0]
    assert "F-unsure" not in rows  # blank, uncertain, blank: nothing to score
    assert skipped(report)["findings.csv:52"] == "every finding excluded (not mentioned, uncertain)"
    # only the scored findings are asked in training
    asked = [turn["content"][-1]["text"] for turn in rows["F-uncertain"]["messages"] if turn["role"] == "user"]
    assert len(asked) == 2 and "Does this film show pleural effusion?" in asked[0] and "nodule" in asked[1]
    assert report["task"]["question"] == "Does this film show {finding}?"
    assert report["task"]["protocol"] == "medgemma-1.5"
    why = {key: {} for key in ("cardiomegaly", "pleural_effusion", "nodule")}
    for split in report["splits"].values():
        for key, counts in split["per_finding"].items():
            for reason, n in counts["not_scored_by_reason"].items():
                why[key][reason] = why[key].get(reason, 0) + n
    assert why == {"cardiomegaly": {"uncertain": 1}, "pleural_effusion": {"not mentioned": 1}, "nodule": {}}
    assert_rows_are_the_tasks(report, rows)


def test_uncertain_read_as_positive(standin, tmp_path):
    out = tmp_path / "u-ones"
    assert data_prep_main(["table", "--src", str(standin / "raw/findings.csv"), "--out", str(out),
                           "--finding-columns", COLUMNS, *WITH_IDS, "--uncertain", "positive"]) == 0
    _, rows = read_prepared(out)
    assert rows["F-uncertain"]["finding_labels"] == [1, 0, 1]
    assert rows["F-unsure"]["finding_labels"] == [0, 1, 0]


# ----------------------------------------------------------------------------- a column listing the findings
def test_a_findings_list_column_names_those_present_and_every_other_is_absent(by_list, by_columns, standin):
    report, rows = by_list
    # the union of the names listed, sorted by key, each asked as first spelled ("Pleural Effusion", "nodule")
    assert report["task"]["options"] == {"cardiomegaly": "cardiomegaly", "nodule": "nodule",
                                         "pleural_effusion": "pleural effusion"}
    reorder = [0, 2, 1]  # findings.csv's order (cardiomegaly, pleural_effusion, nodule) -> the keys' order
    expected = {i: [labels[j] for j in reorder] for i, labels in csv_labels(standin).items()}
    assert {i: rows[i]["finding_labels"] for i in expected} == expected  # lists, "a; b", "a|b" and JSON lists
    assert rows["L-nothing"]["finding_labels"] == [0, 0, 0]
    assert skipped(report) == {"findings.jsonl:49": "its group is also in train: a group stays in one split",
                               "findings.jsonl:51": "no findings list",
                               "findings.jsonl:52": "unreadable findings list: not a JSON list"}
    assert rows["F-0000"]["split"] == "train" and rows["F-0006"]["split"] == "validation"  # the rows' own splits
    assert not any("drawn" in note for note in report["notes"])
    assert_rows_are_the_tasks(report, rows)
    assert "uncertain" not in report["options"] and report["options"]["findings_column"] == "findings"


def test_findings_named_by_flag_keep_their_order_and_a_row_listing_another_is_skipped(standin, tmp_path):
    out = tmp_path / "named"
    assert data_prep_main(["table", "--src", str(standin / "raw/findings.jsonl"), "--out", str(out),
                           "--findings-column", "findings", "--findings", "nodule,cardiomegaly", *WITH_IDS]) == 0
    report, rows = read_prepared(out)
    assert list(report["task"]["options"]) == ["nodule", "cardiomegaly"]
    expected = {i: [labels[2], labels[0]] for i, labels in csv_labels(standin).items() if not labels[1]}
    assert {i: rows[i]["finding_labels"] for i in rows if i.startswith("F-")} == expected
    assert "unknown finding: 'Pleural Effusion' (not one of --findings)" in skipped(report).values()


def test_data_prep_hub_reads_a_parquet_list_column(standin, by_list, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(standin / "datasets-cache"))
    prepare_stand_in(standin / "hub", "hub", standin / "raw/findings.parquet", "--task", "findings",
                     "--findings-column", "findings", *WITH_IDS)
    report, rows = read_prepared(standin / "hub/data")
    list_report, list_rows = by_list
    assert report["task"] == list_report["task"]
    assert {i: (r["finding_labels"], r["split"]) for i, r in rows.items()} == {
        i: (r["finding_labels"], r["split"]) for i, r in list_rows.items()}
    assert sorted(skipped(report).values()) == ["its group is also in train: a group stays in one split",
                                                "no findings list"]


def test_a_hub_list_of_class_labels_is_read_by_their_names(standin, tmp_path, monkeypatch):
    """A Hub dataset's findings as List(ClassLabel) (ChestX-ray14's on the Hub): read as the classes' names."""
    from datasets import ClassLabel, Dataset, Features, List, Value

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    classes = ClassLabel(names=["No Finding", "Nodule", "Pleural_Effusion"])
    rows = [{"image": f"findings/{i:04d}.png", "labels": labels}
            for i, labels in enumerate([[1], [2], [1, 2], [], [0], [1]] * 4)]
    Dataset.from_list(rows, features=Features({"image": Value("string"), "labels": List(classes)})).to_parquet(
        str(standin / "raw/labelled.parquet"))
    out = tmp_path / "labelled"
    assert data_prep_main(["hub", "--src", str(standin / "raw/labelled.parquet"), "--out", str(out),
                           "--findings-column", "labels", "--findings", "Nodule,Pleural_Effusion",
                           "--test-fraction", "0.25"]) == 0
    report, prepared = read_prepared(out)
    assert report["task"]["options"] == {"nodule": "nodule", "pleural_effusion": "pleural effusion"}
    assert sorted(tuple(r["finding_labels"]) for r in prepared.values()) == sorted(
        [(1, 0), (0, 1), (1, 1), (0, 0), (1, 0)] * 4)
    assert list(skipped(report).values()) == ["unknown finding: 'No Finding' (not one of --findings)"] * 4


# ----------------------------------------------------------------------------- mistakes, one line each
@pytest.mark.parametrize("flags, words", [
    (("--task", "findings"), "--task findings reads one column per finding (--finding-columns NAME,NAME,...) or a "
                             "column listing the findings present (--findings-column NAME)"),
    (("--finding-columns", "Cardiomegaly,Edema"), "findings.csv has no finding column 'Edema' (it has Cardiomegaly, "
                                                  "Nodule, Pleural_Effusion, id, image, patient)"),
    (("--finding-columns", COLUMNS, "--findings-column", "findings"), "give one of them, not both"),
    (("--task", "classification", "--finding-columns", COLUMNS), "--finding-columns is for --task findings"),
    (("--finding-columns", "Cardiomegaly,cardiomegaly"), "'Cardiomegaly' and 'cardiomegaly' are the same finding"),
    (("--finding-columns", COLUMNS, "--protocol", "medtune"), "findings has no protocol 'medtune'"),
    (("--finding-columns", COLUMNS, "--question", "Is it there?"), "a template with {finding}"),
])
def test_a_findings_mistake_is_one_line(standin, tmp_path, capsys, flags, words):
    assert data_prep_main(["table", "--src", str(standin / "raw/findings.csv"), "--out", str(tmp_path / "out"),
                           *flags]) == 2
    error = capsys.readouterr().err.splitlines()[0]
    assert error.startswith("data_prep: ") and words in error
    assert not (tmp_path / "out").exists()


def test_your_own_findings_train_and_are_scored_per_finding(small_findings_table, tmp_path):
    """The findings recipe on the prepared table (conftest's session copy): `medtune train` with the tiny model,
    then option scoring, as for the chest X-ray sets."""
    from tests.conftest import run_cli

    run = tmp_path / "run"
    result = run_cli("medtune", "train", "recipes/custom/findings_qlora.yaml", "model.name_or_path=tiny",
                     "model.precision=fp32", "quantization.load_in_4bit=false", "lora.alpha=32",
                     "training.learning_rate=3e-3", "training.per_device_train_batch_size=8",
                     "training.activation_checkpointing=false", "training.eval_strategy=no",
                     "training.save_strategy=no", "training.dataloader_num_workers=0", "tracking.backend=none",
                     "training.num_train_epochs=2", "eval.baseline=false", "eval.mode=score", "eval.num_workers=0",
                     f"data.path={small_findings_table / 'data'}", f"training.output_dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "eval/finetuned.json").read_text())["metrics"]
    keys = ("cardiomegaly", "pleural_effusion", "nodule")
    assert all(f"f1_{k}" in metrics and f"auroc_{k}" in metrics for k in keys), metrics
    assert "| findings | macro_f1 |" in result.stdout
