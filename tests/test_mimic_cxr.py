"""MIMIC-CXR report generation: report sections, data_prep on the synthetic MIMIC-CXR-JPG layout, the metrics,
and the tiny model learning to write reports offline."""
from __future__ import annotations

import csv
import gzip
import json
import shutil
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from data_prep._report_sections import ReportSections, decode_report, report_sections
from data_prep.mimic_cxr import _FINDINGS, METADATA_CSV, SPLIT_CSV, expected_sections, synthetic_film, synthetic_report
from medtune.tasks import get_task
from tests.conftest import REPO, run_cli

TASK = get_task("report_generation")


# ----------------------------------------------------------------------------- report sections
@pytest.mark.parametrize("variant", range(6), ids=["standard", "wet read + addendum", "findings and impression",
                                                   "clinical history + conclusion", "impression only", "typos"])
def test_sections_are_extracted_across_header_variants(variant):
    findings, impression = _FINDINGS[1]
    text = synthetic_report(variant, "___F with cough", findings, impression)
    assert report_sections(text) == expected_sections(variant, "___F with cough", findings, impression)


def test_a_real_format_report_with_an_addendum_on_top():
    text = ("                                 FINAL REPORT\n"
            " ADDENDUM:  The impression was discussed with Dr. ___ at 10:00 am.\n \n"
            " EXAMINATION:  CHEST (PORTABLE AP)\n \n"
            " INDICATION:  ___ year old man with hypoxia  // ?pna\n \n"
            " COMPARISON:  ___\n \n"
            " FINDINGS: \n \n"
            " Lung volumes are low. There is mild pulmonary vascular congestion.  No large\n"
            " pleural effusion.\n \n"
            " IMPRESSION: \n \n"
            " 1. Mild pulmonary vascular congestion.\n"
            " 2. No pneumothorax.\n")
    assert report_sections(text) == ReportSections(
        "___ year old man with hypoxia // ?pna",
        "Lung volumes are low. There is mild pulmonary vascular congestion. No large pleural effusion.",
        "1. Mild pulmonary vascular congestion. 2. No pneumothorax.")


HEADER_VARIANTS = {"findings": ["FINDINGS", "FINDING", "FINDNGS", "PA AND LATERAL VIEWS OF THE CHEST"],
                   "impression": ["IMPRESSION", "CONCLUSION", "IMPRESSON", "IMPRESSIONS"],
                   "indication": ["INDICATION", "REASON FOR EXAMINATION", "CLINICAL INDICATION"]}
words = st.lists(st.sampled_from(["lungs", "are", "clear", "no", "effusion", "___", "1.", "heart", "size",
                                  "normal", "(stable)", "left-sided", "10:30", "PA", "x-ray"]),
                 min_size=1, max_size=30).map(" ".join)


@given(sections=st.fixed_dictionaries({name: st.tuples(st.sampled_from(headers), words)
                                       for name, headers in HEADER_VARIANTS.items()}),
       order=st.permutations(["indication", "findings", "impression"]), addendum=st.booleans(),
       same_line=st.booleans(), width=st.integers(20, 80))
def test_sections_survive_any_header_spelling_order_and_wrapping(sections, order, addendum, same_line, width):
    import textwrap

    lines = [" " * 33 + "FINAL REPORT", " EXAMINATION:  CHEST (PA AND LAT)", " "]
    for name in order:
        header, body = sections[name]
        wrapped = [f" {line}" for line in textwrap.wrap(body, width, break_on_hyphens=False, break_long_words=False)]
        lines += ([f" {header}:  {wrapped[0][1:]}", *wrapped[1:]] if same_line else [f" {header}: ", " ", *wrapped])
        lines.append(" ")
    if addendum:
        lines += [" ADDENDUM:  Discussed with Dr. ___.", " "]
    got = report_sections("\n".join(lines))
    assert got == ReportSections(*(" ".join(sections[n][1].split()) for n in ("indication", "findings", "impression")))


@given(st.text())
def test_any_text_parses_without_crashing(text):
    sections = report_sections(text)
    assert all(isinstance(v, str) for v in (sections.indication, sections.findings, sections.impression))


def test_reports_that_are_not_utf8_are_read_not_lost():
    assert decode_report("patient’s cough".encode("cp1252")) == ("patient’s cough", False)
    assert decode_report(b"plain") == ("plain", True)


