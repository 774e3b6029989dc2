"""The chest X-ray findings readers of MedGemma's model card (MIMIC-CXR-JPG's five findings, CheXpert, ChestX-ray14):
the label policies checked by hand, and each stand-in, in its publisher's layout, prepared once through the CLI as a
user runs it (CheXpert with and without its test set, ChestX-ray14 with and without Google's labels, MIMIC-CXR with
either labeler and the radiologist's test labels)."""
from __future__ import annotations

import csv
import gzip
import json
from collections import Counter
from pathlib import Path

import pytest
from datasets import load_from_disk

from data_prep._common import PrepReport, hashed_id, id_key
from data_prep._findings import (Candidate, Film, FindingCounts, FindingLabels, LabelPolicy, draw_validation,
                                 one_split_per_patient, read_codes, scored_films)
from data_prep.__main__ import build_parser
from data_prep.__main__ import main as data_prep_main
from medtune.tasks import _medgemma_prompts as prompts
from medtune.tasks import get_task
from medtune.tasks.cxr_findings import CXR14_FINDINGS, FIVE_FINDINGS
from tests.conftest import prepare_stand_in, run_cli

FIVE_COLUMNS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")


# ----------------------------------------------------------------------------- the label policies, by hand
@pytest.mark.parametrize("uncertain, unmentioned, values, why", [
    ("negative", "negative", (1, 0, 0, 0, 1), ("", "", "", "", "")),  # the MAIRA test set's reading (the default)
    ("positive", "negative", (1, 0, 1, 0, 1), ("", "", "", "", "")),  # U-Ones
    ("exclude", "negative", (1, 0, -1, 0, 1), ("", "", "uncertain", "", "")),
    ("negative", "exclude", (1, 0, 0, -1, 1), ("", "", "", "not mentioned", "")),
    ("exclude", "exclude", (1, 0, -1, -1, 1), ("", "", "uncertain", "not mentioned", "")),  # the Med-Gemini set's
    ("positive", "exclude", (1, 0, 1, -1, 1), ("", "", "", "not mentioned", "")),
])
def test_a_policy_reads_uncertain_and_unmentioned_labels_as_it_says(uncertain, unmentioned, values, why):
    codes = ["1.0", "0.0", "-1.0", "", " 1 "]  # CheXpert's codes; a bare 1 is 1.0 too
    assert LabelPolicy(uncertain, unmentioned).read(codes) == FindingLabels(values, why)


def test_the_default_policy_reads_uncertain_and_unmentioned_as_negative():
    assert LabelPolicy() == LabelPolicy("negative", "negative")
    args = build_parser().parse_args(["chexpert", "--src", "x", "--out", "y"])
    assert (args.uncertain, args.unmentioned, args.protocol) == ("negative", "negative", "medgemma")


@pytest.mark.parametrize("code", ["2.0", "yes", "nan", "-0.5"])
def test_a_code_that_is_none_of_chexperts_makes_its_row_unreadable(code):
    with pytest.raises(ValueError):
        LabelPolicy().read_one(code)
    row = dict(zip(FIVE_COLUMNS, ["1.0", "", code, "0.0", "-1.0"]))
    assert read_codes(LabelPolicy(), row, FIVE_COLUMNS) == (
        None, f"label Consolidation is {code!r}, not 1.0, 0.0, -1.0 or blank")


def _film(split: str, patient: str, values: tuple[int, ...], why: tuple[str, ...] | None = None) -> Film:
    name = f"{patient}-{split}-{values}"
    return Film(split, patient, name, name, (Candidate(Path(name), name, "PA"),),
                FindingLabels(values, why or ("",) * len(values)))


