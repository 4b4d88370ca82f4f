"""Read a study given as image slices (PNG/JPEG 8-bit, 16-bit PNG/TIFF as in COVID-CTset)."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from edge.errors import CorruptFileError, FileTooLargeError
from edge.ingest.dicom_files import MAX_SLICE_PIXELS
from edge.preprocess.window import LUNG_WINDOW

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
RAW_OFFSET = 1024.0
"""16-bit slices (COVID-CTset) store HU + 1024, as the DICOM they were exported from."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def natural_key(path: Path) -> list:
    """Sort key so that slice_2 comes before slice_10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def check_image_size(path: Path, max_pixels: int, kind: str) -> None:
    """Refuse, from the header and before decoding, an image declaring more than ``max_pixels``
    (the limit of one ``kind``: a CT slice, a radiograph): a few MB of PNG can declare gigabytes of pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
    except Image.DecompressionBombError as exc:
        raise FileTooLargeError(path, f"declares more than {Image.MAX_IMAGE_PIXELS} pixels; not decoded") from exc
    except Exception as exc:  # noqa: BLE001 - any header Pillow cannot parse
        raise CorruptFileError(path, "cannot be decoded as an image") from exc
    if width * height > max_pixels:
        side = math.isqrt(max_pixels)
        raise FileTooLargeError(path, f"declares {width} x {height} pixels, above the limit of one {side} x {side} "
                                      f"{kind}; not decoded")


def read_grey(path: Path, max_pixels: int, kind: str) -> np.ndarray:
    """One PNG/JPEG/TIFF image as a greyscale array of its own sample type (its size checked from the
    header first against ``max_pixels``, the limit of one ``kind``); CorruptFileError when it cannot be decoded."""
    check_image_size(path, max_pixels, kind)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise CorruptFileError(path, "cannot be decoded as an image")
    return cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY) if img.ndim == 3 else img


def read_image_hu(path: Path) -> tuple[np.ndarray, bool]:
    """Read one image slice as approximate HU; return (hu, exact).

    8-bit images are assumed to be lung-windowed and mapped back through the lung window
    (``exact`` False); 16-bit images are taken as HU + 1024 (``exact`` True but unverified).
    """
    img = read_grey(path, MAX_SLICE_PIXELS, "slice")
    if img.dtype == np.uint8:
        low, high = LUNG_WINDOW
        return (img.astype(np.float32) / 255.0 * (high - low) + low), False
    if img.dtype == np.uint16:
        return img.astype(np.float32) - RAW_OFFSET, True
    raise CorruptFileError(path, f"unsupported image sample type {img.dtype}")
