"""The multiple-choice benchmark readers of MedGemma's model card (MedMCQA, PubMedQA, MMLU medical, MedXpertQA text and
multimodal): each stand-in, in its publisher's layout (and the Hub's Parquet copy where a reader takes both), prepared
once through the CLI as a user runs it."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from datasets import load_from_disk

from data_prep.__main__ import build_parser
from data_prep.__main__ import main as data_prep_main
from medtune.tasks import _medgemma_prompts as prompts
from medtune.tasks import get_task
from tests.conftest import prepare_stand_in

# name -> (reader, stand-in layout, CLI options)
PREPS = {
    "medmcqa": ("medmcqa", "original", ()),
    "medmcqa_hub": ("medmcqa", "hub", ("--protocol", "medtune", "--validation-size", "8")),
    "pubmedqa": ("pubmedqa", None, ()),
    "mmlu": ("mmlu_medical", "original", ()),
    "mmlu_hub": ("mmlu_medical", "hub", ()),
    "medxpertqa_text": ("medxpertqa", None, ()),
    "medxpertqa_mm": ("medxpertqa", None, ("--subset", "mm")),
}


@pytest.fixture(scope="module")
def preps(tmp_path_factory) -> dict[str, Path]:
    """name -> the folder holding the stand-in (raw/) and its prepared DatasetDict (data/)."""
    from data_prep import get_reader

    roots = {}
    for name, (reader, layout, options) in PREPS.items():
        root = tmp_path_factory.mktemp(name)
        get_reader(reader).synthesize(root / "raw", **({"layout": layout} if layout else {}))
        prepare_stand_in(root, reader, root / "raw", *options)
        roots[name] = root
    return roots


def _data(root: Path):
    return load_from_disk(str(root / "data"))


def _report(root: Path) -> dict:
    return json.loads((root / "data/prep_report.json").read_text())


def _prompt(row: dict) -> str:
    return row["messages"][0]["content"][-1]["text"]


def _sizes(report: dict) -> dict[str, int]:
    return {split: counts["total"] for split, counts in report["splits"].items()}


def _skips(report: dict) -> dict[str, str]:
    return {skip["path"]: skip["reason"] for skip in report["skipped"]}


def test_each_reader_writes_its_splits_and_lists_every_broken_entry(preps):
    expected = {  # splits; where -> why, for each broken entry the stand-in holds
        "medmcqa": ({"train": 36, "validation": 4, "test": 16},
                    {"train.json:6": "not JSON", "train.json:42": "no question", "train.json:43": "an empty option",
                     "dev.json:17": "no answer", "dev.json:18": "cop 5 out of range (expected 1 to 4)"}),
        "medmcqa_hub": ({"train": 32, "validation": 8, "test": 16},
                        {"data/train-00000-of-00001.parquet[40]": "no question",
                         "data/train-00000-of-00001.parquet[41]": "an empty option",
                         "data/validation-00000-of-00001.parquet[16]": "no answer (cop -1)"}),
        "pubmedqa": ({"train": 15, "validation": 3, "test": 19},
                     {"data/test_ground_truth.json[21031676]": "PMID not in ori_pqal.json",
                      "data/ori_pqal.json[21007919]": "no QUESTION",
                      "data/ori_pqal.json[21023757]": "answer '' is not yes, no or maybe"}),
        "mmlu": ({"train": 35, "validation": 14, "test": 28},
                 {"data/test/anatomy_test.csv:5": "5 CSV fields (expected 6: question, A, B, C, D, answer)",
                  "data/test/anatomy_test.csv:6": "answer 'E' names none of A, B, C, D",
                  "data/val/virology_val.csv:3": "an empty option"}),
        "mmlu_hub": ({"train": 35, "validation": 14, "test": 28},
                     {"anatomy/test-00000-of-00001.parquet[4]": "3 options (expected 4)",
                      "anatomy/test-00000-of-00001.parquet[5]": "answer -1 names none of A, B, C, D",
                      "virology/validation-00000-of-00001.parquet[2]": "an empty option"}),
        "medxpertqa_text": ({"train": 5, "validation": 5, "test": 20},
                            {"Text/test.jsonl:21": "not JSON",
                             "Text/test.jsonl:22": "label 'Z' names none of the options",
                             "Text/test.jsonl:23": "options lettered A, C, D, E, F, G, H, I, J (expected A, B, ... up "
                                                   "to J)"}),
        "medxpertqa_mm": ({"train": 5, "validation": 5, "test": 15},
                          {"MM/test.jsonl:16": "not JSON", "MM/test.jsonl:17": "label 'Z' names none of the options",
                           "MM/test.jsonl:18": "options lettered A, C, D, E (expected A, B, ... up to E)",
                           "MM/test.jsonl:19": "image not found: MM-52-a.jpeg",
                           "MM/test.jsonl:20": "unreadable: Truncated File Read: MM-53-a.jpeg"}),
    }
    for name, (sizes, skips) in expected.items():
        report = _report(preps[name])
        assert (_sizes(report), _skips(report)) == (sizes, skips), name
        assert report["task"]["name"] == "medqa"
        data = _data(preps[name])
        assert {split: len(data[split]) for split in data} == sizes
        assert {"id", "messages", "answer", "question", "options", "label"} <= set(data["test"].column_names)


def test_each_benchmarks_test_split_is_compared_with_the_count_the_report_evaluated(preps):
    published = {"medmcqa": 4183, "medmcqa_hub": 4183, "pubmedqa": 500, "mmlu": 3685, "mmlu_hub": 3685,
                 "medxpertqa_text": 2450, "medxpertqa_mm": 2000}
    for name, count in published.items():
        report = _report(preps[name])
        assert report["options"]["published_counts"] == {"test": count}
        assert any(note.startswith("test: kept ") and f"evaluated {count:,}" in note for note in report["notes"]), name
    notes = {name: " ".join(_report(preps[name])["notes"]) for name in published}
    assert "1,255 in the real release" in notes["mmlu"] and "MMLU has no training split" in notes["mmlu"]
    assert "(test.json) has no answers" in notes["medmcqa"] and "is MedMCQA's validation split (dev.json)" in notes[
        "medmcqa"]
    assert "2 kept questions are choice_type multi" in notes["medmcqa"]  # kept: 16 dev questions, every seventh multi
    assert "10% of them drawn instead" in notes["medmcqa"] and "10% of them" not in notes["medmcqa_hub"]
    assert "both MedXpertQA's dev split" in notes["medxpertqa_mm"]


def test_each_reader_writes_the_medgemma_reports_prompt_for_its_benchmark(preps):
    protocols = {"medmcqa": "medgemma-medmcqa", "pubmedqa": "medgemma-pubmedqa", "mmlu": "medgemma-medqa",
                 "mmlu_hub": "medgemma-medqa", "medxpertqa_text": "medgemma-medxpertqa",
                 "medxpertqa_mm": "medgemma-medxpertqa-mm", "medmcqa_hub": "medtune"}
    for name, protocol in protocols.items():
        assert _report(preps[name])["task"]["protocol"] == protocol
        task = get_task("medqa", protocol=protocol)
        for row in _data(preps[name])["test"].select(range(3)):
            images = len(row.get("images") or [])
            assert row["messages"] == task.messages(row["question"], row["options"], row["label"],
                                                    context=row.get("context"), images=images), name
            assert row["answer"] == task.row_answer(row["options"], row["label"])
    row = _data(preps["medmcqa"])["test"][1]
    assert _prompt(row) == prompts.A6_MEDMCQA.format(question="\n".join(
        [row["question"], *(f"({letter}) {text}" for letter, text in zip("ABCD", row["options"]))]))
    assert row["answer"] == "Final Answer: (B)" and row["label"] == 1
    row = _data(preps["medmcqa_hub"])["test"][1]  # --protocol medtune: the option lines, and the line as answer
    assert _prompt(row).endswith(f"D: {row['options'][3]}\nAnswer with the letter of the correct option.")
    assert row["answer"] == f"B: {row['options'][1]}"
    row = _data(preps["medxpertqa_text"])["test"][0]
    assert _prompt(row).endswith("like \u2018Final Answer:(X)\u2019.") and row["answer"] == "Final Answer:(A)"


def test_medmcqa_reads_both_layouts_alike_and_counts_cop_from_one_in_the_original(preps):
    original, hub = _data(preps["medmcqa"])["test"], _data(preps["medmcqa_hub"])["test"]
    columns = ["id", "question", "options", "label", "subject"]
    assert original.select_columns(columns).to_list() == hub.select_columns(columns).to_list()
    raw = {item["id"]: item for item in map(json.loads, (preps["medmcqa"] / "raw/dev.json").read_text().splitlines())}
    for row in original:
        item = raw[row["id"]]
        assert row["options"] == [item["opa"], item["opb"], item["opc"], item["opd"]]
        assert row["label"] == item["cop"] - 1 and row["subject"] == item["subject_name"] == "Radiology"
    assert not set(_data(preps["medmcqa"])["validation"]["id"]) & set(_data(preps["medmcqa"])["train"]["id"])
    # --validation-size 8 from 40 train questions, in proportion to each answer letter: 2 a letter
    assert _report(preps["medmcqa_hub"])["splits"]["validation"]["per_class"] == {"A": 2, "B": 2, "C": 2, "D": 2}


def test_pubmedqa_tests_the_ground_truths_pmids_with_the_abstract_as_context(preps):
    data = _data(preps["pubmedqa"])
    truth = json.loads((preps["pubmedqa"] / "raw/data/test_ground_truth.json").read_text())
    questions = json.loads((preps["pubmedqa"] / "raw/data/ori_pqal.json").read_text())
    assert set(data["test"]["id"]) == set(truth) & set(questions)
    assert not {*data["train"]["id"], *data["validation"]["id"]} & set(truth)
    for row in data["test"]:
        assert row["options"] == ["yes", "no", "maybe"] and row["options"][row["label"]] == truth[row["id"]]
        item = questions[row["id"]]
        assert row["question"] == item["QUESTION"]
        assert row["context"] == "\n".join(f"{s}: {c}" for s, c in zip(item["LABELS"], item["CONTEXTS"]))
        assert f"Context: {row['context']} Question: {row['question']}\n(A) yes\n(B) no\n(C) maybe" in _prompt(row)
    # 10% of each answer held out: 6 train questions an answer -> 1 each
    assert _report(preps["pubmedqa"])["splits"]["validation"]["per_class"] == {"A": 1, "B": 1, "C": 1}


def test_mmlu_keeps_the_seven_subjects_from_both_layouts_alike(preps):
    original, hub = _data(preps["mmlu"]), _data(preps["mmlu_hub"])
    columns = ["id", "question", "options", "label", "subject"]
    for split in ("train", "validation", "test"):
        assert original[split].select_columns(columns).to_list() == hub[split].select_columns(columns).to_list()
    assert sorted(set(original["test"]["subject"])) == sorted(_report(preps["mmlu"])["options"]["subjects"]) == [
        "anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
        "professional_medicine", "virology"]
    assert Counter(original["train"]["subject"]) == dict.fromkeys(original["test"]["subject"], 5)  # dev: 5 a subject
    rows = (preps["mmlu"] / "raw/data/test/anatomy_test.csv").read_text().splitlines()
    first = original["test"][0]  # the CSV's quoted first field holds a comma; its last is the letter
    assert rows[0].startswith(f'"{first["question"]}",') and rows[0].endswith(",A") and first["label"] == 0


def test_medxpertqa_strips_the_answer_choices_and_keeps_each_questions_images(preps):
    text, mm = _data(preps["medxpertqa_text"]), _data(preps["medxpertqa_mm"])
    assert "images" not in text["test"].column_names and "image" not in text["test"].column_names
    assert all(len(row["options"]) == 10 and "Answer Choices" not in row["question"] for row in text["test"])
    assert {"medical_task", "body_system", "question_type"} <= set(mm["test"].column_names)
    assert text["train"]["id"] == text["validation"]["id"] and len(text["train"]) == 5
    raw = {item["id"]: item for item in map(json.loads, (preps["medxpertqa_mm"] / "raw/MM/test.jsonl").read_text()
                                                                                              .splitlines()[:15])}
    for row in mm["test"]:
        item = raw[row["id"]]
        assert len(row["options"]) == 5 and row["options"][row["label"]] == item["options"][item["label"]]
        assert len(row["images"]) == len(item["images"]) and row["images"][0].size == (64, 64)
        turn = row["messages"][0]["content"]
        assert [c["text"] if c["type"] == "text" else "<image>" for c in turn[:-1]] == [
            x for i in range(len(item["images"])) for x in (f"Figure {'AB'[i]}", "<image>")]
    assert any(len(row["images"]) == 2 for row in mm["test"])


def test_each_reader_explains_itself_and_refuses_a_wrong_folder_in_one_line(tmp_path, capsys):
    for reader in ("medmcqa", "pubmedqa", "mmlu_medical", "medxpertqa"):
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args([reader, "--help"])
        assert exited.value.code == 0 and "--protocol" in capsys.readouterr().out
        assert data_prep_main([reader, "--src", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("data_prep: ") and len(error.splitlines()) == 1 and "--src" in error, error
