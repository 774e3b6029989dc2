"""SIIM-ACR Pneumothorax Segmentation (Kaggle), as downloaded:

    RAW/dicom-images-train/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    RAW/train-rle.csv          (or stage_2_train.csv): ImageId, EncodedPixels

An image is positive when any of its CSV rows holds a mask (`-1` means none). The files are 1024x1024 8-bit
MONOCHROME2, most JPEG Baseline compressed; MONOCHROME1 is inverted and deeper images windowed to 8 bits.
Films larger than the model's input are stored at its size (--image-size, 896 for MedGemma), so that neither
training nor evaluation resizes them again, and uncompressed: a stored film then decodes in ~0.5 ms instead of
~8 ms as PNG (benchmarks/input_pipeline.md), for about the disk space the 1,024 px PNG took.
Splits are disjoint by patient: test is --test-fraction of the patients (per label), validation 10% per
label of the rest (as the report). Identifiers are stored only as keyed hashes, in the rows and in
prep_report.json alike; the skipped files are printed in clear on the terminal only.
"""
from __future__ import annotations

import argparse
import csv
import io
import re
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from data_prep import _dicom
from data_prep._common import (MODEL_IMAGE_SIZE, PrepError, PrepReport, build_split, conversation,
                               conversation_features, hashed_id, id_key, save_dataset, staged_output, stored_image,
                               stratified_split)
from medtune.tasks import get_task

TASK = get_task("pneumothorax")
IMAGE_DIR = "dicom-images-train"
CSV_NAMES = ("train-rle.csv", "stage_2_train.csv")
_RLE = re.compile(r"^\d+( \d+)*$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of patients held out for test")
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--image-size", type=int, default=MODEL_IMAGE_SIZE,
                        help="larger films are stored SIZE x SIZE, the model's input (default 896; 0: as they are)")


# ----------------------------------------------------------------------------- labels
def is_valid_rle(encoded: str) -> bool:
    """`-1` (no mask) or SIIM's run-length pairs: an even number of non-negative integers."""
    encoded = encoded.strip()
    return encoded == "-1" or (bool(_RLE.match(encoded)) and len(encoded.split()) % 2 == 0)


