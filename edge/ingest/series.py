"""Split DICOM headers into series, screen every image, order each candidate's slices and check its
geometry, then pick the axial CT series to analyse. docs/series-rules.md states every rule and
threshold; in short:

1. Per image (:func:`screen_images`): localizers, and images whose type, modality, orientation or
   position tags differ from the rest of their series, are dropped by file with a reason.
2. Per series (:func:`rejection`): CT (without Modality: unless the SOP class is another than CT
   Image Storage), single-frame, not
   all localizers, axial (slice normal within about 37 degrees of the patient z axis), a chest body
   part if BodyPartExamined says one, at least two slices.
3. Geometry (:func:`order_slices`): the order used is stated; conflicting duplicates, gaps and
   gantry tilt are flagged, or refused above their thresholds (GeometryError).
4. Choice (:func:`select_series`): inside the model's training range first, then without gaps,
   then the most slices, then the thinner slices; the reason is recorded.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydicom.dataset import Dataset

from edge.card import TrainingRange
from edge.errors import GeometryError, StudyError
from edge.ingest.dicom_files import read_bounded
from edge.ingest.flags import DroppedFile, Flag

AXIAL_MIN_NZ = 0.8
ORIENTATION_TOLERANCE_DEG = 2.0
"""An image whose slice normal differs from its series' by more is dropped."""
GAP_WARN_FACTOR = 1.5
"""A spacing larger than this times the series' median spacing is a gap (flagged)."""
GAP_REFUSE_FACTOR = 5.0
"""A gap larger than this times the median spacing (about four slices missing) is refused."""
TILT_WARN_DEG = 1.0
TILT_REFUSE_DEG = 10.0
"""Gantry tilt above TILT_WARN_DEG is flagged (the volume is sheared, not resampled), above TILT_REFUSE_DEG refused."""
SAME_POSITION_MM = 0.01
MIN_EXTENT_MM = 100.0
"""A series shorter than this along the slice normal is flagged: a chest CT covers about 200-350 mm."""
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS", "CHESTABDOMEN", "CHESTABDPELVIS", "CHESTABDOMENPELVIS",
                              "THORAXABDOMEN", "WHOLEBODY", "TRUNK", "CHESTTOPELVIS", "NECKCHEST", "NECKCHESTABDOMEN",
                              "NECKCHESTABDPELVIS", "HEADNECKCHEST"})
"""BodyPartExamined values (upper case, without spaces, underscores or hyphens) that include the chest."""
OTHER_BODY_PARTS = frozenset({"HEAD", "BRAIN", "SKULL", "FACE", "ORBIT", "SINUS", "JAW", "IAC", "NECK", "HEADNECK",
                              "CSPINE", "LSPINE", "SSPINE", "SPINE", "ABDOMEN", "PELVIS", "ABDOMENPELVIS", "ABDPELVIS",
                              "KIDNEY", "LIVER", "BLADDER", "COLON", "EXTREMITY", "UPPEREXTREMITY", "LOWEREXTREMITY",
                              "ARM", "LEG", "HAND", "FOOT", "KNEE", "ANKLE", "ELBOW", "WRIST", "HIP", "SHOULDER",
                              "FEMUR", "TIBIA", "FIBULA", "HUMERUS", "FOREARM", "THIGH", "FINGER", "TOE", "HEEL"})
"""BodyPartExamined values of regions without lungs: outside the intended use."""


T = TypeVar("T")


def common(values: list[T]) -> T:
    """The most frequent of ``values``."""
    return Counter(values).most_common(1)[0][0]


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


SKIP_CODES = ("not_ct", "localizer", "multi_frame", "not_axial", "single_slice", "outside_intended_use", "geometry",
              "not_chosen")


@dataclass
class OrderedSlices:
    """Slices of a series, most superior first, with their positions along the slice normal, the
    files left out and the typed warnings about its geometry."""

    items: list[tuple[Path, Dataset]]
    position_mm: np.ndarray | None
    flags: list[Flag] = field(default_factory=list)
    dropped: list[DroppedFile] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return [f.message for f in self.flags]

    @property
    def has_gap(self) -> bool:
        return any(f.code in ("gap", "no_position", "duplicate_position") for f in self.flags)


