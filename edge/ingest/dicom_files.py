"""Read one DICOM file: header first (pixel data deferred), then pixels rescaled to HU."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from edge.errors import (CorruptFileError, FileTooLargeError, NoPixelDataError, NotDicomError,
                         UnsupportedTransferSyntaxError)
from edge.ingest.pydicom_adapter import missing_decoder, truncation_warned

DICOMDIR_UID = "1.2.840.10008.1.3.10"
MAX_SLICE_PIXELS = 2048 * 2048
"""CT slices are 512x512, occasionally 1024x1024: a file declaring more pixels is not decoded."""


def read_header(path: Path) -> Dataset:
    """Parse ``path`` as DICOM with the pixel data left on disk until it is decoded.

    Files without the 128-byte preamble are accepted only if they carry an SOP Class UID.
    Raises NotDicomError or CorruptFileError naming the file.
    """
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, defer_size="64 KB")
        if truncation_warned(caught):
            raise CorruptFileError(path, "truncated: the file ends inside a data element")
    except InvalidDicomError:
        try:
            ds = pydicom.dcmread(path, defer_size="64 KB", force=True)
        except Exception as exc:  # noqa: BLE001 - any parser failure means "not DICOM"
            raise NotDicomError(path, "not a DICOM file") from exc
        if "SOPClassUID" not in ds:
            raise NotDicomError(path, "not a DICOM file (no DICM preamble, no SOP Class UID)") from None
    except CorruptFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated or malformed element streams
        raise CorruptFileError(path, f"cannot be parsed as DICOM ({type(exc).__name__}: {exc})") from exc
    if ds.get("MediaStorageSOPClassUID", ds.file_meta.get("MediaStorageSOPClassUID")) == DICOMDIR_UID:
        raise NotDicomError(path, "a DICOMDIR index, not an image")
    check_tags(ds, path)
    return ds


NUMERIC_TAGS = {"Rows": 1, "Columns": 1, "NumberOfFrames": 1, "InstanceNumber": 1, "SliceLocation": 1,
                "SliceThickness": 1, "RescaleSlope": 1, "RescaleIntercept": 1, "PixelSpacing": 2,
                "ImageOrientationPatient": 6, "ImagePositionPatient": 3}
"""The numeric header tags ingestion relies on, with the number of values each must have."""
TEXT_TAGS = ("SeriesInstanceUID", "Modality", "ImageType", "SOPClassUID")


def check_tags(ds: Dataset, path: Path) -> None:
    """Make the tags ingestion uses trustworthy: an empty one is removed (taken as absent); one that
    cannot be decoded, has the wrong number of values or a non-finite number is a CorruptFileError."""
    for keyword in (*NUMERIC_TAGS, *TEXT_TAGS):
        try:
            value = ds.get(keyword)
            text = str(value)
        except Exception as exc:  # noqa: BLE001 - pydicom decodes lazily: bad VR, odd length, bad charset
            raise CorruptFileError(path, f"tag {keyword} cannot be decoded ({type(exc).__name__})") from exc
        if value is None or value == "" or (isinstance(value, (list, MultiValue)) and len(value) == 0):
            ds.pop(keyword, None)
        elif keyword in NUMERIC_TAGS and not _numbers_ok(value, NUMERIC_TAGS[keyword]):
            raise CorruptFileError(path, f"tag {keyword} has an invalid value {text[:40]!r} "
                                         f"(expected {NUMERIC_TAGS[keyword]} finite number(s))")
    for keyword in ("Rows", "Columns"):
        if keyword in ds and float(ds[keyword].value) < 1:
            raise CorruptFileError(path, f"tag {keyword} is {ds[keyword].value}, not a positive size")


def _numbers_ok(value: object, count: int) -> bool:
    values = list(value) if isinstance(value, (list, MultiValue)) else [value]
    try:
        return len(values) == count and all(math.isfinite(float(v)) for v in values)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return False


def decode_hu(ds: Dataset, path: Path) -> np.ndarray:
    """Decode the pixel data of one single-frame slice and rescale it to Hounsfield units (int16).

    Missing RescaleSlope/RescaleIntercept are taken as 1 and 0 (the caller warns).
    """
    if "PixelData" not in ds:
        raise NoPixelDataError(path, "has no pixel data (7FE0,0010)")
    check_pixel_size(ds, path)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    name = getattr(syntax, "name", str(syntax))
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - no decoder, truncated pixel data, wrong lengths, bad codestreams
        if missing_decoder(exc):
            raise UnsupportedTransferSyntaxError(path, f"transfer syntax {name!r} ({syntax}) has no installed decoder") from exc
        raise CorruptFileError(path, f"pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
    if pixels.ndim != 2:
        raise CorruptFileError(path, f"expected one greyscale frame, got pixel array of shape {pixels.shape}")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if slope == 1.0 and intercept.is_integer():
        hu = pixels.astype(np.int32) + int(intercept)
    else:
        hu = np.rint(pixels * slope + intercept)
    return np.clip(hu, -32768, 32767).astype(np.int16)


def check_pixel_size(ds: Dataset, path: Path) -> None:
    """Refuse, before decoding, pixel data declaring more than one slice of MAX_SLICE_PIXELS
    (rows x columns x frames x samples) or more than 32 bits per sample: a few KB of JPEG 2000
    can declare a matrix that needs gigabytes once decoded."""
    try:
        rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
        frames, samples = int(ds.get("NumberOfFrames", 1) or 1), int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 16) or 16)
    except Exception as exc:  # noqa: BLE001 - pydicom decodes lazily: bad VR, odd length, wrong type
        raise CorruptFileError(path, f"the pixel matrix tags cannot be read ({type(exc).__name__})") from exc
    if rows * columns * max(frames, 1) * max(samples, 1) > MAX_SLICE_PIXELS or bits > 32:
        raise FileTooLargeError(path, f"declares {rows} x {columns} pixels x {frames} frame(s) x {samples} sample(s) "
                                      f"of {bits} bits, above the limit of one 2048 x 2048 slice; not decoded")


def has_rescale(ds: Dataset) -> bool:
    """True when the slice states how stored values map to HU."""
    return "RescaleSlope" in ds and "RescaleIntercept" in ds