def read_labels(csv_path: Path, report: PrepReport) -> dict[str, int]:
    """SOPInstanceUID -> 1 if any row holds a mask, else 0. Header names and values may carry spaces."""
    labels: dict[str, int] = {}
    with open(csv_path, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if header[:2] != ["ImageId", "EncodedPixels"]:
            raise PrepError(f"{csv_path.name}: expected the header `ImageId, EncodedPixels`, got {header}")
        for line, row in enumerate(reader, start=2):
            if len(row) != 2 or not row[0].strip():
                report.skip(f"{csv_path.name}:{line}", "malformed CSV row")
                continue
            image_id, encoded = row[0].strip(), row[1].strip()
            if not is_valid_rle(encoded):
                report.skip(f"{csv_path.name}:{line}", "malformed EncodedPixels")
                continue
            labels[image_id] = max(labels.get(image_id, 0), int(encoded != "-1"))
    return labels


# ----------------------------------------------------------------------------- images
def read_dicom(path: Path, size: int = 0) -> tuple[dict | None, str | None]:
    """({uid, patient, image}, None) for a readable greyscale DICOM (`image`: `stored_image` bytes, at most SIZE
    pixels a side), else (None, reason)."""
    dicom, problem = _dicom.read_dicom(path)
    if problem:
        return None, problem
    if dicom.pixels.ndim != 2:
        return None, f"expected one greyscale frame, got shape {dicom.pixels.shape}"
    image = stored_image(Image.fromarray(dicom.pixels), size)
    return {"uid": dicom.uid, "patient": dicom.patient, "image": image}, None


# ----------------------------------------------------------------------------- prepare
def prepare(src: Path, out: Path, args: argparse.Namespace) -> PrepReport:
    from datasets import ClassLabel, Value

    options = {k: getattr(args, k) for k in ("test_fraction", "validation_fraction", "seed", "image_size")}
    report = PrepReport(dataset="siim_acr", task={"name": TASK.name}, source=str(src), options=options)
    csv_path = next((src / name for name in CSV_NAMES if (src / name).is_file()), None)
    if csv_path is None:
        raise PrepError(f"{src} has no {' or '.join(CSV_NAMES)}: unzip the Kaggle SIIM-ACR download into it")
    if not (src / IMAGE_DIR).is_dir():
        raise PrepError(f"{src} has no {IMAGE_DIR}/ folder: unzip the Kaggle SIIM-ACR download into it")
    labels = read_labels(csv_path, report)
    paths = sorted(p for p in (src / IMAGE_DIR).rglob("*") if p.is_file())
    key, seen, prompt = id_key(), set(), TASK.prompt()
    report.hash_key = key

    def skip(relative: str, reason: str) -> None:  # DICOM paths hold UIDs
        report.skip_hashed(f"{IMAGE_DIR}/", relative, reason)

    def rows():
        for path in tqdm(paths, desc="reading DICOMs", unit="img", mininterval=1.0):
            relative = path.relative_to(src / IMAGE_DIR).as_posix()
            if path.suffix.lower() != ".dcm":
                skip(relative, "stray file: not a .dcm")
                continue
            image, problem = read_dicom(path, args.image_size)
            if problem:
                skip(relative, problem)
                continue
            if image["uid"] not in labels:
                skip(relative, "no row in the CSV")
                continue
            if image["uid"] in seen:
                skip(relative, "duplicate SOPInstanceUID")
                continue
            seen.add(image["uid"])
            label = labels[image["uid"]]
            yield {"id": hashed_id(image["uid"], key), "patient": hashed_id(image["patient"], key),
                   "image": {"bytes": image["image"], "path": None},
                   "messages": conversation(prompt, TASK.answer(label)), "answer": TASK.answer(label),
                   "label": label}

    features = conversation_features({"label": ClassLabel(names=list(TASK.class_names)), "patient": Value("string")})
    with staged_output(out, args.overwrite) as staging:
        pool = build_split(rows, features, staging, "pool")
        for uid in sorted(set(labels) - seen):
            report.skip_hashed(f"{csv_path.name}: ", uid, "CSV row without a readable DICOM")
        if len(pool) == 0:
            raise PrepError(f"no usable DICOM under {src / IMAGE_DIR}", report)
        rest, test = stratified_split(pool["label"], args.test_fraction, args.seed, groups=pool["patient"])
        rest_pool = pool.select(rest)
        train, validation = stratified_split(rest_pool["label"], args.validation_fraction, args.seed,
                                             groups=rest_pool["patient"])
        from datasets import DatasetDict

        dataset_dict = DatasetDict({"train": rest_pool.select(train), "validation": rest_pool.select(validation),
                                    "test": pool.select(test)})
        report.notes.append(f"patients: {len(set(pool['patient']))}; splits are disjoint by patient")
        save_dataset(dataset_dict, report, staging, list(TASK.class_names))
    return report


# ----------------------------------------------------------------------------- synthetic stand-in
def _chest(rng: np.random.Generator, positive: bool, size: int = 256) -> np.ndarray:
    """A crude frontal chest film: bright body, darker lungs; a pneumothorax is a black, marking-free band
    along the right lung's outer edge with a white pleural line: visible, and learnable by a tiny model."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = 0.75 - 0.25 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    for cx in (0.32, 0.68):
        lung = ((xx - cx) / 0.15) ** 2 + ((yy - 0.5) / 0.32) ** 2 < 1
        image[lung] = 0.35 + 0.1 * np.sin(yy[lung] * 60)  # lung markings
    if positive:
        band = (((xx - 0.32) / 0.15) ** 2 + ((yy - 0.5) / 0.32) ** 2 < 1) & (xx < 0.24)
        image[band] = 0.02
        image[np.abs(xx - 0.24) < 0.008] = 0.95
    image += rng.normal(0, 0.03, image.shape)
    return np.clip(image, 0, 1)


def _write_dicom(path: Path, pixels01: np.ndarray, patient: str, study: str, series: str, sop: str,
                 style: str) -> None:
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, SecondaryCaptureImageStorage

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName, ds.Modality, ds.ViewPosition = patient, "Anonymous^Synthetic", "CR", "PA"
    ds.Rows, ds.Columns = pixels01.shape
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    if style == "jpeg":  # most real files: JPEG Baseline, 8-bit MONOCHROME2
        buffer = io.BytesIO()
        Image.fromarray((pixels01 * 255).astype(np.uint8), "L").save(buffer, format="JPEG", quality=90)
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = "MONOCHROME2", 8, 8, 7
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if style == "12bit":  # a deeper image with a window, as other sources write them
            values = (pixels01 * 4095).astype(np.uint16)
            ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = "MONOCHROME2", 16, 12, 11
            ds.WindowCenter, ds.WindowWidth = 2048, 4096
        else:
            values = (pixels01 * 255).astype(np.uint8)
            if style == "monochrome1":
                values = 255 - values
            ds.PhotometricInterpretation = "MONOCHROME1" if style == "monochrome1" else "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = values.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def synthesize(out: Path, seed: int = 0, patients: int = 40, image_size: int = 256) -> None:
    """Kaggle's layout: several images per patient, JPEG Baseline and uncompressed files, one MONOCHROME1,
    one 12-bit, train-rle.csv with its original header spelling and multi-row positives, and broken files.
    Films are `image_size` pixels square: small for tests, 1024 (the real files' size) for benchmarks."""
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str]] = []
    styles = ["jpeg", "jpeg", "raw"]
    for p in range(patients):
        patient = f"{generate_uid(entropy_srcs=[f'patient{seed}-{p}'])[-12:]}"
        for i in range(1 + p % 3):
            positive = bool(rng.random() < 0.45)
            study, series, sop = (generate_uid(entropy_srcs=[f"{seed}-{p}-{i}-{k}"]) for k in ("st", "se", "sop"))
            style = "monochrome1" if (p, i) == (1, 0) else "12bit" if (p, i) == (2, 0) else styles[(p + i) % 3]
            _write_dicom(out / IMAGE_DIR / study / series / f"{sop}.dcm", _chest(rng, positive, image_size), patient,
                         study, series, sop, style)
            if positive:  # several mask rows for one image, with the original file's leading spaces
                rows += [(sop, " 175349 7 1013 12 1009 17"), (sop, " 207349 4 1019 6")][: 1 + i % 2]
            else:
                rows.append((sop, " -1"))
    study, series = "1.2.826.0.1.999", "1.2.826.0.1.999.1"  # broken files, with valid (numeric) UIDs
    broken = out / IMAGE_DIR / study / series
    broken.mkdir(parents=True)
    good = next((out / IMAGE_DIR).rglob("*.dcm")).read_bytes()
    (broken / f"{series}.1.dcm").write_bytes(good[: len(good) // 2])  # truncated
    (broken / f"{series}.2.dcm").write_text("not a DICOM file\n")
    _write_dicom(broken / f"{series}.3.dcm", _chest(rng, False), "orphan", study, series, f"{series}.3", "raw")
    (broken / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    rows += [(f"{series}.1", " -1"), (f"{series}.2", " -1"), (f"{series}.4", " -1"),  # .4: no such file
             (f"{series}.5", " 12 x 7")]  # malformed mask
    with open(out / "train-rle.csv", "w", newline="") as f:
        f.write("ImageId, EncodedPixels\n")  # the original header, space included
        for image_id, encoded in rows:
            f.write(f"{image_id},{encoded}\n")