@dataclass
class Choice:
    """The series to analyse, its ordered slices, why it was chosen, and the series not analysed."""

    series: Series | None
    ordered: OrderedSlices | None
    why: str
    skipped: list[SkippedSeries]
    errors: list[StudyError]    # geometry refusals of candidate series, raised when none is left


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


def is_localizer(ds: Dataset) -> bool:
    return any(t in ("LOCALIZER", "SCOUT") for t in (str(v).upper() for v in ds.get("ImageType", [])))


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return math.degrees(math.acos(min(1.0, abs(float(np.dot(a, b))))))


def screen_images(series: Series) -> tuple[Series, list[DroppedFile]]:
    """The series without its localizers and odd images, and each dropped file with its reason.

    An image is odd when its Modality, ImageType (first two values), NumberOfFrames or slice
    orientation (by more than ORIENTATION_TOLERANCE_DEG) differs from most of its series, or when it
    lacks ImagePositionPatient or ImageOrientationPatient that most of its series has."""
    dropped = [DroppedFile(p.name, "scout_dropped", "localizer (scout) image (ImageType "
                           + "\\".join(map(str, ds.get("ImageType", []))) + ")") for p, ds in series.items if is_localizer(ds)]
    items = [(p, ds) for p, ds in series.items if not is_localizer(ds)]
    if not items:
        return Series(series.uid, []), dropped

    modality = common([str(ds.get("Modality", "")) for _, ds in items])
    kind = common([tuple(str(v).upper() for v in ds.get("ImageType", [])[:2]) for _, ds in items])
    frames = common([int(ds.get("NumberOfFrames", 1) or 1) for _, ds in items])
    normals = [slice_normal(ds) for _, ds in items]
    with_normal = [n for n in normals if n is not None]
    normal = (np.asarray(common([tuple(np.round(n, 2)) for n in with_normal]), float)
              if 2 * len(with_normal) > len(items) else None)
    reference = None if normal is None else normal / np.linalg.norm(normal)
    positioned = 2 * sum("ImagePositionPatient" in ds for _, ds in items) > len(items)
    kept = []
    for (path, ds), n in zip(items, normals):
        why = None
        if str(ds.get("Modality", "")) != modality:
            why = "odd_image_dropped", f"Modality {ds.get('Modality', 'missing')}, the series is {modality or 'without'}"
        elif tuple(str(v).upper() for v in ds.get("ImageType", [])[:2]) != kind:
            why = "odd_image_dropped", (f"ImageType {'/'.join(map(str, ds.get('ImageType', [])[:2])) or 'missing'}, "
                                        f"the series is {'/'.join(kind)}")
        elif int(ds.get("NumberOfFrames", 1) or 1) != frames:
            why = "odd_image_dropped", f"{ds.get('NumberOfFrames')} frames, the series has {frames}"
        elif reference is not None and n is None:
            why = "odd_image_dropped", "no ImageOrientationPatient, the rest of the series has it"
        elif reference is not None and n is not None and (angle := _angle_deg(n, reference)) > ORIENTATION_TOLERANCE_DEG:
            why = "odd_image_dropped", f"orientation differs by {angle:.0f} degrees from the rest of the series"
        elif positioned and "ImagePositionPatient" not in ds:
            why = "no_position_dropped", "without ImagePositionPatient, the rest of the series has it"
        if why:
            dropped.append(DroppedFile(path.name, *why))
        else:
            kept.append((path, ds))
    return Series(series.uid, kept), dropped


def body_part(ds: Dataset) -> str:
    """BodyPartExamined in upper case without spaces, underscores or hyphens ('' when absent)."""
    return "".join(c for c in str(ds.get("BodyPartExamined", "") or "").upper() if c.isalnum())


