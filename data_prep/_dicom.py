"""DICOM files as hospitals export them -> 8-bit pixels as a reader would see them, or a reason to skip.

Every transfer syntax pydicom has a decoder for (its own, Pillow, and the permissively licensed plugins in the
default install: python-gdcm, pyjpegls, pylibjpeg-openjpeg); a file none can decode is skipped with a reason
naming the plugin that would. Colour comes out as RGB whatever the file stores (RGB, YBR_FULL, YBR_FULL_422,
YBR_RCT/ICT, PALETTE COLOR); greyscale of any depth and sign is rescaled (Rescale Slope/Intercept) and then
windowed by the file's own VOI window or VOI LUT where it has one, else stretched min-max, MONOCHROME1
inverted; `how` says which, for the prep report. CT can instead get the three-window RGB encoding that
MedGemma 1.5 was trained on. A multi-frame file (a CT/MR series in one file, an ultrasound clip) gives one frame
only by a rule the user chose.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep._common import scale_to_uint8

FRAME_RULES = ("first", "middle")
# red, green, blue: Hounsfield windows of MedGemma 1.5's CT input (Google-Health/medgemma's CT notebook)
CT_WINDOWS = ((-1024.0, 1024.0), (-135.0, 215.0), (0.0, 80.0))
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
# plugin -> what to install for it; pylibjpeg's libjpeg plugin is GPL, so it is never the one suggested
_PLUGIN_PACKAGES = {"gdcm": "python-gdcm", "pyjpegls": "pyjpegls", "pylibjpeg": "pylibjpeg pylibjpeg-openjpeg",
                    "pillow": "pillow"}


@dataclass
class DicomImage:
    pixels: np.ndarray  # uint8: (H, W) greyscale or (H, W, 3) RGB
    uid: str  # SOPInstanceUID (an identifier: store it hashed)
    patient: str  # PatientID, else the uid (an identifier: store it hashed)
    how: str  # how the values became 8-bit, for the prep report


def is_dicom(path: Path | bytes) -> bool:
    """A DICOM file by its suffix, or by the `DICM` marker of a Part 10 file (many exports have no suffix);
    a file's bytes (a Hugging Face dataset's image) by the marker."""
    if isinstance(path, bytes):
        return path[128:132] == b"DICM"
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def read_dicom(path: Path | bytes, frame: str | None = None,
               ct_windows: bool = False) -> tuple[DicomImage | None, str | None]:
    """(DicomImage, None) for a file (or a file's bytes) whose pixels decode, else (None, reason). `frame`: which
    frame of a multi-frame file to keep (first or middle; None skips such files); `ct_windows`: CT as
    three-window RGB."""
    import io

    import pydicom
    from pydicom.errors import InvalidDicomError

    def source():
        return io.BytesIO(path) if isinstance(path, bytes) else path

    try:
        if (len(path) if isinstance(path, bytes) else path.stat().st_size) == 0:
            return None, "empty file"
        try:
            dataset = pydicom.dcmread(source())
        except InvalidDicomError:  # no Part 10 header: older exports are bare datasets
            dataset = pydicom.dcmread(source(), force=True)
            if "SOPClassUID" not in dataset and "PixelData" not in dataset:
                raise
        if not any(tag in dataset for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            return None, "no pixel data (a DICOM without an image: a report, a structured document?)"
        problem = _undecodable(dataset)
        if problem:
            return None, problem
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        if frames > 1 and frame is None:
            return None, f"multi-frame ({frames} frames): pass --frame middle|first to keep one frame of each"
        index = None if frames == 1 else (0 if frame == "first" else frames // 2)
        pixels, how = _eight_bit(dataset, _decode(dataset, index), ct_windows)
    except InvalidDicomError:
        return None, "not a DICOM file"
    except (AttributeError, KeyError):
        return None, "no pixel data (truncated?)"
    except Exception as e:  # noqa: BLE001 - decoders raise anything on a broken stream: report, never crash
        return None, f"undecodable: {type(e).__name__}: {' '.join(str(e).split())}"[:240] + _other_plugins(dataset)
    # no UID: the file's name, or for bytes their digest (one unnamed image is not another's patient)
    uid = str(dataset.get("SOPInstanceUID", "")
              or (hashlib.blake2b(path, digest_size=10).hexdigest() if isinstance(path, bytes) else path.stem))
    return DicomImage(pixels, uid, str(dataset.get("PatientID", "") or uid), how), None


def instance_number(path: Path) -> int | None:
    """A slice's InstanceNumber (its place in the series), read from the header alone; None where it has none."""
    import pydicom

    try:
        value = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=["InstanceNumber"])
        return int(value.get("InstanceNumber"))
    except Exception:  # noqa: BLE001 - a broken header: the slice sorts last, and its read reports the problem
        return None


