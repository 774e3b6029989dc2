"""data_prep crc100k on the synthetic stand-in, in Zenodo's layout, broken files included."""
from __future__ import annotations

import json
import sys
from collections import Counter

import pytest
from datasets import load_from_disk
from PIL import Image

from data_prep.crc100k import CLASSES, synthesize
from medtune.tasks import get_task
from tests.conftest import run_cli

TASK = get_task("tissue_classification")


def test_splits_rows_and_report(small_crc):
    data = load_from_disk(str(small_crc / "data"))
    assert set(data) == {"train", "validation", "test"}
    # 4 per class in 100K minus 3 broken files (empty ADI, truncated TUM, text MUC) -> 90/10 stratified
    report = json.loads((small_crc / "data" / "prep_report.json").read_text())
    assert report["splits"]["test"]["total"] == 2 * 9 - 0  # the empty DEB test file is extra, skipped
    assert report["splits"]["train"]["total"] + report["splits"]["validation"]["total"] == 4 * 9
    assert set(Counter(data["validation"]["label"])) == set(range(9))  # every class held out
    assert not set(data["train"]["id"]) & set(data["validation"]["id"])
    row = data["train"][0]
    assert row["image"].mode == "RGB" and row["image"].size == (224, 224)
    user, assistant = row["messages"]
    assert user["content"][0]["type"] == "image"
    assert user["content"][1]["text"] == TASK.prompt()
    assert assistant["content"][0]["text"] == row["answer"] == TASK.answer(row["label"])
    assert row["id"].split("/")[1] == CLASSES[row["label"]]  # the label is the class folder


def test_every_broken_or_stray_file_is_skipped_counted_and_listed(small_crc):
    report = json.loads((small_crc / "data" / "prep_report.json").read_text())
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert reasons == {
        "NCT-CRC-HE-100K/ADI/ADI-EMPTYFILE.tif": "empty file",
        "NCT-CRC-HE-100K/MUC/MUC-NOTANIMAGE.tif": "not an image",
        "NCT-CRC-HE-100K/LYM/.DS_Store": "stray file: not a .tif image",
        "NCT-CRC-HE-100K/STR/Thumbs.db": "stray file: not a .tif image",
        "CRC-VAL-HE-7K/DEB/DEB-EMPTYFILE.tif": "empty file",
        "NCT-CRC-HE-100K/TUM/TUM-TRUNCATED.tif": reasons.get("NCT-CRC-HE-100K/TUM/TUM-TRUNCATED.tif"),
    }
    assert reasons["NCT-CRC-HE-100K/TUM/TUM-TRUNCATED.tif"].startswith("unreadable")
    assert report["skipped_count"] == 6
    assert {"datasets", "pillow"} <= set(report["versions"])