def test_counts_per_finding_say_how_many_are_present_absent_and_not_scored_and_why():
    counts = FindingCounts(["atelectasis", "edema"])
    for values, why in [((1, 0), ("", "")), ((-1, 1), ("uncertain", "")), ((-1, -1), ("not mentioned", "uncertain")),
                        ((0, 0), ("", ""))]:
        counts.add("train", FindingLabels(values, why))
    counts.add("test", FindingLabels((1, 1), ("", "")))
    assert counts.per_finding("train") == {
        "atelectasis": {"positives": 1, "negatives": 1, "not_scored": 2,
                        "not_scored_by_reason": {"not mentioned": 1, "uncertain": 1}},
        "edema": {"positives": 1, "negatives": 2, "not_scored": 1, "not_scored_by_reason": {"uncertain": 1}}}
    assert counts.per_finding("validation")["edema"] == {"positives": 0, "negatives": 0, "not_scored": 0,
                                                         "not_scored_by_reason": {}}


def test_a_film_whose_every_finding_is_excluded_is_skipped_and_listed_by_hash():
    report = PrepReport(dataset="x", source="x", hash_key=b"k")
    kept = scored_films([_film("train", "p1", (0, -1), ("", "uncertain")),
                         _film("train", "p2", (-1, -1), ("uncertain", "not mentioned"))], report)
    assert [film.patient for film in kept] == ["p1"]
    assert report.skipped == [{"path": f"image {hashed_id('p2-train-(-1, -1)', b'k')}",
                               "reason": "every finding excluded (not mentioned, uncertain)"}]


def test_a_patient_in_several_splits_keeps_the_test_then_the_validation_films():
    report = PrepReport(dataset="x", source="x", hash_key=b"k")
    films = [_film("train", "a", (1,)), _film("test", "a", (0,)), _film("train", "b", (1,)),
             _film("validation", "b", (0,)), _film("train", "c", (1,))]
    kept = one_split_per_patient(films, report)
    assert [(f.patient, f.split) for f in kept] == [("a", "test"), ("b", "validation"), ("c", "train")]
    assert [s["reason"] for s in report.skipped] == ["its patient is also in the test split",
                                                      "its patient is also in the validation split"]


def test_validation_drawn_from_train_takes_a_tenth_of_the_patients_whole():
    films = [_film("train", f"p{i}", (i % 2,)) for i in range(20) for _ in range(2)] + [_film("test", "q", (1,))]
    drawn = draw_validation(films, seed=1)
    moved = {f.patient for f in drawn if f.split == "validation"}
    assert len(moved) == 2 and not moved & {f.patient for f in drawn if f.split == "train"}
    assert [f.split for f in drawn if f.patient == "q"] == ["test"]
    assert draw_validation(films, seed=1) == drawn


# ----------------------------------------------------------------------------- each stand-in, prepared
# name -> (reader, stand-in options, CLI options, the raw folder of another prep to read instead)
PREPS = {
    "mimic": ("mimic_cxr_findings", {}, ("--num-proc", "2"), None),
    "mimic_negbio": ("mimic_cxr_findings", None, ("--labeler", "negbio", "--test-labels", "radiologist",
                                                  "--uncertain", "exclude", "--unmentioned", "exclude",
                                                  "--protocol", "medgemma-1.5", "--num-proc", "1"), "mimic"),
    "chexpert": ("chexpert", {}, ("--num-proc", "1"), None),
    "chexpert_no_test": ("chexpert", None, ("--views", "all", "--uncertain", "positive", "--num-proc", "1"),
                         "chexpert"),
    "cxr14": ("cxr14", {}, ("--google-labels", "four_findings_expert_labels", "--num-proc", "1"), None),
    "cxr14_nih": ("cxr14", {"layout": "kaggle"}, ("--num-proc", "1"), None),
}


