"""Read one DICOM file: header first (pixel data deferred), then pixels rescaled to HU."""

from __future__ import annotations

import contextlib
import math
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.misc import size_in_bytes
from pydicom.multival import MultiValue

from edge.errors import (CorruptFileError, FileTooLargeError, NoPixelDataError, NotDicomError, StudyError,
                         UnsupportedTransferSyntaxError)
from edge.ingest.dicom_scan import TooManyElementsError, check_structure
from edge.ingest.pydicom_adapter import missing_decoder, truncation_warned
from edge.limits import MAX_DATA_ELEMENTS

DICOMDIR_UID = "1.2.840.10008.1.3.10"
JPEG_2000 = frozenset({uid.JPEG2000Lossless, uid.JPEG2000, uid.JPEG2000MCLossless, uid.JPEG2000MC,
                       uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K})
MAX_SLICE_PIXELS = 2048 * 2048
"""CT slices are 512x512, occasionally 1024x1024: a file declaring more pixels is not decoded."""


def read_header(path: Path) -> Dataset:
    """Parse ``path`` as DICOM with the pixel data left on disk until it is decoded.

    Files without the 128-byte preamble are accepted only if they carry an SOP Class UID.
    Raises NotDicomError or CorruptFileError naming the file.
    """
    with open(path, "rb") as f:
        check_structure(f, path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = read_bounded(path, defer_size="64 KB")
        if truncation_warned(caught):
            raise CorruptFileError(path, "truncated: the file ends inside a data element")
    except InvalidDicomError:
        try:
            ds = read_bounded(path, defer_size="64 KB", force=True)
        except TooManyElementsError:
            raise
        except Exception as exc:  # noqa: BLE001 - any parser failure means "not DICOM"
            raise NotDicomError(path, "not a DICOM file") from exc
        if "SOPClassUID" not in ds:
            raise NotDicomError(path, "not a DICOM file (no DICM preamble, no SOP Class UID)") from None
    except (CorruptFileError, TooManyElementsError):
        raise
    except Exception as exc:  # noqa: BLE001 - truncated or malformed element streams
        raise CorruptFileError(path, f"cannot be parsed as DICOM ({type(exc).__name__}: {exc})") from exc
    if ds.get("MediaStorageSOPClassUID", ds.file_meta.get("MediaStorageSOPClassUID")) == DICOMDIR_UID:
        raise NotDicomError(path, "a DICOMDIR index, not an image")
    check_tags(ds, path)
    return ds


def read_bounded(source: Path | BinaryIO, defer_size: str | int | None = None, force: bool = False) -> Dataset:
    """``pydicom.dcmread(source, defer_size=..., force=...)``, except that reading stops after
    MAX_DATA_ELEMENTS top-level data elements and the file is refused (TooManyElementsError): a few
    MB of tiny elements would otherwise cost gigabytes of Python objects."""
    seen = 0

    def enough(tag: object, vr: object, length: int) -> bool:
        nonlocal seen
        seen += 1
        return seen > MAX_DATA_ELEMENTS + 1   # +1: pydicom also shows it the first element to guess the VR

    with contextlib.ExitStack() as stack:
        fp = stack.enter_context(open(source, "rb")) if isinstance(source, Path) else source
        ds = read_partial(fp, enough, defer_size=size_in_bytes(defer_size), force=force)
    if seen > MAX_DATA_ELEMENTS + 1:
        raise TooManyElementsError(source if isinstance(source, Path) else "instance",
                                   f"more than {MAX_DATA_ELEMENTS} data elements; not read")
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
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - no decoder, truncated pixel data, wrong lengths, bad codestreams
        raise decoding_error(exc, ds, path) from exc
    if pixels.ndim != 2:
        raise CorruptFileError(path, f"expected one greyscale frame, got pixel array of shape {pixels.shape}")
    return to_hu(pixels, ds)


def decoding_error(exc: Exception, ds: Dataset, path: Path) -> StudyError:
    """What a failure of pydicom to decode the pixel data of ``ds`` means for the user."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if missing_decoder(exc):
        return UnsupportedTransferSyntaxError(path, f"transfer syntax {getattr(syntax, 'name', str(syntax))!r} "
                                                    f"({syntax}) has no installed decoder")
    return CorruptFileError(path, f"pixel data cannot be decoded ({type(exc).__name__}: {exc})")


def to_hu(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values rescaled by the RescaleSlope and RescaleIntercept of ``ds`` (1 and 0 when
    missing) to Hounsfield units, as int16."""
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
    check_codestream_size(ds, path)


def check_codestream_size(ds: Dataset, path: Path) -> None:
    """Refuse JPEG 2000 pixel data whose codestream (its SIZ marker, in the first frame) states
    another image size or component count than the data set's Rows, Columns and SamplesPerPixel:
    the decoder allocates what the codestream states, whatever the header says."""
    if ds.file_meta.get("TransferSyntaxUID") not in JPEG_2000:
        return
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        fragment = next(generate_frames(ds.PixelData, number_of_frames=frames), b"")
    except Exception as exc:  # noqa: BLE001 - broken item tags: the encapsulation is damaged
        raise CorruptFileError(path, f"the encapsulated pixel data cannot be read ({type(exc).__name__})") from exc
    size = j2k_size(fragment)
    if size is None:
        raise CorruptFileError(path, "the JPEG 2000 pixel data has no SIZ marker where the standard puts it")
    header = (int(ds.get("Columns", 0)), int(ds.get("Rows", 0)), int(ds.get("SamplesPerPixel", 1) or 1))
    if size != header:
        raise CorruptFileError(path, "the JPEG 2000 codestream is {} x {} pixels x {} component(s), the header says "
                                     "{} x {} x {}; not decoded".format(*size, *header))


def j2k_size(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) stated by the SIZ marker of a JPEG 2000 codestream, or of the
    codestream box of a JP2 file; None when there is none where the standard puts it."""
    if data[4:8] == b"jP  ":  # a JP2 file: its boxes, up to the contiguous codestream box
        pos = 0
        while True:
            if pos + 8 > len(data):
                return None
            length, box = struct.unpack(">I4s", data[pos:pos + 8])
            header = 8
            if length == 1 and pos + 16 <= len(data):
                length, header = struct.unpack(">Q", data[pos + 8:pos + 16])[0], 16
            if box == b"jp2c":
                data = data[pos + header:]
                break
            if length < header:  # 0: the box runs to the end, and it is not the codestream
                return None
            pos += length
    if len(data) < 42 or data[:4] != b"\xff\x4f\xff\x51":  # SOC, then SIZ
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">4I", data[8:24])
    return xsiz - xosiz, ysiz - yosiz, struct.unpack(">H", data[40:42])[0]


def has_rescale(ds: Dataset) -> bool:
    """True when the slice states how stored values map to HU."""
    return "RescaleSlope" in ds and "RescaleIntercept" in ds
