"""Your own data: the imagefolder and table readers, DICOM as hospitals export it (pydicom's own test files), the
generic classification and free-text tasks, their recipes, and a fine-tune of the tiny model on each."""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk
from PIL import Image

from data_prep import _dicom
from data_prep.__main__ import main as data_prep_main
from medtune.config import RecipeError, load_recipe
from medtune.tasks import get_task
from medtune.tasks.classification import DEFAULT_QUESTION
from tests.conftest import REPO, run_cli

CLASSIFICATION = REPO / "recipes/custom/classification_lora.yaml"
FREE_TEXT = REPO / "recipes/custom/free_text_lora.yaml"
# the demo's settings for a random 2-layer model (recipes/demo/tissue_classification.yaml)
TINY = ["model.name_or_path=tiny", "lora.alpha=32", "training.learning_rate=3e-3", "training.num_train_epochs=4",
        "training.per_device_train_batch_size=8", "training.activation_checkpointing=false",
        "training.eval_strategy=no", "training.save_strategy=no", "tracking.backend=none"]


def report_of(data: Path) -> dict:
    return json.loads((data / "prep_report.json").read_text())


def pydicom_test_files() -> Path:
    """pydicom's own test files, installed with it (its get_testdata_files would try to download more)."""
    import pydicom.data

    return Path(pydicom.data.__file__).parent / "test_files"