# ----------------------------------------------------------------------------- data_prep
def _csv(path):
    with gzip.open(path, "rt") as f:
        return [row for row in csv.DictReader(f) if row.get("split", "x") and row.get("study_id")]


def test_data_prep_keeps_frontal_views_the_official_split_and_lists_every_skipped_study(small_mimic):
    from datasets import load_from_disk

    from data_prep._common import hashed_id, id_key

    key, raw = id_key(), small_mimic / "raw"
    data = load_from_disk(str(small_mimic / "data"))
    split_of = {r["study_id"]: {"train": "train", "validate": "validation", "test": "test"}[r["split"]]
                for r in _csv(raw / SPLIT_CSV)}
    view_of = {r["dicom_id"]: r["ViewPosition"] for r in _csv(raw / METADATA_CSV)}
    study_of_hash = {hashed_id(study, key): study for study in split_of}
    for split, rows in data.items():
        assert set(rows["view"]) <= {"PA", "AP"}
        for row in rows.select_columns(["study", "view"]):
            assert split_of[study_of_hash[row["study"]]] == split  # the official split, as published
    assert sum(len(d) for d in data.values()) == len({s for d in data.values() for s in d["study"]})  # 1 per study
    # a study with both PA and AP films keeps its PA one
    both = {r["study_id"] for r in _csv(raw / METADATA_CSV) if r["ViewPosition"] == "AP"} & \
           {r["study_id"] for r in _csv(raw / METADATA_CSV) if r["ViewPosition"] == "PA"}
    kept_views = {study_of_hash[s]: v for d in data.values() for s, v in zip(d["study"], d["view"])}
    assert both and {kept_views[s] for s in both if s in kept_views and not s.startswith("59")} == {"PA"}
    assert "LATERAL" in view_of.values()

    report = json.loads((small_mimic / "data/prep_report.json").read_text())
    reasons = sorted(s["reason"].split(":")[0] for s in report["skipped"])
    assert reasons == sorted(["malformed CSV row", "no PA/AP image", "no PA/AP image", "empty report",
                              "report has no FINDINGS or IMPRESSION", "no report file (sSTUDY.txt under files/ or "
                              "mimic-cxr-reports/files/)", "unreadable", "no readable frontal image",
                              "image listed in the CSVs but missing"])
    assert any("not UTF-8" in note for note in report["notes"])
    assert any("LATERAL" in note for note in report["notes"])
    stderr = (small_mimic / "prep_stderr.txt").read_text()
    for subject in {r["subject_id"] for r in _csv(raw / SPLIT_CSV)}:  # ids in clear on the terminal, never in files
        assert subject not in (small_mimic / "data/prep_report.json").read_text()
    assert "study p19/" in stderr and "empty report" in stderr


def test_prepared_rows_carry_the_sections_and_a_model_sized_image(small_mimic):
    from datasets import load_from_disk

    row = load_from_disk(str(small_mimic / "data"))["train"][0]
    assert row["image"].size == (896, 896)
    assert row["answer"] == TASK.answer(row["findings"], row["impression"])
    assert row["messages"][0]["content"][1]["text"] == TASK.prompt(row["indication"])
    assert row["findings"] in {f for f, _ in _FINDINGS} | {""}
    assert "discussed" not in row["answer"]  # addenda stay out of the target


def test_reports_unzipped_on_their_own_are_found(small_mimic, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(small_mimic / "raw", raw)
    for report in list((raw / "files").rglob("s*.txt")):
        target = raw / "mimic-cxr-reports" / report.relative_to(raw)
        target.parent.mkdir(parents=True, exist_ok=True)
        report.rename(target)
    result = run_cli(sys.executable, "-m", "data_prep", "mimic_cxr", "--src", str(raw), "--out", str(tmp_path / "o"),
                     "--num-proc", "1", "--views", "PA", "--images-per-study", "0")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "o/prep_report.json").read_text())
    assert report["splits"]["train"]["per_class"].keys() == {"PA"}
    assert report["options"]["views"] == ["PA"] and report["options"]["images_per_study"] == 0


@pytest.mark.parametrize("damage, words", [("missing", "has no mimic-cxr-2.0.0-split.csv.gz"),
                                           ("not gzip", "cannot read mimic-cxr-2.0.0-split.csv.gz"),
                                           ("wrong header", "no column split")])
