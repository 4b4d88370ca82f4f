"""Intensity and geometry steps: lung window, resize to the model grid, crop to the lungs, CLAHE."""

from __future__ import annotations

import cv2
import numpy as np

LUNG_WINDOW: tuple[float, float] = (-1350.0, 150.0)
"""Lung window in HU: centre -600, width 1500."""
MODEL_SIZE = 256
AIR_HU = -1024.0
LUNG_BOX_MARGIN = 0.05


DISPLAY_WINDOWS = {"mediastinum": (-125.0, 225.0), "bone": (-500.0, 1500.0)}
"""(low, high) HU of the window presets the result viewer offers besides the model's lung window
(mediastinum: centre 50, width 350; bone: centre 500, width 2000)."""


def lung_window(hu: np.ndarray, window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """Map HU to uint8 through the window (values outside are clipped)."""
    low, high = window
    out = np.empty(hu.shape, np.uint8)
    for i in range(0, len(hu), 32):          # 32 slices at a time: small float temporaries
        scaled = np.clip(hu[i:i + 32], low, high).astype(np.float32, copy=False)
        scaled -= low
        scaled *= 255.0 / (high - low)
        out[i:i + 32] = np.rint(scaled, out=scaled)
    return out


def pad_square(volume: np.ndarray, fill: float = AIR_HU) -> np.ndarray:
    """Pad an (n, H, W) volume with ``fill`` (air) on both sides of its shorter axis to (n, S, S),
    S = max(H, W), so that resizing keeps the aspect ratio."""
    n, h, w = volume.shape
    if h == w:
        return volume
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    return np.pad(volume, ((0, 0), (top, s - h - top), (left, s - w - left)), constant_values=fill)


def resize_slices(volume: np.ndarray, size: int = MODEL_SIZE) -> np.ndarray:
    """Resize every slice of an (n, H, W) volume to float32 (n, size, size) with area averaging;
    a non-square matrix is first padded with air to a square (see :func:`pad_square`)."""
    volume = pad_square(volume)
    n, h, w = volume.shape
    if (h, w) == (size, size):
        return volume.astype(np.float32, copy=False)
    if h % size == 0 and w % size == 0:  # exact block averaging, what INTER_AREA does, vectorised
        return volume.reshape(n, size, h // size, size, w // size).mean(axis=(2, 4), dtype=np.float32)
    return np.stack([cv2.resize(s, (size, size), interpolation=cv2.INTER_AREA) for s in volume]).astype(np.float32)


def clahe(slices_u8: np.ndarray, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of each uint8 slice."""
    op = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile_grid, tile_grid))
    out = np.empty_like(slices_u8)
    for i, s in enumerate(slices_u8):
        out[i] = op.apply(s)
    return out


def lung_box(mask: np.ndarray, margin: float = LUNG_BOX_MARGIN) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the lung pixels of an (n, H, W) mask, all slices together,
    widened by ``margin`` of each side's extent (clipped to the image); the whole slice when empty."""
    n, h, w = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=(0, 2))), np.flatnonzero(mask.any(axis=(0, 1)))
    if not rows.size:
        return 0, h, 0, w
    dy, dx = int(round(margin * (rows[-1] - rows[0] + 1))), int(round(margin * (cols[-1] - cols[0] + 1)))
    return max(0, rows[0] - dy), min(h, rows[-1] + 1 + dy), max(0, cols[0] - dx), min(w, cols[-1] + 1 + dx)


def fit_square(image: np.ndarray, size: int, interpolation: int | None = None) -> np.ndarray:
    """A 2-D image padded with 0 (black) on both sides of its shorter axis to a square, then resized
    to ``size`` x ``size`` (area averaging when shrinking, bilinear when enlarging, unless given):
    how a cut slice, from a volume or a public slice collection alike, becomes the model input."""
    h, w = image.shape
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    square = np.zeros((s, s), image.dtype)
    square[top:top + h, left:left + w] = image
    if interpolation is None:
        interpolation = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interpolation)


def crop_slices(slices: np.ndarray, box: tuple[int, int, int, int], size: int, interpolation: int | None = None) -> np.ndarray:
    """Every slice of an (n, H, W) stack cut to ``box`` (see :func:`lung_box`) and fitted to ``size``."""
    top, bottom, left, right = box
    out = np.empty((len(slices), size, size), slices.dtype)
    for i, s in enumerate(slices):
        out[i] = fit_square(np.ascontiguousarray(s[top:bottom, left:right]), size, interpolation)
    return out
