"""The medical VQA readers of MedGemma's model card (SLAKE; VQA-RAD from the OSF release, with Google's balanced split
or the official one, and from the Hub's Parquet copy): each stand-in, in its publisher's layout, prepared once through
the CLI as a user runs it."""
from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
from datasets import Image, load_from_disk

from data_prep.__main__ import build_parser
from data_prep.__main__ import main as data_prep_main
from medtune.tasks import _medgemma_prompts as prompts
from medtune.tasks import get_task
from tests.conftest import prepare_stand_in

TSV = "vqa_rad_balanced_split_and_human_eval_inclusions.tsv"
OSF_JSON = "VQA_RAD Dataset Public.json"
# name -> (reader, the stand-in's folder --src names, CLI options; {raw}: the stand-in's folder)
PREPS = {
    "slake": ("slake", "", ()),
    "slake_both": ("slake", "", ("--languages", "en,zh", "--protocol", "medtune")),
    "vqa_rad": ("vqa_rad", "", ("--balanced-split", f"{{raw}}/{TSV}")),
    "vqa_rad_official": ("vqa_rad", "", ("--protocol", "medtune")),
    "vqa_rad_hub": ("vqa_rad", "vqa-rad", ()),
}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict[str, Path]:
    """reader -> its stand-in (one for the preps of a reader)."""
    from data_prep import get_reader

    folders = {}
    for reader in ("slake", "vqa_rad"):
        folders[reader] = tmp_path_factory.mktemp(f"{reader}-raw")
        get_reader(reader).synthesize(folders[reader])
    return folders


@pytest.fixture(scope="module")
def preps(raw, tmp_path_factory) -> dict[str, Path]:
    """name -> its prepared DatasetDict's folder."""
    roots = {}
    for name, (reader, folder, options) in PREPS.items():
        root = tmp_path_factory.mktemp(name)
        prepare_stand_in(root, reader, raw[reader] / folder, *(o.format(raw=raw[reader]) for o in options))
        roots[name] = root / "data"
    return roots


def _data(folder: Path):
    return load_from_disk(str(folder))


def _report(folder: Path) -> dict:
    return json.loads((folder / "prep_report.json").read_text())


def _prompt(row: dict) -> str:
    return row["messages"][0]["content"][-1]["text"]


def _reply(row: dict) -> str:
    return row["messages"][1]["content"][0]["text"]


def _image_bytes(split) -> list[bytes]:
    return [image["bytes"] for image in split.cast_column("image", Image(decode=False))["image"]]


def test_each_prep_writes_its_splits_and_lists_every_broken_entry(preps):
    truncated = "unreadable: Truncated File Read"
    slake_skips = {"train.json[90]": "image not found: xmlab900/source.jpg",
                   "train.json[91]": "image not found: xmlab900/source.jpg",
                   "train.json[93]": f"{truncated}: xmlab901/source.jpg",
                   "train.json[94]": f"{truncated}: xmlab901/source.jpg",
                   "train.json[95]": "no answer", "train.json[96]": "no question"}
    osf_skips = {f"{OSF_JSON}[75]": "image not found: synpic99999.jpg",
                 f"{OSF_JSON}[76]": f"{truncated}: synpic10100.jpg", f"{OSF_JSON}[77]": f"{truncated}: synpic10100.jpg",
                 f"{OSF_JSON}[78]": "no answer"}
    hub = "data/train-00000-of-00001-eb8844602202be60.parquet"
    expected = {  # splits; where -> why, for each broken entry
        "slake": ({"train": 54, "validation": 18, "test": 18}, slake_skips),
        # the Chinese question about the missing image is read too, and skipped
        "slake_both": ({"train": 90, "validation": 30, "test": 30},
                       {**slake_skips, "train.json[92]": "image not found: xmlab900/source.jpg"}),
        "vqa_rad": ({"train": 36, "validation": 18, "test": 19},
                    {f"{TSV}:79": "malformed row: 2 fields (expected 3)",  # the last row, cut short
                     f"{OSF_JSON}[23]": f"qid 23 is not in {TSV}", f"{OSF_JSON}[68]": f"qid 68 is not in {TSV}",
                     **osf_skips}),
        "vqa_rad_official": ({"train": 48, "validation": 6, "test": 21}, osf_skips),
        "vqa_rad_hub": ({"train": 48, "validation": 6, "test": 21},
                        {f"{hub}[54]": "no image", f"{hub}[55]": truncated, f"{hub}[56]": truncated,
                         f"{hub}[57]": "no answer"}),
    }
    for name, (sizes, skips) in expected.items():
        report = _report(preps[name])
        assert {split: counts["total"] for split, counts in report["splits"].items()} == sizes, name
        assert {skip["path"]: skip["reason"] for skip in report["skipped"]} == skips, name
        data = _data(preps[name])
        assert {split: len(data[split]) for split in data} == sizes
        assert {"id", "image", "messages", "answer", "question", "answer_type"} <= set(data["test"].column_names)
        assert report["task"]["name"] == "free_text"