def rejection(series: Series) -> tuple[str, str] | None:
    """Why this (screened) series cannot be analysed, as (code, sentence), or None if it is a candidate."""
    if not series.items:
        return "localizer", "localizer (scout) images"
    ds = series.first
    modality = str(ds.get("Modality", "") or "")
    if not modality and str(ds.get("SOPClassUID", CT_IMAGE_STORAGE)) != CT_IMAGE_STORAGE:
        return "not_ct", f"no Modality, and SOP class {ds.SOPClassUID} is not CT Image Storage"
    if modality and modality != "CT":
        return "not_ct", f"modality {modality}, not CT"
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return "multi_frame", "multi-frame images other than Enhanced or Legacy Converted Enhanced CT"
    normal = slice_normal(ds)
    if normal is not None and abs(normal[2]) < AXIAL_MIN_NZ:
        return "not_axial", f"not axial (slice normal {np.round(normal, 2).tolist()})"
    if body_part(ds) in OTHER_BODY_PARTS:
        return "outside_intended_use", (f"BodyPartExamined {ds.BodyPartExamined}: the model reads chest CT "
                                        "(outside the intended use)")
    if len(series.items) < 2:
        return "single_slice", "only one slice; a CT volume is needed"
    return None


def select_series(all_series: list[Series], training_range: TrainingRange = TrainingRange()) -> Choice:
    """Screen, check and order every series; choose the one to analyse (see the module docstring)."""
    skipped: list[SkippedSeries] = []
    errors: list[StudyError] = []
    candidates: list[tuple[Series, OrderedSlices]] = []
    for s in all_series:
        screened, dropped = screen_images(s)
        rejected = rejection(screened)
        if rejected:
            skipped.append(SkippedSeries(s.uid, len(s.items), *rejected))
            continue
        try:
            ordered = order_slices(screened)
        except StudyError as exc:
            errors.append(exc)
            skipped.append(SkippedSeries(s.uid, len(s.items), "geometry", f"{Path(exc.path).name}: {exc.problem}"))
            continue
        ordered.dropped[:0] = dropped
        candidates.append((screened, ordered))
    if not candidates:
        return Choice(None, None, "", skipped, errors)

    def rank(c: tuple[Series, OrderedSlices]) -> tuple:
        s, o = c
        return (bool(_outside(training_range, s)), o.has_gap, -len(o.items), _thickness(s) or 0.0)

    candidates.sort(key=rank)
    chosen, ordered = candidates[0]
    why = _why(chosen, ordered, candidates[1:], training_range)
    for s, o in candidates[1:]:
        skipped.append(SkippedSeries(s.uid, len(s.items), "not_chosen", "not chosen: " + _describe(s, o, training_range)))
    return Choice(chosen, ordered, why, skipped, errors)


def _thickness(s: Series) -> float | None:
    value = s.first.get("SliceThickness")
    return float(value) if value else None


def _spacing(s: Series) -> float | None:
    value = s.first.get("PixelSpacing")
    return float(value[0]) if value else None


def _outside(training_range: TrainingRange, s: Series) -> list[str]:
    return training_range.warnings(_thickness(s), _spacing(s))


def _describe(s: Series, o: OrderedSlices, training_range: TrainingRange) -> str:
    thickness = _thickness(s)
    parts = [f"{len(o.items)} slices", f"{thickness:g} mm thick" if thickness else "thickness not recorded"]
    if training_range.slice_thickness_mm or training_range.pixel_spacing_mm:
        parts.append("outside the model's training range" if _outside(training_range, s) else "inside the model's training range")
    if o.has_gap:
        parts.append("with gaps or missing positions")
    return ", ".join(parts)


def _why(chosen: Series, ordered: OrderedSlices, others: list[tuple[Series, OrderedSlices]],
         training_range: TrainingRange) -> str:
    text = "the only candidate series" if not others else "chosen among " + str(len(others) + 1) + " candidate series"
    text += f" ({_describe(chosen, ordered, training_range)})"
    if others:
        rule = ("the rule: inside the model's training range first, then without gaps, then the most slices, "
                "then the thinner slices")
        text += "; " + rule
    return text


