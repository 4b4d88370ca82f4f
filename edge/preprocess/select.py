"""Slice selection: drop slices with no (or too little) lung before grouping.

Three rules, each returning a Selection that says why every dropped slice was dropped:

* ``lung-extent`` (default): keep the contiguous run of slices from the first to the last slice
  whose lung area is at least ``min_ratio`` (5%) of the study's largest lung area. Slices above
  the apices and below the bases go; no slice between them is ever dropped, however much of its
  lung is consolidated.
* ``seed-area``: the seed design's thresholds, read as follows. With areas relative to the
  study's largest lung area, the run starts at the first slice (from the top) reaching 0.4 and
  ends at the last slice reaching 0.9. So the upper side keeps slices down to 40% of the peak
  area, the lower side only slices with at least 90% of it: much of the lung bases is dropped.
* ``rahimzadeh``: Rahimzadeh et al. (2021), as published: count "dark" pixels (stored value
  < 300, i.e. HU < -724) in rows 240-340, columns 120-370 of the 512x512 slice; keep slices whose
  count exceeds (max - min) / 1.5 over the study. Dense consolidation brightens that region,
  so this rule drops infected slices (see docs/pipeline.md for its measured retention).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.options import METHODS

RAHIMZADEH_DARK_HU = 300 - 1024
RAHIMZADEH_ROWS = (240, 340)
RAHIMZADEH_COLS = (120, 370)


@dataclass(frozen=True)
class Selection:
    method: str
    keep: np.ndarray          # (n,) bool
    reasons: tuple[str, ...]  # per slice: "" when kept, else why it was dropped

    @property
    def kept_indices(self) -> np.ndarray:
        return np.flatnonzero(self.keep)


def lung_area_ratio(lung_mask: np.ndarray) -> np.ndarray:
    """Lung area of each slice relative to the largest lung area in the study."""
    area = lung_mask.reshape(len(lung_mask), -1).sum(axis=1).astype(float)
    return area / area.max() if area.max() > 0 else area


def select_lung_extent(ratio: np.ndarray, min_ratio: float = 0.05) -> Selection:
    """Keep the run between the first and last slice with at least ``min_ratio`` of the peak lung area."""
    return _run(ratio, min_ratio, min_ratio, "lung-extent")


def select_seed_area(ratio: np.ndarray, upper: float = 0.4, lower: float = 0.9) -> Selection:
    """The seed thresholds: from the first slice reaching ``upper`` to the last reaching ``lower``."""
    return _run(ratio, upper, lower, "seed-area")


def _run(ratio: np.ndarray, upper: float, lower: float, method: str) -> Selection:
    n = len(ratio)
    above_upper, above_lower = np.flatnonzero(ratio >= upper), np.flatnonzero(ratio >= lower)
    if not above_upper.size or not above_lower.size:
        return Selection(method, np.zeros(n, bool), tuple("no lung found in the study" for _ in range(n)))
    start, stop = above_upper[0], above_lower[-1]
    keep = np.zeros(n, bool)
    keep[start:stop + 1] = True
    reasons = tuple(
        "" if keep[i] else
        f"above the lung apex: lung area {ratio[i]:.2f} of peak < {upper}" if i < start else
        f"below the lung base: lung area {ratio[i]:.2f} of peak < {lower}"
        for i in range(n))
    return Selection(method, keep, reasons)


def dark_pixel_counts(hu: np.ndarray) -> np.ndarray:
    """Rahimzadeh's per-slice count of pixels below -724 HU in the central region (scaled from 512x512)."""
    h, w = hu.shape[1:]
    r0, r1 = (int(round(v * h / 512)) for v in RAHIMZADEH_ROWS)
    c0, c1 = (int(round(v * w / 512)) for v in RAHIMZADEH_COLS)
    return (hu[:, r0:r1, c0:c1] < RAHIMZADEH_DARK_HU).reshape(len(hu), -1).sum(axis=1)


def select_rahimzadeh(hu: np.ndarray) -> Selection:
    """Rahimzadeh et al.'s dark-pixel rule on full-resolution HU slices, as published."""
    counts = dark_pixel_counts(hu)
    threshold = (counts.max() - counts.min()) / 1.5
    keep = counts > threshold
    reasons = tuple("" if k else f"lung closed: {c} dark pixels <= threshold {threshold:.0f}"
                    for k, c in zip(keep, counts))
    return Selection("rahimzadeh", keep, reasons)


def select_slices(method: str, hu: np.ndarray | None, lung_mask: np.ndarray) -> Selection:
    """Apply the named rule; ``hu`` is the full-resolution volume (only the rahimzadeh rule reads
    it), ``lung_mask`` the model-grid mask."""
    if method == "lung-extent":
        return select_lung_extent(lung_area_ratio(lung_mask))
    if method == "seed-area":
        return select_seed_area(lung_area_ratio(lung_mask))
    if method == "rahimzadeh":
        if hu is None:
            raise ValueError("the rahimzadeh selection needs the full-resolution HU volume")
        return select_rahimzadeh(hu)
    raise ValueError(f"unknown slice selection {method!r}; choose one of {', '.join(METHODS)}")