@pytest.fixture(scope="module")
def preps(tmp_path_factory) -> dict[str, Path]:
    """name -> the folder holding the raw stand-in (raw/), its prepared DatasetDict (data/) and the prep's terminal
    output (stderr.txt). chexpert_no_test reads CheXpert's download without its test set (CheXpert/)."""
    from data_prep import get_reader

    roots = {}
    for name, (reader, standin, options, reads) in PREPS.items():
        root = roots[name] = tmp_path_factory.mktemp(name)
        if reads is None:
            get_reader(reader).synthesize(root / "raw", **standin)
        elif name == "chexpert_no_test":
            (root / "raw").mkdir()
            (root / "raw/CheXpert-v1.0-small").symlink_to(roots[reads] / "raw/CheXpert-v1.0-small")
        else:
            (root / "raw").symlink_to(roots[reads] / "raw")
        result = prepare_stand_in(root, reader, root / "raw", *options)
        (root / "stderr.txt").write_text(result.stderr)
    return roots


def _report(root: Path) -> dict:
    return json.loads((root / "data/prep_report.json").read_text())


def _csv_rows(path: Path) -> list[dict[str, str]]:
    """A raw CSV's well-formed rows, as a user's own script would read them."""
    with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as f:
        return [row for row in csv.DictReader(f) if None not in row.values() and None not in row]


def _codes(path: Path, by: str) -> dict[str, list[str]]:
    """The keyed hash of each row's `by` column (as the rows store it) -> the row's codes of the five findings."""
    return {hashed_id(row[by], id_key()): [row[c] for c in FIVE_COLUMNS] for row in _csv_rows(path)}


def _expected(codes: list[str], uncertain: str, unmentioned: str) -> list[int]:
    """The labels a policy gives CheXpert's codes, written out again by hand."""
    reading = {"1.0": 1, "0.0": 0, "-1.0": {"negative": 0, "positive": 1, "exclude": -1}[uncertain],
               "": {"negative": 0, "exclude": -1}[unmentioned]}
    return [reading[code] for code in codes]


def test_each_reader_writes_its_splits_and_lists_every_broken_entry_by_reason(preps):
    expected = {  # split sizes; skips by reason
        "mimic": ({"train": 22, "validation": 6, "test": 10},
                  {"malformed CSV row": 1, "no PA/AP image": 1, "no row in mimic-cxr-2.0.0-chexpert.csv.gz": 1,
                   "label Edema is 'yes', not 1.0, 0.0, -1.0 or blank": 1, "its patient is also in the test split": 1,
                   "unreadable": 1, "image listed but missing": 1}),
        "mimic_negbio": ({"train": 22, "validation": 6, "test": 9},
                         {"malformed CSV row": 1, "no PA/AP image": 1, "no row in mimic-cxr-2.0.0-negbio.csv.gz": 1,
                          "no row in mimic-cxr-2.1.0-test-set-labeled.csv": 1,
                          "its patient is also in the test split": 1, "every finding excluded (not mentioned)": 1,
                          "unreadable": 1, "image listed but missing": 1}),
        "chexpert": ({"train": 28, "validation": 8, "test": 11},
                     {"malformed CSV row": 1, "label Consolidation is '2.0', not 1.0, 0.0, -1.0 or blank": 1,
                      "its patient is also in the validation split": 1, "unreadable": 1,
                      "image listed but missing": 1}),
        "chexpert_no_test": ({"train": 31, "validation": 3, "test": 10},
                             {"malformed CSV row": 1, "label Consolidation is '2.0', not 1.0, 0.0, -1.0 or blank": 1,
                              "its patient is also in the test split": 1, "unreadable": 1,
                              "image listed but missing": 1}),
        "cxr14": ({"train": 24, "validation": 6, "test": 10},
                  {"malformed CSV row": 2, "in train_val_list.txt, without a row in the Data_Entry CSV": 1,
                   "unreadable": 1, "image listed but missing": 1}),
        "cxr14_nih": ({"train": 26, "validation": 3, "test": 16},
                      {"malformed CSV row": 1, "in train_val_list.txt, without a row in the Data_Entry CSV": 1,
                       "its patient is also in the test split": 1, "unreadable": 1, "image listed but missing": 1}),
    }
    for name, (sizes, reasons) in expected.items():
        report, data = _report(preps[name]), load_from_disk(str(preps[name] / "data"))
        assert ({split: counts["total"] for split, counts in report["splits"].items()},
                report["skipped_by_reason"]) == (sizes, reasons), name
        assert {split: len(data[split]) for split in data} == sizes
        assert {"id", "image", "messages", "answer", "finding_labels", "patient", "study", "view"} == set(
            data["test"].column_names)