def order_slices(series: Series) -> OrderedSlices:
    """Sort a screened series most superior first and check its geometry.

    Order: ImagePositionPatient projected on the slice normal; without it SliceLocation, then a
    unique InstanceNumber (both flagged ``no_position``, naming the order used); with none of these
    the series is refused. Images at one position: identical copies are dropped, images with
    different pixels leave the position out (``duplicate_position``). Gaps, gantry tilt and a short
    z extent are flagged; a gap above GAP_REFUSE_FACTOR or a tilt above TILT_REFUSE_DEG raise
    GeometryError naming the file."""
    flags: list[Flag] = []
    items = series.items
    normal = slice_normal(series.first)
    if normal is not None and all("ImagePositionPatient" in ds for _, ds in items):
        # The normal of an axial slice points to the patient's head (+z): larger projection = more superior.
        sign = 1.0 if normal[2] >= 0 else -1.0
        keyed = [(sign * float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)), p, ds) for p, ds in items]
        flags += _tilt(items, normal)
    elif all("SliceLocation" in ds for _, ds in items):
        flags.append(Flag("no_position", "no ImagePositionPatient/ImageOrientationPatient: slices ordered by "
                          "SliceLocation (larger = more superior assumed)", {"order": "SliceLocation"}))
        keyed = [(float(ds.SliceLocation), p, ds) for p, ds in items]
    else:
        numbers = [ds.get("InstanceNumber") for _, ds in items]
        if any(n is None for n in numbers) or len(set(map(int, numbers))) < len(numbers):
            raise GeometryError(items[0][0], "no ImagePositionPatient, SliceLocation or unique InstanceNumber "
                                             f"in its series ({len(items)} files): the slice order is unknown; not analysed")
        flags.append(Flag("no_position", "no slice positions (ImagePositionPatient, SliceLocation): slices ordered by "
                          "InstanceNumber, the first assumed most superior; neither the direction nor gaps can be checked",
                          {"order": "InstanceNumber"}))
        keyed = sorted(((-float(n), p, ds) for n, (p, ds) in zip(numbers, items)), key=lambda t: -t[0])
        return OrderedSlices([(p, ds) for _, p, ds in keyed], None, flags)
    keyed.sort(key=lambda t: (-t[0], t[1].name))
    unique, dropped, dup_flags = _resolve_duplicates(keyed)
    flags += dup_flags
    if len(unique) < 2:
        raise GeometryError(items[0][0], "fewer than two slices at distinct positions in its series; not analysed")
    positions = np.array([k for k, _, _ in unique])
    flags += _gaps(unique, positions)
    extent = float(positions[0] - positions[-1] + np.median(-np.diff(positions)))
    if extent < MIN_EXTENT_MM:
        flags.append(Flag("short_extent", f"the series covers {extent:.0f} mm along the body axis, less than "
                          f"{MIN_EXTENT_MM:g} mm: a chest CT covers about 200-350 mm, so part of the lungs may be missing",
                          {"extent_mm": round(extent, 1)}))
    return OrderedSlices([(p, ds) for _, p, ds in unique], positions, flags, dropped)


def _tilt(items: list[tuple[Path, Dataset]], normal: np.ndarray) -> list[Flag]:
    """Gantry tilt: the larger of GantryDetectorTilt and the angle between the slice normal and the
    line through the first and last slice positions (a sheared stack)."""
    tags = [abs(float(ds.get("GantryDetectorTilt", 0) or 0)) for _, ds in items]
    positions = np.array([np.asarray(ds.ImagePositionPatient, float) for _, ds in items])
    along = positions @ normal
    stack = positions[int(np.argmax(along))] - positions[int(np.argmin(along))]
    sheared = _angle_deg(stack / np.linalg.norm(stack), normal) if np.linalg.norm(stack) > 1e-6 else 0.0
    tilt = max(max(tags), sheared)
    if tilt <= TILT_WARN_DEG:
        return []
    source = "GantryDetectorTilt" if max(tags) >= sheared else "slice positions"
    if tilt > TILT_REFUSE_DEG:
        raise GeometryError(items[0][0], f"gantry tilt of {tilt:.1f} degrees (from its {source}), more than "
                                         f"{TILT_REFUSE_DEG:g}: the volume is sheared and is not resampled; not analysed")
    return [Flag("gantry_tilt", f"gantry tilt of {tilt:.1f} degrees (from the {source}): slices read as stacked, "
                 "the volume is sheared and not resampled", {"degrees": round(tilt, 2)})]