def _undecodable(dataset) -> str | None:
    """Why no installed decoder takes the file's transfer syntax, naming what to install; None if one does."""
    from pydicom.pixels import get_decoder

    syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    if syntax is None or not syntax.is_compressed:
        return None
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return f"transfer syntax {syntax.name} ({syntax}): no decoder exists for it in pydicom"
    if decoder.is_available:
        return None
    plugins = [name for name in _PLUGIN_PACKAGES if any(m.startswith(name) for m in decoder.missing_dependencies)]
    hint = " or ".join(f"pip install {_PLUGIN_PACKAGES[p]}" for p in plugins) or "; ".join(decoder.missing_dependencies)
    return f"transfer syntax {syntax.name}: no decoder installed ({hint})"


def _other_plugins(dataset) -> str:
    """For a file the installed decoders failed on: the plugins that are not installed, which might decode it
    (12-bit JPEG Extended needs pylibjpeg-libjpeg, which medtune leaves out: it is GPL-licensed)."""
    from pydicom.pixels import get_decoder

    try:
        missing = get_decoder(dataset.file_meta.TransferSyntaxUID).missing_dependencies
    except Exception:  # noqa: BLE001 - no meta, no syntax, no decoder: nothing to suggest
        return ""
    return f" (not installed, might decode it: {'; '.join(missing)})" if missing else ""


def _decode(dataset, index: int | None) -> np.ndarray:
    """One frame's stored values; colour as RGB (pydicom converts YBR), palette indices looked up."""
    from pydicom.pixels import apply_color_lut, pixel_array

    pixels = pixel_array(dataset, index=index)  # as_rgb by default: YBR_* -> RGB
    if dataset.get("PhotometricInterpretation") == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, dataset)
    return pixels


def _eight_bit(dataset, pixels: np.ndarray, ct_windows: bool) -> tuple[np.ndarray, str]:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if pixels.ndim == 3:  # colour: scaled from its stored depth (a palette's from its LUT's)
        if pixels.dtype == np.uint8:
            return pixels, "colour"
        depth = 8 * pixels.dtype.itemsize if dataset.get("PhotometricInterpretation") == "PALETTE COLOR" \
            else int(dataset.get("BitsStored", 8 * pixels.dtype.itemsize))
        return _to_uint8(pixels.astype(np.float64) / (2 ** depth - 1)), f"colour ({depth}-bit)"
    values = apply_modality_lut(pixels, dataset)  # stored values -> Hounsfield units (CT), or as they were
    if ct_windows and dataset.get("Modality") == "CT":
        channels = [np.clip((values - low) / (high - low), 0.0, 1.0) for low, high in CT_WINDOWS]
        return _to_uint8(np.stack(channels, axis=-1)), "CT windows (RGB)"
    if "VOILUTSequence" in dataset:
        grey, how = scale_to_uint8(apply_voi_lut(values, dataset)), "its VOI LUT"
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        grey, how = _window(values, _first(dataset.WindowCenter), _first(dataset.WindowWidth)), "its VOI window"
    elif pixels.dtype == np.uint8 and values is pixels:
        grey, how = pixels, "8-bit as stored"
    else:
        grey, how = scale_to_uint8(values), "min-max"
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        grey = 255 - grey  # MONOCHROME1 shows low values as white
    return grey, how


def _first(value) -> float:
    """The first of several windows (a file may offer a few: the first is its default)."""
    from pydicom.multival import MultiValue

    return float(value[0] if isinstance(value, (MultiValue, list, tuple)) else value)


def _window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM's LINEAR VOI window (PS3.3 C.11.2.1.2.1) onto 0..255."""
    return _to_uint8(np.clip((values - (center - 0.5)) / max(width - 1.0, 1.0) + 0.5, 0.0, 1.0))


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    return (np.asarray(unit) * 255.0).round().astype(np.uint8)


def write_dicom(path: Path, pixels: np.ndarray, photometric: str, *, patient: str, modality: str = "OT",
                syntax: str | None = None, window: tuple[float, float] | None = None,
                rescale: tuple[float, float] | None = None, bits_stored: int | None = None,
                instance: int | None = None) -> None:
    """A DICOM file as a scanner or PACS export would write it, for the synthetic stand-ins and tests: `pixels`
    (H, W), (H, W, 3) or (frames, H, W[, 3]), compressed in `syntax` by pydicom's encoders where given."""
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = patient, "Anonymous^Synthetic", modality
    ds.set_pixel_data(pixels, photometric, bits_stored or 8 * pixels.dtype.itemsize)
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if instance is not None:
        ds.InstanceNumber = instance
    if syntax:
        ds.compress(syntax)
    ds.save_as(path, enforce_file_format=True)