def decode(name: str, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the odd values its own test files hold on purpose
        return _dicom.read_dicom(pydicom_test_files() / name, **options)


# ----------------------------------------------------------------------------- DICOM
def test_every_pydicom_test_image_decodes_or_is_skipped_with_a_reason():
    decoded, skipped = 0, {}
    for path in sorted(pydicom_test_files().glob("*.dcm")):
        image, problem = decode(path.name, frame="middle")
        if problem:
            skipped[path.name] = problem
            continue
        decoded += 1
        assert image.pixels.dtype == np.uint8 and image.pixels.ndim in (2, 3), path.name
        assert image.pixels.ndim == 2 or image.pixels.shape[-1] == 3, path.name
    assert decoded >= 50
    # 12-bit JPEG Extended: only pylibjpeg-libjpeg decodes it, which medtune leaves out (GPL): the reason says so
    assert "pylibjpeg-libjpeg" in skipped["JPGExtended.dcm"]
    assert skipped["MR_truncated.dcm"].startswith("undecodable")
    assert skipped["rtplan.dcm"].startswith("no pixel data")


@pytest.mark.parametrize("variant", ["MR_small_bigendian.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                     "MR_small_jpeg_ls_lossless.dcm", "MR_small_implicit.dcm", "MR_small_expb.dcm"])
def test_one_image_in_every_transfer_syntax_gives_the_same_pixels(variant):
    reference, _ = decode("MR_small.dcm")
    image, problem = decode(variant)
    assert problem is None, problem
    assert reference.how == image.how == "its VOI window"
    assert np.array_equal(image.pixels, reference.pixels)


def test_colour_comes_out_as_rgb_whatever_the_file_stores():
    """One picture stored ten ways (pydicom's SC_rgb files): RLE RGB is the reference; a swapped or unconverted
    YBR channel would be tens of levels off."""
    rgb, _ = decode("SC_rgb_rle.dcm")
    exact = ("SC_rgb_jpeg_gdcm.dcm",  # JPEG Lossless, Process 14 (python-gdcm)
             "SC_rgb_gdcm_KY.dcm", "SC_rgb_rle_16bit.dcm", "SC_rgb_rle_32bit.dcm")  # 16- and 32-bit colour
    lossy = ("SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_jpeg_dcmtk.dcm",  # YBR_FULL(_422) JPEG Baseline
             "SC_rgb_jls_lossy_sample.dcm", "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_dcmtk_+eb+cr.dcm")
    for variant in exact + lossy:
        image, problem = decode(variant)
        assert problem is None, (variant, problem)
        difference = np.abs(image.pixels.astype(int) - rgb.pixels).mean()
        assert difference == 0 if variant in exact else difference < 3, (variant, difference)
    palette, problem = decode("examples_palette.dcm")
    assert problem is None and palette.pixels.ndim == 3
    assert len({tuple(p) for p in palette.pixels.reshape(-1, 3)[::97]}) > 20  # looked up, not grey indices
    deflated, problem = decode("image_dfl.dcm")
    assert problem is None and deflated.pixels.std() > 0


def test_greyscale_depth_sign_and_ct_windows(tmp_path):
    """16-bit with and without a window, signed CT in Hounsfield units, MONOCHROME1, and the three CT windows."""
    ramp = np.tile(np.linspace(0, 4095, 64), (64, 1)).astype(np.uint16)
    _dicom.write_dicom(tmp_path / "windowed.dcm", ramp, "MONOCHROME2", patient="p", bits_stored=12,
                       window=(1024, 512))
    _dicom.write_dicom(tmp_path / "plain.dcm", ramp, "MONOCHROME2", patient="p", bits_stored=12)
    _dicom.write_dicom(tmp_path / "inverted.dcm", ramp, "MONOCHROME1", patient="p", bits_stored=12)
    hounsfield = np.tile(np.array([-2000, -1024, -135, 0, 40, 215, 1024, 3000], np.int16), (8, 1))
    _dicom.write_dicom(tmp_path / "ct.dcm", hounsfield, "MONOCHROME2", patient="p", modality="CT", rescale=(1, 0))

    windowed, _ = _dicom.read_dicom(tmp_path / "windowed.dcm")
    assert windowed.how == "its VOI window"
    assert windowed.pixels[0, 0] == 0 and windowed.pixels[0, -1] == 255  # outside the window: clipped
    assert 100 < windowed.pixels[0, 16] < 160  # 1040 sits mid-window
    plain, _ = _dicom.read_dicom(tmp_path / "plain.dcm")
    assert plain.how == "min-max" and plain.pixels[0, 0] == 0 and plain.pixels[0, -1] == 255
    inverted, _ = _dicom.read_dicom(tmp_path / "inverted.dcm")
    assert np.array_equal(inverted.pixels, 255 - plain.pixels)
    ct, _ = _dicom.read_dicom(tmp_path / "ct.dcm", ct_windows=True)
    assert ct.how == "CT windows (RGB)" and ct.pixels.shape == (8, 8, 3)
    # red -1024..1024, green -135..215, blue 0..80 HU, each stretched to 0..255 (by hand, rounded)
    assert ct.pixels[0].tolist() == [[0, 0, 0], [0, 0, 0], [111, 0, 0], [128, 98, 0], [132, 128, 128],
                                     [154, 255, 255], [255, 255, 255], [255, 255, 255]]
    grey_ct, _ = _dicom.read_dicom(tmp_path / "ct.dcm")
    assert grey_ct.pixels.ndim == 2 and grey_ct.how == "min-max"


def test_multi_frame_files_need_a_frame_rule(tmp_path):
    frames = np.stack([np.full((8, 8), v, np.uint8) for v in (10, 20, 30, 40)])
    _dicom.write_dicom(tmp_path / "series.dcm", frames, "MONOCHROME2", patient="p")
    image, problem = _dicom.read_dicom(tmp_path / "series.dcm")
    assert image is None and "--frame middle|first" in problem
    assert _dicom.read_dicom(tmp_path / "series.dcm", frame="first")[0].pixels[0, 0] == 10
    assert _dicom.read_dicom(tmp_path / "series.dcm", frame="middle")[0].pixels[0, 0] == 30


# ----------------------------------------------------------------------------- imagefolder
def test_imagefolder_prepares_the_stand_in(small_imagefolder):
    data = small_imagefolder / "data"
    report, dataset = report_of(data), load_from_disk(str(data))
    classes = {"benign": "benign", "malignant": "malignant", "normal_tissue": "normal tissue"}  # the folder names
    assert report["task"] == {"name": "classification", "question": DEFAULT_QUESTION, "options": classes}
    assert set(dataset) == {"train", "validation", "test"}
    assert all(set(split["per_class"]) == set(classes) for split in report["splits"].values())
    assert sum(s["total"] for s in report["splits"].values()) == 3 * 16 + 4  # the PNG/JPEG/TIFF files, 4 DICOMs
    reasons = {s["reason"].split(":")[0] for s in report["skipped"]}
    assert reasons == {"stray file", "empty file", "unreadable", "not an image", "multi-frame (3 frames)"}
    assert "DICOM pixel values to 8 bits: 2 colour, 1 its VOI window, 1 min-max" in report["notes"]
    rows = [row for split in dataset.values() for row in split.select_columns(["id", "group", "messages"])]
    assert not [r for r in rows if "IM000" in r["id"] or "PAT-" in r["group"]]  # identifiers only as hashes
    dicom_groups = {}
    for name, split in dataset.items():
        for row in split.select_columns(["id", "group"]):
            if "/" not in row["id"]:  # the DICOMs' hashed ids
                dicom_groups.setdefault(row["group"], set()).add(name)
    assert len(dicom_groups) == 3 and all(len(splits) == 1 for splits in dicom_groups.values())  # PAT-0001's two
    prompt = rows[0]["messages"][0]["content"][1]["text"]
    assert prompt.endswith("A: benign\nB: malignant\nC: normal tissue")


def test_imagefolder_with_your_own_splits_a_frame_rule_and_option_texts(small_imagefolder, tmp_path):
    from data_prep._common import synthetic_tile

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 2)):
        for label, name in enumerate(("MEL", "NEV")):
            (tmp_path / "src" / split / name).mkdir(parents=True)
            for i in range(count):
                synthetic_tile(label, rng, size=32).save(tmp_path / "src" / split / name / f"{i}.png")
    (tmp_path / "src" / "extra").mkdir()
    code = data_prep_main(["imagefolder", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                           "--option", "MEL=melanoma", "--option", "NEV=naevus", "--question", "Which lesion?",
                           "--validation-fraction", "0.34"])
    assert code == 0
    report = report_of(tmp_path / "out")
    assert {k: v["total"] for k, v in report["splits"].items()} == {"train": 8, "validation": 4, "test": 4}
    assert {"path": "extra", "reason": "not a split folder (train, validation or test)"} in report["skipped"]
    assert report["task"]["options"] == {"MEL": "melanoma", "NEV": "naevus"}
    first = load_from_disk(str(tmp_path / "out"))["test"][0]["messages"][0]["content"][1]["text"]
    assert first == "Which lesion?\nA: melanoma\nB: naevus"

    clips = tmp_path / "clips"
    data_prep_main(["imagefolder", "--src", str(small_imagefolder / "raw"), "--out", str(clips), "--frame", "middle"])
    assert report_of(clips)["skipped_by_reason"].get("multi-frame (3 frames)") is None
    assert sum(s["total"] for s in report_of(clips)["splits"].values()) == 3 * 16 + 5
    assert data_prep_main(["imagefolder", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "bad"),
                           "--option", "CAT=cat"]) == 2  # no such class: refused with one line


