"""Several images per example: a chest X-ray with the patient's prior film (MIMIC-CXR `--with-prior`), and a CT
series as one example of N slices (your own data, `--series-slices`)."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from datasets import load_from_disk

from tests.conftest import prepare_stand_in


@pytest.fixture(scope="module")
def with_prior(small_mimic, tmp_path_factory):
    root = tmp_path_factory.mktemp("mimic-prior")
    prepare_stand_in(root, "mimic_cxr", small_mimic / "raw", "--with-prior", "--image-size", "64", "--num-proc", "1")
    return root


def test_each_study_brings_the_patients_previous_film(with_prior, small_mimic):
    from data_prep._common import hashed_id, id_key

    key = id_key()
    with gzip.open(small_mimic / "raw/mimic-cxr-2.0.0-metadata.csv.gz", "rt") as f:
        rows = [line.split(",") for line in f.read().splitlines()[1:]]
    date = {hashed_id(study, key): day for _, _, study, _, _, _, _, day, *_ in rows}
    subject_of = {hashed_id(study, key): hashed_id(subject, key) for _, subject, study, *_ in rows}
    data = load_from_disk(str(with_prior / "data"))
    rows_with_prior = 0
    for split in data.values():
        for row in split.select_columns(["patient", "study", "prior_study", "messages", "images"]):
            prompt = row["messages"][0]["content"]
            assert [item["type"] for item in prompt] == ["image"] * len(row["images"]) + ["text"]
            earlier = [s for s, who in subject_of.items() if who == row["patient"] and date[s] < date[row["study"]]]
            if row["prior_study"]:
                rows_with_prior += 1
                assert len(row["images"]) == 2 and "the second is the patient's prior one" in prompt[-1]["text"]
                assert row["prior_study"] == max(earlier, key=date.get)  # the latest earlier study
            else:
                assert len(row["images"]) == 1 and "No prior chest X-ray" in prompt[-1]["text"]
                assert not earlier or all(s not in set(data["train"]["study"]) | set(data["test"]["study"]) |
                                          set(data["validation"]["study"]) for s in earlier)
    assert rows_with_prior >= 10
    report = json.loads((with_prior / "data/prep_report.json").read_text())
    assert any(note.startswith("rows by prior film:") for note in report["notes"])


def test_a_two_image_conversation_counts_image_tokens_per_image_and_trains(with_prior, tmp_path):
    from transformers import AutoProcessor

    from medtune.collator import build_collator
    from medtune.inference import PromptInputs
    from medtune.tiny import MM_TOKENS, tiny_checkpoint_dir

    processor = AutoProcessor.from_pretrained(tiny_checkpoint_dir())
    test = load_from_disk(str(with_prior / "data"))["test"]
    rows = [r for r in test if len(r["images"]) == 2][:2] + [r for r in test if len(r["images"]) == 1][:1]
    counts = [len(r["images"]) for r in rows]
    assert counts == [2, 2, 1]
    for batch in (build_collator(processor)(rows), PromptInputs(processor, None, None)(rows)):
        assert batch["pixel_values"].shape[0] == sum(counts)
        assert (batch["input_ids"] == processor.tokenizer.image_token_id).sum(1).tolist() == [
            n * MM_TOKENS for n in counts]
        assert (batch["input_ids"] == processor.tokenizer.boi_token_id).sum(1).tolist() == counts

    from medtune.config import load_recipe
    from medtune.inspect_batch import inspect_example
    from medtune.train import main as train_main

    run = tmp_path / "run"
    assert train_main(["recipes/demo/report_generation.yaml", f"data.path={with_prior / 'data'}",
                       f"training.output_dir={run}", "training.max_steps=2", "eval.max_new_tokens=8",
                       "tracking.backend=none"]) == 0
    for name in ("baseline", "finetuned"):
        assert json.loads((run / f"eval/{name}.json").read_text())["n"] == len(test)
        assert json.loads((run / f"eval/{name}.json").read_text())["decoding"]["batch_size"] >= 1
    shown = [inspect_example(load_recipe(run / "recipe.yaml"), index) for index in range(4)]
    assert any("(2 image(s) x 4)" in text for text in shown) and any("(1 image(s) x 4)" in text for text in shown)


# ----------------------------------------------------------------------------- CT series
SLICES = 7


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory):
    """Two classes of CT series (slice DICOMs in Hounsfield units, file names out of InstanceNumber order), one
    series with a broken slice and one with a stray file; prepared as examples of 4 slices in CT windows."""
    from data_prep._dicom import write_dicom

    root = tmp_path_factory.mktemp("ct")
    rng = np.random.default_rng(0)
    for name in ("no_bleed", "bleed"):
        label = name == "bleed"
        for series in range(4):
            folder = root / "raw" / name / f"series{series}"
            folder.mkdir(parents=True)
            for instance in range(1, SLICES + 1):
                # slice k's value rises with k, so the order can be read back from the pixels
                hounsfield = np.full((32, 32), -1000 + 150 * instance + 40 * label, dtype=np.int16)
                write_dicom(folder / f"IM{rng.integers(1e6):07d}", hounsfield, "MONOCHROME2",
                            patient=f"P{label}{series}", modality="CT", rescale=(1, 0), instance=instance)
    broken = next((root / "raw/bleed/series3").iterdir())
    broken.write_bytes(broken.read_bytes()[:400])
    (root / "raw/no_bleed/series0/notes.txt").write_text("acquired 2026-11-30\n")
    prepare_stand_in(root, "imagefolder", root / "raw", "--series-slices", "4", "--ct-windows", "--image-size", "0",
                     "--test-fraction", "0.25", "--validation-fraction", "0")
    return root


def test_a_ct_series_becomes_one_example_of_evenly_spaced_slices(ct_series):
    from PIL import Image

    data = load_from_disk(str(ct_series / "data"))
    rows = [row for split in data.values() for row in split]
    assert len(rows) == 7  # 8 series, one with a broken slice
    report = json.loads((ct_series / "data/prep_report.json").read_text())
    reasons = sorted(s["reason"] for s in report["skipped"])
    assert reasons[0].startswith("not a DICOM slice") and reasons[1].startswith("slice ")
    names = data["train"].features["label"].names
    for row in rows:
        assert len(row["images"]) == 4 and [i["type"] for i in row["messages"][0]["content"]].count("image") == 4
        wide_window = [np.asarray(image.convert("RGB"))[..., 0].mean() for image in row["images"]]
        bleed = names[row["label"]] == "bleed"
        # slices 1, 3, 5 and 7 of 7, in order: -1024..1024 HU as 0..255
        expected = [(-1000 + 150 * k + 40 * bleed + 1024) / 2048 * 255 for k in (1, 3, 5, 7)]
        assert np.allclose(wide_window, expected, atol=1.0)
        assert isinstance(row["images"][0], Image.Image)


def test_evaluation_batches_count_the_slices(ct_series):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from medtune.inference import PromptInputs, default_batch_size
    from medtune.rows import images_per_row
    from medtune.tiny import tiny_checkpoint_dir

    test = load_from_disk(str(ct_series / "data"))["test"]
    assert images_per_row(test) == 4
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint_dir())
    assert default_batch_size(model, "generate", images_per_row(test)) == 4  # 16 images' worth: 4 series
    inputs = PromptInputs(AutoProcessor.from_pretrained(tiny_checkpoint_dir()), None, model.dtype)(list(test))
    assert inputs["pixel_values"].shape[0] == 4 * len(test)
