"""Split DICOM headers into series, pick the axial CT series to analyse, and order its slices.

Selection rule (documented in docs/pipeline.md, What happens to a study): among series that are
CT, single-frame, not a localizer, axial (slice normal within about 37 degrees of the patient z
axis) and have at least two slices, take the one with the most slices; ties go to the thinner
SliceThickness.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

AXIAL_MIN_NZ = 0.8


@dataclass
class Series:
    """The headers of one SeriesInstanceUID."""

    uid: str
    items: list[tuple[Path, Dataset]]

    @property
    def first(self) -> Dataset:
        return self.items[0][1]


@dataclass(frozen=True)
class SkippedSeries:
    uid: str
    n_files: int
    code: str        # one of SKIP_CODES: what the code decides on
    reason: str      # the sentence shown to people


SKIP_CODES = ("not_ct", "localizer", "multi_frame", "not_axial", "single_slice", "not_chosen")


@dataclass
class OrderedSlices:
    """Slices of the chosen series, most superior first, with their positions along the slice normal."""

    items: list[tuple[Path, Dataset]]
    position_mm: np.ndarray | None
    warnings: list[str] = field(default_factory=list)


def split_series(headers: list[tuple[Path, Dataset]]) -> list[Series]:
    """Group headers by SeriesInstanceUID (a missing UID forms its own group)."""
    groups: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path, ds in headers:
        groups[str(ds.get("SeriesInstanceUID", "(no SeriesInstanceUID)"))].append((path, ds))
    return [Series(uid, items) for uid, items in groups.items()]


def slice_normal(ds: Dataset) -> np.ndarray | None:
    """Unit normal of the slice plane from ImageOrientationPatient, or None if absent/invalid."""
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
    norm = np.linalg.norm(normal)
    return normal / norm if norm > 1e-6 else None


def rejection(series: Series) -> tuple[str, str] | None:
    """Why this series cannot be analysed, as (code, sentence), or None if it is a candidate."""
    ds = series.first
    modality = str(ds.get("Modality", "CT")) or "CT"
    if modality != "CT":
        return "not_ct", f"modality {modality}, not CT"
    if any("LOCALIZER" in str(t).upper() for t in ds.get("ImageType", [])):
        return "localizer", "localizer (scout) images"
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return "multi_frame", "multi-frame (enhanced) CT is not supported"
    normal = slice_normal(ds)
    if normal is not None and abs(normal[2]) < AXIAL_MIN_NZ:
        return "not_axial", f"not axial (slice normal {np.round(normal, 2).tolist()})"
    if len(series.items) < 2:
        return "single_slice", "only one slice; a CT volume is needed"
    return None


def select_series(all_series: list[Series]) -> tuple[Series | None, list[SkippedSeries]]:
    """Apply the selection rule; return the chosen series (or None) and the others with reasons."""
    skipped, candidates = [], []
    for s in all_series:
        why = rejection(s)
        if why:
            skipped.append(SkippedSeries(s.uid, len(s.items), *why))
        else:
            candidates.append(s)
    if not candidates:
        return None, skipped
    candidates.sort(key=lambda s: (-len(s.items), float(s.first.get("SliceThickness", 0) or 0)))
    chosen = candidates[0]
    for s in candidates[1:]:
        skipped.append(SkippedSeries(s.uid, len(s.items), "not_chosen", f"not chosen: {len(s.items)} slices, "
                                                                        f"the chosen series has {len(chosen.items)}"))
    return chosen, skipped


def order_slices(series: Series) -> OrderedSlices:
    """Sort slices most superior first.

    Uses ImagePositionPatient projected on the slice normal (from ImageOrientationPatient);
    instances without these tags are dropped when others have them. Falls back to
    SliceLocation, then InstanceNumber. Slices at a duplicate position are dropped.
    """
    warnings: list[str] = []
    items = series.items
    normal = slice_normal(series.first)
    with_pos = [(p, ds) for p, ds in items if normal is not None and len(ds.get("ImagePositionPatient", [])) == 3]
    if with_pos:
        if len(with_pos) < len(items):
            warnings.append(f"{len(items) - len(with_pos)} slice(s) without ImagePositionPatient were dropped")
        keyed = [(float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)), p, ds) for p, ds in with_pos]  # type: ignore[arg-type]
        # The normal of an axial slice points to the patient's head (+z): larger projection = more superior.
        sign = 1.0 if normal[2] >= 0 else -1.0  # type: ignore[index]
        keyed = [(k * sign, p, ds) for k, p, ds in keyed]
    elif all("SliceLocation" in ds for _, ds in items):
        warnings.append("no ImagePositionPatient/ImageOrientationPatient: slices ordered by SliceLocation")
        keyed = [(float(ds.SliceLocation), p, ds) for p, ds in items]
    else:
        warnings.append("no slice positions: slices ordered by InstanceNumber (first = most superior assumed)")
        keyed = [(-float(ds.get("InstanceNumber", 0) or 0), p, ds) for p, ds in items]
        keyed.sort(key=lambda t: -t[0])
        return OrderedSlices([(p, ds) for _, p, ds in keyed], None, warnings)
    keyed.sort(key=lambda t: -t[0])
    unique = [keyed[0]] + [cur for prev, cur in zip(keyed, keyed[1:]) if abs(prev[0] - cur[0]) > 1e-3]
    if len(unique) < len(keyed):
        warnings.append(f"{len(keyed) - len(unique)} slice(s) at a duplicate position were dropped")
    return OrderedSlices([(p, ds) for _, p, ds in unique], np.array([k for k, _, _ in unique]), warnings)