# ----------------------------------------------------------------------------- table
def test_table_rows_that_go_wrong_are_skipped_with_their_reason(small_table):
    report = report_of(small_table / "data")
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert reasons == {
        "table.csv:50": "empty file", "table.csv:51": "image not found: images/missing.png",  # the path it names
        "table.csv:52": "image path refused: it leads outside the table's folder (or --image-root): ../outside.png",
        "table.csv:53": "image path refused: absolute (paths are relative to the table's folder or --image-root): "
                        "/etc/hostname",
        "table.csv:54": "empty answer", "table.csv:55": "malformed CSV row: 6 fields, the header has 5",
    }
    assert report["task"] == {"name": "free_text", "question": "Describe the findings in this image.",
                              "protocol": "medtune"}
    dataset = load_from_disk(str(small_table / "data"))
    groups = {name: set(split["group"]) for name, split in dataset.items()}
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["validation"]
    assert not any(g.startswith("PAT-") for g in groups["train"])  # the patient column is stored hashed
    questions = {row["messages"][0]["content"][1]["text"] for row in dataset["train"]}
    assert questions == {"Describe the findings in this image.", "What does this image show?"}


def test_table_formats_agree_and_a_group_in_two_splits_stays_in_one(small_table, tmp_path):
    out = {}
    for suffix in ("jsonl", "parquet"):
        out[suffix] = tmp_path / suffix
        assert data_prep_main(["table", "--src", str(small_table / f"raw/table.{suffix}"), "--out", str(out[suffix]),
                               "--group-column", "patient"]) == 0
    jsonl, parquet = report_of(out["jsonl"]), report_of(out["parquet"])
    assert jsonl["splits"] == parquet["splits"]  # the table's own splits, the same rows
    assert jsonl["task"]["name"] == "classification"
    assert [s["reason"] for s in jsonl["skipped"]] == ["malformed JSON line: not an object"]

    rows = [json.loads(line) for line in (small_table / "raw/table.jsonl").read_text().splitlines()[:10]]
    rows[9]["patient"] = rows[0]["patient"]  # the first patient also in test
    (small_table / "raw/leaky.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert data_prep_main(["table", "--src", str(small_table / "raw/leaky.jsonl"), "--out", str(tmp_path / "leaky"),
                           "--group-column", "patient", "--validation-fraction", "0"]) == 0
    skipped = report_of(tmp_path / "leaky")["skipped"]
    assert skipped == [{"path": "leaky.jsonl:10", "reason": "its group is also in train: a group stays in one split"}]