def test_other_image_modes_are_converted_and_unknown_folders_reported(tmp_path):
    synthesize(tmp_path / "raw", train_per_class=2, test_per_class=1)
    Image.new("RGBA", (224, 224), (10, 20, 30, 128)).save(tmp_path / "raw/NCT-CRC-HE-100K/ADI/ADI-RGBA0000.tif")
    (tmp_path / "raw/NCT-CRC-HE-100K/XYZ").mkdir()
    result = run_cli(sys.executable, "-m", "data_prep", "crc100k", "--src", str(tmp_path / "raw"),
                     "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    data = load_from_disk(str(tmp_path / "out"))
    rgba = [r for r in data["train"].to_list() + data["validation"].to_list() if r["id"].endswith("RGBA0000")]
    assert len(rgba) == 1
    report = json.loads((tmp_path / "out/prep_report.json").read_text())
    assert any(s["path"] == "NCT-CRC-HE-100K/XYZ" and "unknown class folder" in s["reason"] for s in report["skipped"])


def test_limits_keep_every_class(tmp_path):
    synthesize(tmp_path / "raw", train_per_class=10, test_per_class=4)
    result = run_cli(sys.executable, "-m", "data_prep", "crc100k", "--src", str(tmp_path / "raw"), "--out",
                     str(tmp_path / "out"), "--limit-train", "45", "--limit-test", "18")
    assert result.returncode == 0, result.stderr
    data = load_from_disk(str(tmp_path / "out"))
    assert len(data["test"]) <= 18 and set(data["test"]["label"]) == set(range(9))
    assert len(data["train"]) + len(data["validation"]) <= 45


@pytest.mark.parametrize("layout, message", [
    ("empty", "has no NCT-CRC-HE-100K or NCT-CRC-HE-100K-NONORM/ folder"),
    ("no-test", "has no CRC-VAL-HE-7K/ folder"),
])
def test_wrong_source_layout_is_one_line_exit_2(tmp_path, layout, message):
    src = tmp_path / "raw"
    src.mkdir()
    if layout == "no-test":
        (src / "NCT-CRC-HE-100K" / "ADI").mkdir(parents=True)
    result = run_cli(sys.executable, "-m", "data_prep", "crc100k", "--src", str(src), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_existing_output_is_kept_unless_overwrite(small_crc, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = [sys.executable, "-m", "data_prep", "crc100k", "--src", str(small_crc / "raw"), "--out", str(out)]
    refused = run_cli(*args)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr
    assert (out / "keep.txt").read_text() == "mine"
    assert run_cli(*args, "--overwrite").returncode == 0
    assert not (out / "keep.txt").exists() and len(load_from_disk(str(out))["test"]) == 18
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_an_interrupted_prepare_leaves_nothing_loadable_and_a_rerun_finishes(tmp_path):
    import signal
    import subprocess

    from tests.conftest import REPO, wait_until

    synthesize(tmp_path / "raw", train_per_class=30, test_per_class=10)
    command = [sys.executable, "-m", "data_prep", "crc100k", "--src", str(tmp_path / "raw"), "--out",
               str(tmp_path / "out")]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: any(tmp_path.glob(".out.partial-*/cache")), first)  # killed while it writes
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (tmp_path / "out").exists()  # nothing that could load as a complete dataset
    again = run_cli(*command)
    assert again.returncode == 0, again.stderr
    assert len(load_from_disk(str(tmp_path / "out"))["test"]) == 9 * 10  # the empty extra file is skipped


def _huge_png(path, side=20_000):
    """A valid PNG of side x side 1-bit pixels (400 M pixels) in a few kB: a decompression bomb."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor, row = zlib.compressobj(9), b"\x00" * (1 + (side + 7) // 8)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_catalogue_of_bad_images(tmp_path):
    """Every image mode becomes a faithful 8-bit RGB row; a decompression bomb and an empty class are reported."""
    import numpy as np

    raw = tmp_path / "raw"
    synthesize(raw, train_per_class=3, test_per_class=1)
    gradient = np.tile(np.arange(224, dtype=np.float64), (224, 1))
    modes = {
        "I16": Image.fromarray((gradient * 200).astype(np.uint16)),  # 16-bit
        "FLOAT": Image.fromarray((gradient / 224).astype(np.float32)),  # 32-bit float
        "PALETTE": Image.new("RGB", (224, 224), (200, 30, 30)).convert("P"),
        "CMYK": Image.new("RGB", (224, 224), (200, 30, 30)).convert("CMYK"),
        "ONEBIT": Image.fromarray(gradient > 100).convert("1"),
    }
    for name, image in modes.items():
        image.save(raw / f"NCT-CRC-HE-100K/ADI/ADI-{name}.tif")
    _huge_png(raw / "NCT-CRC-HE-100K/BACK/BACK-BOMB0000.tif")
    for path in (raw / "NCT-CRC-HE-100K/NORM").iterdir():  # an empty class
        path.unlink()
    result = run_cli(sys.executable, "-m", "data_prep", "crc100k", "--src", str(raw), "--out", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    data = load_from_disk(str(tmp_path / "o"))
    rows = {r["id"].rsplit("-", 1)[1]: r for split in ("train", "validation") for r in data[split]}
    for name in modes:
        pixels = np.asarray(rows[name]["image"])
        assert rows[name]["image"].mode == "RGB" and pixels.shape == (224, 224, 3), name
    for name in ("I16", "FLOAT"):  # the gradient survives: neither clipped white nor black
        row = np.asarray(rows[name]["image"])[0, :, 0].astype(int)
        assert row[0] == 0 and row[-1] == 255 and (np.diff(row) >= 0).all(), name
    report = json.loads((tmp_path / "o/prep_report.json").read_text())
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert reasons["NCT-CRC-HE-100K/BACK/BACK-BOMB0000.tif"].startswith("too large")
    assert "NCT-CRC-HE-100K: class NORM has no images" in report["notes"]
    assert "NORM" not in report["splits"]["train"]["per_class"]


def test_a_missing_eval_split_is_one_line(small_crc, tmp_path):
    result = run_cli(sys.executable, "medtune/train.py", "recipes/demo/tissue_classification.yaml",
                     f"data.path={small_crc / 'data'}", f"training.output_dir={tmp_path}", "eval.split=holdout")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("medtune: ") and "no 'holdout' split" in result.stderr