def test_no_patient_is_in_two_splits(preps):
    for name, root in preps.items():
        data = load_from_disk(str(root / "data"))
        patients = {split: set(data[split]["patient"]) for split in data}
        assert not patients["train"] & patients["validation"], name
        assert not (patients["train"] | patients["validation"]) & patients["test"], name


def test_mimic_labels_follow_the_labeler_and_the_policy(preps):
    raw = preps["mimic"] / "raw"
    for name, labeler, test_csv, uncertain, unmentioned in [
            ("mimic", "chexpert", "mimic-cxr-2.0.0-chexpert.csv.gz", "negative", "negative"),
            ("mimic_negbio", "negbio", "mimic-cxr-2.1.0-test-set-labeled.csv", "exclude", "exclude")]:
        data = load_from_disk(str(preps[name] / "data"))
        for split in data:
            csv_name = test_csv if split == "test" else f"mimic-cxr-2.0.0-{labeler}.csv.gz"
            codes = _codes(raw / csv_name, "study_id")
            for row in data[split]:
                assert row["finding_labels"] == _expected(codes[row["study"]], uncertain, unmentioned), (name, split)
    # the stand-in's first study codes atelectasis uncertain and cardiomegaly blank, in both labelers' files
    assert any(row["finding_labels"][:2] == [0, 0] for row in load_from_disk(str(preps["mimic"] / "data"))["train"])
    excluded = load_from_disk(str(preps["mimic_negbio"] / "data"))["train"]
    assert any(row["finding_labels"][:2] == [-1, -1] for row in excluded)


def test_chexpert_labels_follow_the_policy_and_views_with_and_without_its_test_set(preps):
    raw, key = preps["chexpert"] / "raw", id_key()
    csvs = {"train.csv": raw / "CheXpert-v1.0-small/train.csv", "valid.csv": raw / "CheXpert-v1.0-small/valid.csv",
            "test": raw / "CheXpert/test_labels.csv"}
    codes = {hashed: row for path in csvs.values() for hashed, row in _codes(path, "Path").items()}
    for name, uncertain in (("chexpert", "negative"), ("chexpert_no_test", "positive")):
        data = load_from_disk(str(preps[name] / "data"))
        for split in data:
            for row in data[split]:
                assert row["finding_labels"] == _expected(codes[row["id"]], uncertain, "negative"), (name, split)
    with_test, without = (load_from_disk(str(preps[name] / "data")) for name in ("chexpert", "chexpert_no_test"))
    frontal = [r for r in _csv_rows(csvs["test"]) if "_frontal" in r["Path"]]
    assert sorted(with_test["test"]["id"]) == sorted(hashed_id(r["Path"], key) for r in frontal)
    assert sorted(without["test"]["id"]) == sorted(hashed_id(r["Path"], key) for r in _csv_rows(csvs["valid.csv"]))
    assert {r["view"] for r in with_test["train"]} == {"AP", "PA"} and {r["view"] for r in with_test["test"]} == {
        "Frontal"}  # test_labels.csv has no view columns: the file name says frontal
    assert "Lateral" in set(without["train"]["view"]) | set(without["test"]["view"])  # --views all
    assert any(row["finding_labels"][0] == 1 and codes[row["id"]][0] == "-1.0" for row in without["train"])
    notes = " ".join(_report(preps["chexpert"])["notes"])
    assert "lateral films left out (--views frontal): test 2, train 6, validation 2" in notes
    assert "test: valid.csv (radiologists' labels)" in " ".join(_report(preps["chexpert_no_test"])["notes"])


