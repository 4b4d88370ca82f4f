"""Lung segmentation behind one interface; the default is classical and needs no weights."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
from scipy import ndimage

from edge.preprocess.window import lung_window
from edge.runtime import invoke, load_interpreter


class LungSegmenter(Protocol):
    """Anything that turns an (n, H, W) HU volume into an (n, H, W) boolean lung mask."""

    name: str

    def segment(self, hu: np.ndarray) -> np.ndarray: ...


class ThresholdSegmenter:
    """HU threshold + connected components, with each lung's convex hull so that pathology counts as lung.

    1. Air below ``air_hu`` that is not connected (in its slice) to the image border is inside the body.
    2. 3D components of that air smaller than ``min_fraction`` of the largest are dropped (bowel gas).
    3. Each slice is split at the body's midline; every remaining component in each half is replaced
       by its filled convex hull. Ground-glass and dense consolidation inside or at the edge of a lung
       (a hole or a bite in the air mask) therefore stay in the lung mask. The hull can include a
       little mediastinum at the cardiac notch and the top of the liver dome at the bases.
    4. Where one lung's area is below ``mirror_below`` (half) of the other's, as when a lung is
       consolidated from wall to hilum and has almost no air left, the other lung's outline mirrored
       about the midline (within the body) is added.
    """

    name = "threshold"

    def __init__(self, air_hu: float = -320.0, min_fraction: float = 0.08, min_area_px: int = 12,
                 mirror_below: float = 0.5):
        self.air_hu = air_hu
        self.min_fraction = min_fraction
        self.min_area_px = min_area_px
        self.mirror_below = mirror_below

    def segment(self, hu: np.ndarray) -> np.ndarray:
        inner = np.empty(hu.shape, bool)
        for i, slice_hu in enumerate(hu):     # in-plane components, slice by slice: no labelled copy of the volume
            slice_air = slice_hu < self.air_hu
            labels, n = ndimage.label(slice_air)
            inside = np.ones(n + 1, bool)     # look-up tables instead of np.isin: no int64 copies
            inside[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = False
            inner[i] = inside[labels] & slice_air
        labels3d, n = _label(inner)
        if n == 0:
            return inner
        sizes = np.unique(labels3d[inner], return_counts=True)[1]    # labels 1..n, all present
        kept = np.zeros(n + 1, bool)
        kept[np.flatnonzero(sizes >= self.min_fraction * sizes.max()) + 1] = True
        del inner
        lungs = kept[labels3d]
        del labels3d
        for i, lung in enumerate(lungs):          # hull slice by slice, in place
            lungs[i] = self._hull_slice(lung, hu[i] > -500)
        return lungs

    def _hull_slice(self, lung: np.ndarray, body: np.ndarray) -> np.ndarray:
        if not lung.any():
            return np.zeros(lung.shape, bool)
        cols = np.flatnonzero(body.any(axis=0))
        mid = int((cols[0] + cols[-1]) // 2) if cols.size else lung.shape[1] // 2
        halves = []
        for lo, hi in ((0, mid), (mid, lung.shape[1])):
            half = np.zeros(lung.shape, np.uint8)
            half[:, lo:hi] = lung[:, lo:hi]
            contours, _ = cv2.findContours(half, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            hull = np.zeros(lung.shape, np.uint8)
            for c in contours:
                if cv2.contourArea(c) >= self.min_area_px:
                    cv2.fillPoly(hull, [cv2.convexHull(c)], 1)
            halves.append(hull.astype(bool))
        small, large = sorted(halves, key=lambda h: h.sum())
        if small.sum() < self.mirror_below * large.sum():
            # A lung that is mostly consolidated has little air left: borrow the other lung's outline.
            flip = np.array([[-1, 0, 2 * mid], [0, 1, 0]], np.float32)
            mirrored = cv2.warpAffine(large.astype(np.uint8), flip, lung.shape[::-1], flags=cv2.INTER_NEAREST)
            small = small | (mirrored.astype(bool) & ndimage.binary_fill_holes(body))
        return small | large


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """3-D connected components, as int16 labels when they fit (half the memory of int32)."""
    try:
        return ndimage.label(mask, output=np.int16)
    except RuntimeError:                      # more components than int16 can number
        return ndimage.label(mask)


class TFLiteSegmenter:
    """A trained U-Net (``ctedge train-unet``) run by the TFLite interpreter: each slice, lung-windowed
    to uint8, goes in as (1, 256, 256, 1); the sigmoid output above ``threshold`` is the lung mask."""

    name = "unet"

    def __init__(self, model: str | Path, threshold: float = 0.5, threads: int | None = None):
        self.interpreter = load_interpreter(model, threads)
        self.threshold = threshold

    def segment(self, hu: np.ndarray) -> np.ndarray:
        # uint8 slices: each becomes float32 as it goes in (the whole volume as float32 would be ~80 MB at 300 slices)
        return np.stack([invoke(self.interpreter, s[None, ..., None])[0, ..., 0] > self.threshold for s in lung_window(hu)])
