"""Grouping of selected slices into fixed blocks for the sequence model."""

from __future__ import annotations

import numpy as np

GROUP_SIZE = 50


def group_plan(n: int, size: int = GROUP_SIZE) -> list[np.ndarray]:
    """Which slice positions make up each group of ``size`` slices.

    Each group is an array of ``size`` fractional positions into the ``n`` selected slices;
    NaN marks a black padding slice. Blocks of ``size`` are cut in order; a remainder of more
    than ``size // 2`` slices is padded with black slices; a remainder of ``size // 2`` or fewer
    is merged with the previous block and the ``size + r`` slices are interpolated down to
    ``size``. Fewer than ``size`` slices make one padded group.
    """
    if n < 1:
        raise ValueError("no slices to group")
    full, rest = divmod(n, size)
    if full == 0 or rest > size // 2:
        blocks = [np.arange(i * size, (i + 1) * size, dtype=float) for i in range(full)]
        tail = np.full(size, np.nan)
        tail[:rest] = np.arange(full * size, n)
        return blocks + ([tail] if rest else [])
    blocks = [np.arange(i * size, (i + 1) * size, dtype=float) for i in range(full - 1)]
    start = (full - 1) * size
    return blocks + [np.linspace(start, n - 1, size)]


def position_sources(pos: float) -> list[tuple[int, float]]:
    """The slices (indices into the selected slices) and weights that :func:`assemble` blends at the
    fractional position ``pos``: one slice with weight 1 at a whole position, two at a fractional
    one, none for padding (NaN)."""
    if np.isnan(pos):
        return []
    lo, w = int(np.floor(pos)), float(pos - np.floor(pos))
    return [(lo, 1.0)] if w == 0 else [(lo, 1.0 - w), (lo + 1, w)]


def assemble(slices: np.ndarray, plan: np.ndarray) -> np.ndarray:
    """Build one group from (n, H, W) slices by linear interpolation along z; NaN -> black slice."""
    out = np.zeros((len(plan),) + slices.shape[1:], np.float32)
    for k, pos in enumerate(plan):
        if np.isnan(pos):
            continue
        lo = int(np.floor(pos))
        hi = min(lo + 1, len(slices) - 1)
        w = pos - lo
        out[k] = slices[lo] if w == 0 else (1 - w) * slices[lo] + w * slices[hi]
    return np.rint(out).astype(slices.dtype) if slices.dtype == np.uint8 else out