def test_cxr14_scores_googles_three_findings_and_nihs_pneumothorax_alone(preps):
    raw, key = preps["cxr14"] / "raw", id_key()
    google = {hashed_id(row["Image Index"], key): [{"YES": 1, "NO": 0}[row[c]] for c in
                                                   ("Airspace opacity", "Pneumothorax", "Fracture")]
              for part in ("test", "validation")
              for row in _csv_rows(raw / f"four_findings_expert_labels/{part}_labels.csv")}
    nih = {hashed_id(row["Image Index"], key): [-1, int("Pneumothorax" in row["Finding Labels"].split("|")), -1]
           for row in _csv_rows(raw / "Data_Entry_2017_v2020.csv")}
    with_google, without = (load_from_disk(str(preps[name] / "data")) for name in ("cxr14", "cxr14_nih"))
    for split in ("validation", "test"):
        assert [google[i] for i in with_google[split]["id"]] == with_google[split]["finding_labels"]
    for data, splits in ((with_google, ("train",)), (without, ("train", "validation", "test"))):
        for split in splits:
            assert [nih[i] for i in data[split]["id"]] == data[split]["finding_labels"]
    test_list = (raw / "test_list.txt").read_text().split()
    assert sorted(without["test"]["id"]) == sorted(hashed_id(name, key) for name in test_list)  # Kaggle's layout
    per_finding = _report(preps["cxr14"])["splits"]["train"]["per_finding"]
    assert per_finding["fracture"]["not_scored_by_reason"] == {"not in NIH's labels": len(with_google["train"])}
    notes = {name: " ".join(_report(preps[name])["notes"]) for name in ("cxr14", "cxr14_nih")}
    assert "train rows score pneumothorax only" in notes["cxr14"] and "6 images of train_val_list.txt left out" in \
        notes["cxr14"]
    assert "test: NIH's test_list.txt with NIH's labels (pneumothorax only)" in notes["cxr14_nih"]


def test_the_report_counts_each_findings_labels_per_split_as_the_rows_hold_them(preps):
    for name, root in preps.items():
        report, data = _report(root), load_from_disk(str(root / "data"))
        keys = list(report["task"]["options"])
        for split in data:
            columns = list(zip(*data[split]["finding_labels"])) or [()] * len(keys)
            for key, column in zip(keys, columns):
                counted = report["splits"][split]["per_finding"][key]
                held = Counter(column)
                assert (counted["positives"], counted["negatives"], counted["not_scored"]) == (
                    held[1], held[0], held[-1]), (name, split, key)
                assert sum(counted["not_scored_by_reason"].values()) == held[-1]
    # the excluded pairs by reason, counted again from the raw codes of the rows kept
    codes = _codes(preps["mimic"] / "raw/mimic-cxr-2.0.0-negbio.csv.gz", "study_id")
    kept = [codes[study] for study in load_from_disk(str(preps["mimic_negbio"] / "data"))["train"]["study"]]
    per_finding = _report(preps["mimic_negbio"])["splits"]["train"]["per_finding"]
    for key, column in zip(FIVE_FINDINGS, zip(*kept)):
        said = Counter({"-1.0": "uncertain", "": "not mentioned"}.get(code) for code in column)
        assert per_finding[key]["not_scored_by_reason"] == {why: n for why, n in said.items() if why}, key
    assert {why for f in per_finding.values() for why in f["not_scored_by_reason"]} == {"uncertain", "not mentioned"}