def test_slake_keeps_the_english_questions_and_counts_the_chinese_ones_left_out(preps, raw):
    english, both = _data(preps["slake"]), _data(preps["slake_both"])
    assert {language for split in english.values() for language in split["q_lang"]} == {"en"}
    notes = _report(preps["slake"])["notes"]
    # 18, 6 and 6 images of two Chinese questions each; train.json's broken records hold one more
    assert ("questions in other languages left out (--languages en), not skipped: train 37 zh; validation 12 zh; "
            "test 12 zh") in notes
    assert not any("left out" in note for note in _report(preps["slake_both"])["notes"])
    chinese = both["test"].filter(lambda row: row["q_lang"] == "zh")
    assert len(chinese) == 12 and set(chinese["answer"]) <= {"是", "否", "MRI", "X-Ray", "CT"}
    assert {row["answer_type"] for row in chinese if row["answer"] in ("是", "否")} == {"closed"}  # the publisher's
    records = json.loads((raw["slake"] / "test.json").read_text())
    for row in english["test"]:
        record = next(r for r in records if str(r["qid"]) == row["id"])
        assert (row["question"], row["answer"], row["answer_type"]) == (record["question"], record["answer"],
                                                                         record["answer_type"].lower())
        assert [row[c] for c in ("modality", "location", "content_type")] == [record["modality"], record["location"],
                                                                               record["content_type"]]


def test_each_prep_writes_its_protocols_prompt_and_trains_the_answer_in_its_form(preps):
    protocols = {"slake": "medgemma-slake", "slake_both": "medtune", "vqa_rad": "medgemma-vqa-rad",
                 "vqa_rad_official": "medtune", "vqa_rad_hub": "medgemma-vqa-rad"}
    for name, protocol in protocols.items():
        report = _report(preps[name])
        task = get_task("free_text", protocol=protocol)
        assert report["task"] == {"name": "free_text", "question": task.question, "protocol": protocol}
        for row in _data(preps[name])["test"]:
            assert (_prompt(row), _reply(row)) == (task.prompt(row["question"]), task.answer(row["answer"])), name
            assert [part["type"] for part in row["messages"][0]["content"]] == ["image", "text"]
    slake = _data(preps["slake"])["test"][0]
    assert _prompt(slake) == prompts.A7_SLAKE.format(question="What modality is used to take this image?")
    assert (slake["answer"], _reply(slake)) == ("MRI", "Final Answer: MRI")
    vqa_rad = _data(preps["vqa_rad"])["test"][0]
    assert _prompt(vqa_rad) == prompts.A7_VQA_RAD.format(question=vqa_rad["question"])
    assert _reply(vqa_rad) == vqa_rad["answer"]  # the VQA-RAD prompt asks for no "Final Answer:"
    for name in ("slake_both", "vqa_rad_official"):  # medtune: the bare question, the bare answer
        row = _data(preps[name])["test"][1]
        assert (_prompt(row), _reply(row)) == (row["question"], row["answer"])


def test_answer_type_is_the_publishers_else_closed_for_yes_or_no(preps):
    for name in preps:
        for split in _data(preps[name]).values():
            for row in split:
                yes_no = row["answer"].lower() in ("yes", "no", "是", "否")
                assert row["answer_type"] == ("closed" if yes_no else "open"), (name, row["id"])
    assert _report(preps["slake"])["splits"]["test"]["per_class"] == {"closed": 6, "open": 12}
    assert _report(preps["vqa_rad_hub"])["splits"]["test"]["per_class"] == {"closed": 6, "open": 15}


