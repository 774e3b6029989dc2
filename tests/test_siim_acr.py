"""data_prep siim_acr on the synthetic Kaggle layout, the pneumothorax task, and option scoring."""
from __future__ import annotations

import json
import sys

import numpy as np
from datasets import load_from_disk
from hypothesis import given
from hypothesis import strategies as st

from data_prep.siim_acr import is_valid_rle, read_dicom, synthesize
from tests.conftest import run_cli


def test_splits_are_disjoint_by_patient(small_siim):
    data = load_from_disk(str(small_siim / "data"))
    patients = {split: set(data[split]["patient"]) for split in data}
    assert not patients["train"] & patients["test"]
    assert not patients["train"] & patients["validation"]
    assert not patients["validation"] & patients["test"]
    for split in data:  # both labels in every split (stratified by patient label)
        assert set(data[split]["label"]) == {0, 1}
    assert len(patients["test"]) == round(40 * 0.2)  # the recipe's test share of the patients


def test_every_broken_or_orphan_file_is_reported(small_siim, tmp_path):
    from data_prep._common import hashed_id, id_key

    report = json.loads((small_siim / "data/prep_report.json").read_text())
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    key, study, series = id_key(), "1.2.826.0.1.999", "1.2.826.0.1.999.1"

    def dicom(name):  # how the report names a file: by keyed hash of its path, which holds UIDs
        return reasons[f"dicom-images-train/{hashed_id(f'{study}/{series}/{name}', key)}"]

    assert dicom(f"{series}.1.dcm").startswith(("no pixel data", "undecodable"))  # truncated
    assert dicom(f"{series}.2.dcm") == "not a DICOM file"
    assert dicom(f"{series}.3.dcm") == "no row in the CSV"
    assert dicom("Thumbs.db") == "stray file: not a .dcm"
    assert reasons[f"train-rle.csv: {hashed_id(f'{series}.4', key)}"] == "CSV row without a readable DICOM"
    assert "malformed EncodedPixels" in reasons.values()
    assert report["skipped_count"] == len(reasons) == 8
    assert report["options"] == {"test_fraction": 0.2, "validation_fraction": 0.1, "seed": 42, "image_size": 896}
    assert study not in (small_siim / "data/prep_report.json").read_text()


def test_duplicates_and_non_utf8_csv_rows_are_reported_not_fatal(tmp_path):
    import shutil

    raw = tmp_path / "raw"
    synthesize(raw, patients=6)
    first = sorted((raw / "dicom-images-train").rglob("*.dcm"))[0]
    copy = raw / "dicom-images-train/1.2.3/1.2.3.1" / first.name
    copy.parent.mkdir(parents=True)
    shutil.copy(first, copy)
    (copy.parent / "1.2.3.1.9.dcm").write_bytes(b"")  # a zero-byte DICOM
    with open(raw / "train-rle.csv", "ab") as f:
        f.write(b"1.2.3.\xe9\xff,-1\n")  # Latin-1 bytes in a UTF-8 file
    result = run_cli(sys.executable, "-m", "data_prep", "siim_acr", "--src", str(raw), "--out", str(tmp_path / "o"),
                     "--test-fraction", "0.3")
    assert result.returncode == 0, result.stderr
    reasons = [s["reason"] for s in json.loads((tmp_path / "o/prep_report.json").read_text())["skipped"]]
    assert "duplicate SOPInstanceUID" in reasons and "empty file" in reasons
    assert f"{first.name}: duplicate SOPInstanceUID" in result.stderr  # either copy, in clear on the terminal


def test_identifiers_are_hashed_never_in_clear(small_siim):
    import pydicom

    data_dir = small_siim / "data"
    raw = [pydicom.dcmread(p, stop_before_pixels=True) for p in (small_siim / "raw").rglob("*.dcm")
           if p.stat().st_size > 1000 and p.name[0].isdigit()]
    identifiers = {str(d.SOPInstanceUID) for d in raw} | {str(d.PatientID) for d in raw if d.PatientID != "orphan"}
    stored = b"".join(p.read_bytes() for p in data_dir.rglob("*.arrow"))
    assert identifiers and not [i for i in identifiers if i.encode() in stored]


def test_every_encoding_decodes_to_the_same_picture(tmp_path):
    """JPEG Baseline, uncompressed, MONOCHROME1 (inverted) and 12-bit (windowed) files of one image agree."""
    import io

    from PIL import Image

    from data_prep.siim_acr import _chest, _write_dicom

    picture = _chest(np.random.default_rng(0), positive=True)
    decoded = {}
    for style in ("jpeg", "raw", "monochrome1", "12bit"):
        path = tmp_path / f"{style}.dcm"
        _write_dicom(path, picture, "p", "1.2.3", "1.2.3.1", f"1.2.3.1.{len(decoded) + 1}", style)
        image, problem = read_dicom(path)
        assert problem is None, problem
        decoded[style] = np.asarray(Image.open(io.BytesIO(image["image"])), dtype=np.float64)
    for style, pixels in decoded.items():
        assert pixels.shape == picture.shape
        assert np.abs(pixels - picture * 255).mean() < 4, style  # same picture, within JPEG/rounding error