def test_messages_ask_the_scored_findings_alone_with_the_reports_prompt(preps):
    for name, protocol, findings in [("mimic", "medgemma", FIVE_FINDINGS), ("chexpert", "medgemma", FIVE_FINDINGS),
                                     ("mimic_negbio", "medgemma-1.5", FIVE_FINDINGS),
                                     ("cxr14", "medgemma", CXR14_FINDINGS)]:
        task = get_task("cxr_findings", None, findings, protocol=protocol)
        report = _report(preps[name])
        assert report["task"] == {"name": "cxr_findings", "question": "Is there {finding} in this image?",
                                  "options": findings, "protocol": protocol}
        for row in load_from_disk(str(preps[name] / "data"))["train"]:
            scored = [i for i, label in enumerate(row["finding_labels"]) if label != -1]
            users = [m for m in row["messages"] if m["role"] == "user"]
            answers = [m["content"][0]["text"] for m in row["messages"] if m["role"] == "assistant"]
            assert [u["content"][-1]["text"] for u in users] == [task.prompt(i) for i in scored]
            assert answers == [f"Final Answer: {'yes' if row['finding_labels'][i] else 'no'}" for i in scored]
            assert [c["type"] for u in users for c in u["content"]].count("image") == 1
            assert users[0]["content"][0]["type"] == "image"
            assert row["answer"] == task.summary(row["finding_labels"])
    mimic = load_from_disk(str(preps["mimic"] / "data"))["test"][0]
    assert mimic["messages"][0]["content"][-1]["text"] == "Is there atelectasis in this image? " + prompts.A7_FINDINGS[
        len("{question} "):]
    assert mimic["image"].size == (896, 896)
    cxr14 = load_from_disk(str(preps["cxr14"] / "data"))["test"][0]
    assert cxr14["messages"][-2]["content"][-1]["text"].startswith("Are there any fractures in the image? You may")


def test_each_test_split_is_compared_with_the_count_the_report_evaluated(preps):
    published = {"mimic": 2461, "mimic_negbio": 2461, "chexpert": 668, "cxr14": 1962}
    for name, count in published.items():
        report = _report(preps[name])
        assert report["options"]["published_counts"] == {"test": count}, name
        assert any(n.startswith("test: kept ") and f"evaluated {count:,}" in n for n in report["notes"]), name
    for name in ("chexpert_no_test", "cxr14_nih"):
        assert "published_counts" not in _report(preps[name])["options"]
    notes = {name: " ".join(_report(preps[name])["notes"]) for name in published}
    assert "MAIRA test set" in notes["mimic"] and "not public" in notes["mimic"]
    assert "frontal images (the report's count every view" in notes["chexpert"]
    assert "test: labels from mimic-cxr-2.1.0-test-set-labeled.csv (one radiologist)" in notes["mimic_negbio"]


def test_no_identifier_is_written_in_clear_and_the_terminal_names_the_skipped_ones(preps):
    raw = {name: preps[name] / "raw" for name in ("mimic", "chexpert", "cxr14")}
    identifiers = {
        "mimic": {r["subject_id"] for r in _csv_rows(raw["mimic"] / "mimic-cxr-2.0.0-split.csv.gz")} |
                 {r["study_id"] for r in _csv_rows(raw["mimic"] / "mimic-cxr-2.0.0-split.csv.gz")},
        "chexpert": {p.name for p in (raw["chexpert"] / "CheXpert-v1.0-small/train").iterdir()},
        "cxr14": {r["Image Index"][:8] for r in _csv_rows(raw["cxr14"] / "Data_Entry_2017_v2020.csv")},
    }
    for name, root in preps.items():
        written = (root / "data/prep_report.json").read_text()
        data = load_from_disk(str(root / "data"))
        stored = {v for split in data for column in ("id", "patient", "study") for v in data[split][column]}
        for identifier in identifiers[name.split("_")[0]]:
            assert identifier not in written, (name, identifier)
        assert all(len(v) == 20 and int(v, 16) >= 0 for v in stored)
    assert "p19/p19000001/s" in (preps["mimic"] / "stderr.txt").read_text()  # the study without a label row
    assert "CheXpert-v1.0-small/train/patient64541/study5/" in (preps["chexpert"] / "stderr.txt").read_text()