def test_table_without_the_named_column_is_refused_in_one_line(small_table, tmp_path, capsys):
    code = data_prep_main(["table", "--src", str(small_table / "raw/table.csv"), "--out", str(tmp_path / "x"),
                           "--image-column", "film"])
    assert code == 2
    assert "has no column 'film'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- tasks and recipes
def test_free_text_metrics_count_exact_matches_and_empty_answers():
    metrics = get_task("free_text", None, None).compute_metrics(
        ["Normal tissue.", "A benign lesion", "Malignant"], ["normal  tissue", "", "A benign lesion"])
    assert metrics["exact_match"] == pytest.approx(1 / 3) and metrics["empty"] == 1
    assert metrics["per_example"][0]["rouge_l"] == 1.0 and 0 < metrics["rouge_l"] < 1


def test_recipes_and_datasets_must_agree(prepared, tmp_path):
    images = f"data.path={prepared['classification']}"
    refusals = {
        "task.name": [str(CLASSIFICATION), images, "task.name=free_text"],
        "task.question": [str(CLASSIFICATION), images, "task.question=Which tissue?"],
        "task.options": [str(CLASSIFICATION), images, "task.options={benign: harmless}"],
        "eval.mode": [str(FREE_TEXT), f"data.path={prepared['free_text']}", "eval.mode=score"],
    }
    for key, (recipe, *overrides) in refusals.items():
        with pytest.raises(RecipeError) as error:
            load_recipe(recipe, overrides)
        assert error.value.key == key, error.value
    with pytest.raises(RecipeError, match="tissue_classification asks its own question"):
        load_recipe(REPO / "recipes/tissue_classification/lora.yaml", ["task.question=Which?"])
    with pytest.raises(RecipeError, match="prepared for classification") as error:
        load_recipe(REPO / "recipes/tissue_classification/lora.yaml", [images])
    loaded = load_recipe(CLASSIFICATION, [images, "task.options={normal_tissue: normal tissue}"])
    assert loaded.task.options == {"benign": "benign", "malignant": "malignant", "normal_tissue": "normal tissue"}

    recipe = tmp_path / "mine.yaml"
    recipe.write_text(CLASSIFICATION.read_text().replace("  options: null", "  options: {benign: harmless lesion}"))
    assert data_prep_main(["imagefolder", "--src", str(REPO / "recipes"), "--out", str(tmp_path / "no"),
                           "--recipe", str(FREE_TEXT)]) == 2  # a free-text recipe for an image folder: refused
    out = tmp_path / "data"
    assert data_prep_main(["imagefolder", "--src", str(prepared["classification"].parent / "raw"), "--out", str(out),
                           "--recipe", str(recipe)]) == 0
    assert load_recipe(recipe, [f"data.path={out}"]).task.options["benign"] == "harmless lesion"


# ----------------------------------------------------------------------------- fine-tuning
@pytest.mark.parametrize("recipe, task, headline, epochs", [(CLASSIFICATION, "classification", "weighted_f1", 4),
                                                            (FREE_TEXT, "free_text", "rouge_l", 6)])  # sentences
def test_the_tiny_model_learns_your_own_data(recipe, task, headline, epochs, prepared, tmp_path):
    run = tmp_path / "run"
    result = run_cli(sys.executable, "medtune/train.py", str(recipe), f"data.path={prepared[task]}",
                     f"training.output_dir={run}", "eval.max_new_tokens=24", *TINY,
                     f"training.num_train_epochs={epochs}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    baseline = json.loads((run / "eval/baseline.json").read_text())["metrics"]
    result = json.loads((run / "eval/finetuned.json").read_text())
    finetuned = result["metrics"]
    assert finetuned[headline] > max(baseline[headline], 0.8)
    assert result["split"] == "test"  # the split evaluated, though data_prep drew it from the pool of rows
    figure = "finetuned_confusion_matrix.png" if task == "classification" else "finetuned_rouge_l.png"
    assert Image.open(run / "eval" / figure).size[0] > 0
    assert f"| {task} | {headline} |" in (run / "eval/comparison.md").read_text()