def test_an_image_is_read_once_and_its_questions_share_its_bytes(preps, raw):
    names = {}
    for split in ("train", "validation", "test"):
        for record in json.loads((raw["slake"] / f"{split}.json").read_text()):
            names[str(record["qid"])] = record["img_name"]
    data = _data(preps["slake"])
    by_image = defaultdict(set)
    for split in data.values():
        for qid, image in zip(split["id"], _image_bytes(split)):
            by_image[names[qid]].add(image)
    assert len(by_image) == 30 and all(len(images) == 1 for images in by_image.values())
    assert len({image for images in by_image.values() for image in images}) == 30
    # every image an English question with text and answer names: the 30, the missing and the corrupt one
    notes = {name: _report(preps[name])["notes"] for name in preps}
    assert "images: 32 named, each read once however many questions name it (30 readable; 90 questions kept)" in notes[
        "slake"]
    assert any(note.startswith("images: 25 named") and "(24 readable; 75 questions kept)" in note
               for note in notes["vqa_rad_hub"])  # told apart by their bytes: the 24 and the corrupt one


def test_images_read_once_decodes_an_image_once_whoever_asks(raw, monkeypatch):
    import argparse

    from data_prep import slake

    decoded = []
    monkeypatch.setattr(slake, "read_image", lambda path, args: decoded.append(path) or ({"bytes": b"x"}, None))
    images = slake.ImagesReadOnce(argparse.Namespace())
    source = raw["slake"] / "imgs/xmlab0/source.jpg"
    found = [images.get("xmlab0/source.jpg", lambda: (source, None)) for _ in range(3)]
    assert decoded == [source] and found[0] is found[2]
    assert images.get("gone", lambda: (None, "image not found"), "gone.jpg") == (None, "image not found: gone.jpg")
    assert len(decoded) == 1


def test_vqa_rad_takes_googles_balanced_split_by_qid(preps, raw):
    lines = (raw["vqa_rad"] / TSV).read_text().split("\n")
    assert lines[0] == "QID_unique\tSPLIT_BALANCED\tINCLUDED_IN_HUMAN_EVAL" and not (raw["vqa_rad"] / TSV).read_text(
    ).endswith("\n")
    listed = dict(line.split("\t")[:2] for line in lines[1:] if line.count("\t") == 2)
    skipped = {skip["path"] for skip in _report(preps["vqa_rad"])["skipped"]}
    records = json.loads((raw["vqa_rad"] / OSF_JSON).read_text())
    usable = {str(r["qid"]) for i, r in enumerate(records) if f"{OSF_JSON}[{i}]" not in skipped}
    data = _data(preps["vqa_rad"])
    for split in ("train", "validation", "test"):
        assert set(data[split]["id"]) == {qid for qid, s in listed.items() if s == split} & usable, split
    assert "23" not in listed and "68" not in listed  # left out of the file, and cut short in it
    assert {"question_type", "image_organ", "phrase_type"} <= set(data["test"].column_names)
    assert {row["phrase_type"] for row in data["test"]} == {"freeform", "para", "test_freeform", "test_para"}


def test_vqa_rad_official_split_draws_validation_by_image(preps, raw):
    data = _data(preps["vqa_rad_official"])
    assert {row["phrase_type"].startswith("test_") for row in data["test"]} == {True}
    assert not {row["phrase_type"] for row in data["train"]} & {"test_freeform", "test_para"}
    train, validation, test = (set(_image_bytes(data[split])) for split in ("train", "validation", "test"))
    assert len(validation) == 2 and not train & validation  # 10% of 18 images, each with its three questions
    assert len(test & train) == 3  # the official test asks about three training images too
    notes = " ".join(_report(preps["vqa_rad_official"])["notes"])
    assert "validation: 6 questions on 2 of train's 18 images" in notes
    assert "3 of the test split's 9 images also have training questions" in notes and f"--balanced-split {TSV}" in notes
    assert "0 of the test split's 6 images also have training questions" in " ".join(_report(preps["vqa_rad"])["notes"])