def test_each_reader_explains_itself_and_refuses_a_wrong_folder_in_one_line(tmp_path, capsys):
    for reader in ("mimic_cxr_findings", "chexpert", "cxr14"):
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args([reader, "--help"])
        assert exited.value.code == 0 and "--protocol" in capsys.readouterr().out
        assert data_prep_main([reader, "--src", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("data_prep: ") and len(error.splitlines()) == 1, error


# ----------------------------------------------------------------------------- each stand-in, trained and evaluated
# the demo's settings for a random model (recipes/demo/tissue_classification.yaml), without quantization
TINY = ["model.name_or_path=tiny", "model.precision=fp32", "quantization.load_in_4bit=false", "lora.alpha=32",
        "training.learning_rate=3e-3", "training.per_device_train_batch_size=8",
        "training.activation_checkpointing=false", "training.eval_strategy=no", "training.save_strategy=no",
        "training.dataloader_num_workers=0", "tracking.backend=none", "eval.num_workers=0"]


def _table_rows(stdout: str) -> dict[str, list[str]]:
    """The terminal's comparison table: metric -> its cells (out-of-box, fine-tuned)."""
    rows = [line.strip("|").split("|") for line in stdout.splitlines() if line.startswith("| cxr_findings ")]
    return {cells[1].strip(): [c.strip() for c in cells[2:]] for cells in rows}


def test_the_tiny_model_learns_the_mimic_findings_and_the_table_shows_each_findings_f1_and_auroc(preps, tmp_path):
    """raw -> data_prep -> `medtune train` (a film's five questions packed into one sequence) -> evaluation by the
    report's protocol (generated yes/no after "Final Answer:"), then option scoring for each finding's AUROC."""
    from medtune.cli import main as cli_main

    run = tmp_path / "run"
    result = run_cli("medtune", "train", "recipes/cxr_findings/qlora.yaml", *TINY,
                     f"data.path={preps['mimic'] / 'data'}", f"training.output_dir={run}",
                     "training.num_train_epochs=12", "eval.max_new_tokens=16")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = {name: json.loads((run / f"eval/{name}.json").read_text())["metrics"]
               for name in ("baseline", "finetuned")}
    assert metrics["finetuned"]["macro_f1"] >= metrics["baseline"]["macro_f1"] + 0.3, metrics
    assert metrics["finetuned"]["unparsable"] == 0
    table = _table_rows(result.stdout)
    assert all(f"f1_{key}" in table for key in FIVE_FINDINGS) and float(table["macro_f1"][1]) == pytest.approx(
        metrics["finetuned"]["macro_f1"], abs=5e-4)

    assert cli_main(["eval", "recipes/cxr_findings/qlora.yaml", "--adapter", str(run), *TINY, "eval.mode=score",
                     f"data.path={preps['mimic'] / 'data'}", f"training.output_dir={tmp_path / 'scored'}"]) == 0
    scored = json.loads((tmp_path / "scored/eval/adapter.json").read_text())["metrics"]
    assert all(0 <= scored[f"auroc_{key}"] <= 1 for key in FIVE_FINDINGS) and 0 <= scored["macro_auroc"] <= 1
    assert (tmp_path / "scored/eval/adapter_roc.png").is_file()


@pytest.mark.parametrize("name, recipe", [("chexpert", "chexpert-qlora.yaml"), ("cxr14", "qlora.yaml")])
def test_chexpert_and_cxr14_stand_ins_train_and_are_scored_per_finding(preps, name, recipe, tmp_path):
    run = tmp_path / "run"
    result = run_cli("medtune", "train", f"recipes/cxr_findings/{recipe}", *TINY, f"data.path={preps[name] / 'data'}",
                     f"training.output_dir={run}", "training.num_train_epochs=1", "eval.baseline=false",
                     "eval.mode=score")
    assert result.returncode == 0, result.stderr[-3000:]
    findings = FIVE_FINDINGS if name == "chexpert" else CXR14_FINDINGS
    metrics = json.loads((run / "eval/finetuned.json").read_text())["metrics"]
    assert all(f"f1_{key}" in metrics and f"auroc_{key}" in metrics for key in findings)
    assert set(_table_rows(result.stdout)) >= {"macro_f1", "macro_auroc"}