def test_unusable_csvs_are_one_line_exit_2(small_mimic, tmp_path, damage, words):
    raw = tmp_path / "raw"
    shutil.copytree(small_mimic / "raw", raw)
    split_csv = raw / SPLIT_CSV
    if damage == "missing":
        split_csv.unlink()
    elif damage == "not gzip":
        split_csv.write_bytes(b"\x1f\x8b\x08garbage")
    else:
        with gzip.open(split_csv, "wt") as f:
            f.write("dicom_id,study_id,subject_id\n")
    result = run_cli(sys.executable, "-m", "data_prep", "mimic_cxr", "--src", str(raw), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_reduced_scale_decode_gives_the_same_picture_as_a_full_decode(tmp_path):
    from data_prep._common import read_image_resized

    path = tmp_path / "film.jpg"
    synthetic_film(2, np.random.default_rng(0)).save(path, quality=90)
    fast, problem = read_image_resized(path, 896)
    assert problem is None
    with Image.open(path) as full:
        plain = np.asarray(full.convert("L").resize((896, 896), Image.Resampling.BILINEAR), dtype=float)
    with Image.open(__import__("io").BytesIO(fast)) as image:
        assert image.size == (896, 896) and image.mode == "L"
        assert np.abs(np.asarray(image, dtype=float) - plain).mean() < 3  # of 255: the same picture


# ----------------------------------------------------------------------------- metrics
def test_metrics_reward_the_right_report_and_count_empty_ones():
    refs = ["FINDINGS: The lungs are clear.\nIMPRESSION: No acute process.", "IMPRESSION: Moderate right effusion."]
    perfect = TASK.compute_metrics(refs, refs)
    wrong = TASK.compute_metrics(refs, ["FINDINGS: Fracture of the femur.", ""])
    assert perfect["rouge_l"] == pytest.approx(1.0) and perfect["bleu4"] == pytest.approx(1.0)
    assert wrong["rouge_l"] < 0.2 and wrong["bleu4"] < 0.2 and wrong["empty"] == 1
    assert [e["rouge_l"] for e in perfect["per_example"]] == pytest.approx([1.0, 1.0])
    # the section labels every report shares earn nothing by themselves
    labels_only = TASK.compute_metrics(refs, ["FINDINGS:\nIMPRESSION:", "IMPRESSION:"])
    assert labels_only["rouge_l"] == 0 and labels_only["empty"] == 2


def test_radgraph_missing_is_reported_with_its_reason(monkeypatch):
    """RadGraph absent (simulated: sys.modules entry None, as for a user without the extra): the other
    metrics are still computed and the reason names the fix."""
    from medtune.tasks import report_generation

    report_generation._radgraph_scorer.cache_clear()
    monkeypatch.setitem(sys.modules, "radgraph", None)
    metrics = TASK.compute_metrics(["No acute process."], ["No acute process."])
    report_generation._radgraph_scorer.cache_clear()
    assert metrics["radgraph_f1"] is None and "pip install 'medtune[radgraph]'" in metrics["radgraph_f1_unavailable"]
    assert metrics["rouge_l"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- end to end
def test_report_generation_learns_offline_and_says_why_radgraph_is_missing(small_mimic, tmp_path):
    run = tmp_path / "run"
    result = run_cli(sys.executable, str(REPO / "medtune/train.py"), str(REPO / "recipes/demo/report_generation.yaml"),
                     f"data.path={small_mimic / 'data'}", f"training.output_dir={run}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    baseline = json.loads((run / "eval/baseline.json").read_text())["metrics"]
    finetuned = json.loads((run / "eval/finetuned.json").read_text())["metrics"]
    assert finetuned["rouge_l"] > baseline["rouge_l"] + 0.3
    assert finetuned["radgraph_f1"] is None and finetuned["radgraph_f1_unavailable"]
    table = (run / "eval/comparison.md").read_text()
    assert "| report_generation | rouge_l |" in table and "radgraph_f1 unavailable: " in table
    assert "radgraph_f1 unavailable" in result.stdout
    predictions = [json.loads(line) for line in (run / "eval/finetuned_predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == finetuned["n"]
    assert all({"rouge_l", "bleu4", "generated"} <= p.keys() for p in predictions)
    assert (run / "eval/finetuned_rouge_l.png").is_file()
    # credentialed data: no report text reaches the tracker (the demo recipe logs to tensorboard)
    logged = b"".join(p.read_bytes() for p in (run / "tensorboard").rglob("*") if p.is_file())
    assert b"final/finetuned/rouge_l" in logged
    assert not any(sentence.encode() in logged for pair in _FINDINGS for sentence in pair)