def test_the_counts_are_compared_with_what_medgemma_evaluated(preps):
    for name, count in {"slake": 1061, "slake_both": 1061, "vqa_rad": 735, "vqa_rad_official": 735,
                        "vqa_rad_hub": 735}.items():
        assert _report(preps[name])["options"]["published_counts"] == {"test": count}, name
    assert ("test: kept 18 English questions; the MedGemma technical report (Table 2) evaluated 1,061 (-1,043)"
            in _report(preps["slake_both"])["notes"])  # the English ones, though the Chinese are kept
    for name in ("vqa_rad", "vqa_rad_official", "vqa_rad_hub"):
        notes = " ".join(_report(preps[name])["notes"])
        assert "VQA-RAD figure (Google's balanced split, its test part) evaluated 735" in notes
        assert "the MedGemma technical report (Table 2) lists 2,248 VQA-RAD examples: the whole OSF release" in notes


def test_vqa_rad_reads_the_hubs_parquet_copy_as_the_official_split(preps):
    osf, hub = _data(preps["vqa_rad_official"]), _data(preps["vqa_rad_hub"])
    for split in ("train", "validation", "test"):
        def rows(data):
            return sorted(zip((q.lower() for q in data[split]["question"]), (a.lower() for a in data[split]["answer"]),
                              data[split]["answer_type"], _image_bytes(data[split])))
        assert rows(osf) == rows(hub), split  # the same questions, images and drawn validation
    assert hub["test"]["id"][:2] == ["test-0", "test-1"] and "phrase_type" not in hub["test"].column_names
    assert "the Hub copy has no qids to join it on" in " ".join(_report(preps["vqa_rad_hub"])["notes"])


def test_slake_takes_the_validation_file_by_either_name(tmp_path):
    from data_prep.slake import _split_files

    (tmp_path / "imgs").mkdir()
    for name in ("train.json", "validate.json", "test.json"):
        (tmp_path / name).write_text("[]")
    assert _split_files(tmp_path)["validation"].name == "validate.json"  # the Slake1.0 zip's
    (tmp_path / "validate.json").rename(tmp_path / "validation.json")  # the Hub's
    assert _split_files(tmp_path)["validation"].name == "validation.json"


def _fails_in_one_line(argv: list[str], capsys, *words: str) -> None:
    assert data_prep_main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("data_prep: ") and len(error.splitlines()) == 1, error
    assert all(word in error for word in words), error


def test_each_reader_explains_itself_and_refuses_what_it_cannot_read_in_one_line(raw, tmp_path, capsys):
    for reader in ("slake", "vqa_rad"):
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args([reader, "--help"])
        assert exited.value.code == 0 and "--protocol" in capsys.readouterr().out
        _fails_in_one_line([reader, "--src", str(tmp_path), "--out", str(tmp_path / "out")], capsys, "--src")
    slake = tmp_path / "slake"
    shutil.copytree(raw["slake"], slake, ignore=shutil.ignore_patterns("xmlab*"))
    (slake / "test.json").write_text((raw["slake"] / "test.json").read_text()[:500])  # a download cut short
    _fails_in_one_line(["slake", "--src", str(slake), "--out", str(tmp_path / "out")], capsys, "test.json")
    osf = tmp_path / "vqa_rad"
    shutil.copytree(raw["vqa_rad"], osf, ignore=shutil.ignore_patterns("*.jpg", "vqa-rad"))
    (osf / TSV).write_text("qid\tsplit\n0\ttest")
    _fails_in_one_line(["vqa_rad", "--src", str(osf), "--out", str(tmp_path / "out"), "--balanced-split",
                        str(osf / TSV)], capsys, "header")
    (osf / OSF_JSON).write_text((raw["vqa_rad"] / OSF_JSON).read_text()[:500])
    _fails_in_one_line(["vqa_rad", "--src", str(osf), "--out", str(tmp_path / "out")], capsys, OSF_JSON)
    _fails_in_one_line(["vqa_rad", "--src", str(raw["vqa_rad"] / "vqa-rad"), "--out", str(tmp_path / "out"),
                        "--balanced-split", str(raw["vqa_rad"] / TSV)], capsys, "qids", "OSF")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["slake", "--src", "x", "--out", "y", "--languages", "en,fr"])
    assert "SLAKE's languages are en and zh" in capsys.readouterr().err