def test_stage_2_csv_name_and_header_are_accepted(tmp_path):
    synthesize(tmp_path / "raw", patients=6)
    csv = tmp_path / "raw/train-rle.csv"
    (tmp_path / "raw/stage_2_train.csv").write_text(csv.read_text().replace("ImageId, EncodedPixels",
                                                                            "ImageId,EncodedPixels"))
    csv.unlink()
    result = run_cli(sys.executable, "-m", "data_prep", "siim_acr", "--src", str(tmp_path / "raw"), "--out",
                     str(tmp_path / "out"), "--test-fraction", "0.3")
    assert result.returncode == 0, result.stderr
    assert sum(len(s) for s in load_from_disk(str(tmp_path / "out")).values()) > 0


def test_missing_csv_is_one_line_exit_2(tmp_path):
    (tmp_path / "raw/dicom-images-train").mkdir(parents=True)
    result = run_cli(sys.executable, "-m", "data_prep", "siim_acr", "--src", str(tmp_path / "raw"), "--out",
                     str(tmp_path / "out"))
    assert result.returncode == 2 and "train-rle.csv or stage_2_train.csv" in result.stderr
    assert "Traceback" not in result.stderr


@given(st.lists(st.integers(0, 10**7), min_size=1, max_size=20))
def test_rle_validation(numbers):
    encoded = " ".join(map(str, numbers))
    assert is_valid_rle(" " + encoded) == (len(numbers) % 2 == 0)
    assert not is_valid_rle(encoded + " x")
    assert is_valid_rle("-1") and is_valid_rle(" -1 ")


def test_pneumothorax_learns_and_option_scoring_agrees_with_generation(small_siim, tmp_path):
    run = tmp_path / "run"
    result = run_cli(sys.executable, "medtune/train.py", "recipes/demo/pneumothorax.yaml",
                     f"data.path={small_siim / 'data'}", f"training.output_dir={run}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    baseline = json.loads((run / "eval/baseline.json").read_text())["metrics"]
    finetuned = json.loads((run / "eval/finetuned.json").read_text())["metrics"]
    assert finetuned["f1"] > baseline["f1"]
    assert finetuned["auroc"] is None and "eval.mode=score" in finetuned["auroc_unavailable"]
    scored = run_cli("medtune", "eval", str(run / "recipe.yaml"), "--adapter", str(run), "--name", "scored",
                     "eval.mode=score")
    assert scored.returncode == 0, scored.stderr[-2000:]
    by_score = {r["id"]: r for r in map(json.loads, (run / "eval/scored_predictions.jsonl").read_text().splitlines())}
    by_text = {r["id"]: r for r in map(json.loads, (run / "eval/finetuned_predictions.jsonl").read_text().splitlines())}
    confident = [i for i, r in by_score.items() if max(r["scores"]) > 0.9]
    assert len(confident) >= len(by_score) // 2
    assert all(by_score[i]["parsed"] == by_text[i]["parsed"] for i in confident)
    metrics = json.loads((run / "eval/scored.json").read_text())["metrics"]
    assert 0.0 <= metrics["auroc"] <= 1.0 and metrics["unparsable"] == 0

    # privacy: no identifier of the synthetic DICOMs in any file the run or data_prep wrote
    import pydicom

    identifiers = set()
    for path in (small_siim / "raw").rglob("*.dcm"):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - the planted broken files
            continue
        identifiers |= {str(header.SOPInstanceUID), str(header.StudyInstanceUID), str(header.SeriesInstanceUID),
                        str(header.PatientID)}
    written = [p for p in [*run.rglob("*"), *(small_siim / "data").rglob("*")] if p.is_file()]
    leaks = {(p.name, i) for p in written for i in identifiers if i.encode() in p.read_bytes()}
    assert identifiers and not leaks


def test_films_larger_than_the_model_input_are_stored_at_its_size(tmp_path):
    """A 1,024 px film is stored 896 px, exactly as the Gemma 3 processor would resize it (PIL bilinear), and
    uncompressed; `--image-size 0` and films no larger than the size keep their own size."""
    import io

    from PIL import Image

    from data_prep.siim_acr import _chest, _write_dicom

    for size in (1024, 256):
        path = tmp_path / f"{size}.dcm"
        _write_dicom(path, _chest(np.random.default_rng(0), positive=True, size=size), "p", "1.2", "1.2.1",
                     f"1.2.1.{size}", "raw")
        full, _ = read_dicom(path, 0)
        stored, problem = read_dicom(path, 896)
        assert problem is None, problem
        with Image.open(io.BytesIO(full["image"])) as original, Image.open(io.BytesIO(stored["image"])) as image:
            assert image.format == "TIFF" and image.info.get("compression") == "raw" and image.mode == "L"
            assert original.size == (size, size)
            if size > 896:
                expected = original.resize((896, 896), Image.Resampling.BILINEAR)
                assert np.array_equal(np.asarray(image), np.asarray(expected))
            else:
                assert np.array_equal(np.asarray(image), np.asarray(original))