def _resolve_duplicates(keyed: list[tuple[float, Path, Dataset]]):
    """Images at one position: identical copies (same SOPInstanceUID or the same pixel data) keep one;
    images with different pixels leave the position out, named in a ``duplicate_position`` flag."""
    groups: list[list[tuple[float, Path, Dataset]]] = []
    for item in keyed:
        if groups and abs(groups[-1][0][0] - item[0]) <= SAME_POSITION_MM:
            groups[-1].append(item)
        else:
            groups.append([item])
    unique, dropped, copies = [], [], []
    conflicts: list[dict[str, Any]] = []
    for group in groups:
        if len(group) == 1:
            unique.append(group[0])
        elif _identical(group):
            unique.append(group[0])
            copies += [p.name for _, p, _ in group[1:]]
            dropped += [DroppedFile(p.name, "duplicate_dropped", f"a copy of {group[0][1].name} at the same position")
                        for _, p, _ in group[1:]]
        else:
            names = [p.name for _, p, _ in group]
            conflicts.append({"position_mm": round(group[0][0], 3), "files": names})
            dropped += [DroppedFile(n, "duplicate_position", f"{len(names)} images with different pixels at position "
                                    f"{group[0][0]:.2f} mm ({', '.join(names)}): the position is left out") for n in names]
    flags = []
    if copies:
        flags.append(Flag("duplicate_dropped", f"{len(copies)} duplicate image(s) dropped (copies of an image at the same "
                          f"position): {', '.join(copies[:5])}" + (" ..." if len(copies) > 5 else ""), {"files": copies}))
    if conflicts:
        shown = "; ".join(f"{c['position_mm']:.2f} mm: {', '.join(c['files'])}" for c in conflicts[:5])
        flags.append(Flag("duplicate_position", f"{len(conflicts)} position(s) hold images with different pixels and "
                          f"were left out ({shown}{' ...' if len(conflicts) > 5 else ''})", {"positions": conflicts}))
    return unique, dropped, flags


def _identical(group: list[tuple[float, Path, Dataset]]) -> bool:
    if len({str(ds.get("SOPInstanceUID", "")) for _, _, ds in group}) == 1:
        return True
    pixels = {bytes(read_bounded(p).get("PixelData", b"")) for _, p, _ in group}
    return len(pixels) == 1


def _gaps(unique: list[tuple[float, Path, Dataset]], positions: np.ndarray) -> list[Flag]:
    """``gap`` flags where the spacing exceeds GAP_WARN_FACTOR x the median spacing; GeometryError
    above GAP_REFUSE_FACTOR."""
    spacing = -np.diff(positions)
    median = float(np.median(spacing))
    gaps = [{"after": unique[i][1].name, "before": unique[i + 1][1].name, "mm": round(float(spacing[i]), 2),
             "from_mm": round(float(positions[i]), 2), "to_mm": round(float(positions[i + 1]), 2)}
            for i in np.flatnonzero(spacing > GAP_WARN_FACTOR * median)]
    if not gaps:
        return []
    worst = max(gaps, key=lambda g: g["mm"])
    if worst["mm"] > GAP_REFUSE_FACTOR * median:
        path = next(p for _, p, _ in unique if p.name == worst["after"])
        raise GeometryError(path, f"a gap of {worst['mm']:g} mm between {worst['after']} and {worst['before']} "
                                            f"({worst['mm'] / median:.1f} times the median spacing of {median:g} mm, "
                                            f"more than {GAP_REFUSE_FACTOR:g}: about {round(worst['mm'] / median) - 1} "
                                            "slices missing); not analysed")
    shown = "; ".join(f"{g['mm']:g} mm between {g['after']} and {g['before']} (z {g['from_mm']:g} to {g['to_mm']:g})"
                      for g in gaps[:5])
    return [Flag("gap", f"{len(gaps)} gap(s) larger than {GAP_WARN_FACTOR:g} times the median spacing of {median:g} mm: "
                 f"{shown}{' ...' if len(gaps) > 5 else ''}; slices on either side are read as neighbours",
                 {"median_spacing_mm": median, "gaps": gaps})]
