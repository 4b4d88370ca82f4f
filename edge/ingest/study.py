"""Load a study from disk into one HU volume: pick the series, order and decode its slices."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.card import TrainingRange
from edge.errors import (CorruptFileError, EmptyStudyError, FileTooLargeError, MixedSizesError,
                         NoUsableSeriesError, OutsideIntendedUseError, StudyError, TooFewSlicesError)
from edge.ingest.dicom_files import has_rescale
from edge.ingest.parallel import PREFETCH
from edge.ingest.enhanced import decode_slices, frame_headers
from edge.ingest.identity import instance_number, study_identity
from edge.ingest.image_files import is_image_file, natural_key, read_image_hu
from edge.ingest.flags import DroppedFile, Flag, lossy_flag
from edge.ingest.series import CHEST_BODY_PARTS, SkippedSeries, body_part, select_series, split_series
from edge.ingest.sources import Limits, study_files


@dataclass
class Volume:
    """One CT series as read from disk (slice 0 the most superior), or for ``modality`` xray the
    one radiograph as a single slice (see ``edge.pipeline.prepare_radiograph``)."""

    hu: np.ndarray | None                # (n, H, W) int16, Hounsfield units; None once released (or never held, see resized)
    files: list[str]                     # base name of each slice's file
    position_mm: np.ndarray | None       # (n,) position along the slice normal, decreasing; None if unknown
    series_uid: str | None
    hu_exact: bool                       # False when HU were estimated from 8-bit images
    pixel_spacing_mm: float | None = None
    slice_thickness_mm: float | None = None
    skipped_series: list[SkippedSeries] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_files: int = 0
    resized: np.ndarray | None = None    # (n, size, size) float32 HU when load_study(resize_to=size) read DICOM
    modality: str = "ct"                 # edge.card.MODALITIES
    view: str | None = None              # a radiograph's view position (PA, AP), None when not recorded
    flags: list[Flag] = field(default_factory=list)            # typed warnings (each also in ``warnings``)
    dropped_files: list[DroppedFile] = field(default_factory=list)  # files of the chosen series not read
    series_why: str = ""                 # why this series was chosen
    identity: dict[str, str] = field(default_factory=lambda: study_identity(None))  # edge.ingest.identity
    instance_numbers: list[int | None] = field(default_factory=list)  # each slice's InstanceNumber (empty: none read)

    def flag(self, flag: Flag) -> None:
        """Record a typed warning (its message joins ``warnings``)."""
        self.flags.append(flag)
        self.warnings.append(flag.message)

    @property
    def n_slices(self) -> int:
        return len(self.files)


def load_study(source: str | Path | Sequence[str | Path], limits: Limits = Limits(),
               resize_to: int | None = None, training_range: TrainingRange = TrainingRange()) -> Volume:
    """Read a study (folder, zip, file or list of files) into a Volume.

    With ``resize_to``, DICOM slices are resized as they are decoded: ``volume.resized`` holds them
    and ``volume.hu`` is None (the full-resolution volume is never held; image files are read as usual).

    ``training_range`` (the model card's) decides between candidate series (edge.ingest.series).
    DICOM wins over image files when both are present. Raises a StudyError subclass naming the
    file when nothing usable is found; single bad slices in a good series are skipped with a warning.
    """
    with study_files(source, limits) as files:
        headers, rejected = [], []
        for f in files:
            if is_image_file(f):
                continue
            try:
                headers += frame_headers(f, PREFETCH.header(f))   # a multi-frame CT object: one header per frame
            except StudyError as exc:
                rejected.append(exc)
        images = sorted((f for f in files if is_image_file(f)), key=natural_key)
        warnings = _summarise("file(s) skipped", rejected)
        if headers:
            if images:
                warnings.append(f"{len(images)} image file(s) ignored: the study has DICOM files")
            volume = _load_dicom(headers, source, warnings, resize_to, training_range)
        elif images:
            volume = _load_images(images, warnings)
        elif len({type(e) for e in rejected}) == 1:
            first = rejected[0]
            others = f" (and {len(rejected) - 1} other file(s) with the same problem)" if len(rejected) > 1 else ""
            raise type(first)(first.path, first.problem + others)
        else:
            raise EmptyStudyError(source_name(source), f"none of the {len(files)} files is DICOM or an image slice "
                                                 f"(first: {rejected[0]})")
        volume.n_files = len(files)
        return volume


def _load_dicom(headers, source, warnings: list[str], resize_to: int | None, training_range: TrainingRange) -> Volume:
    choice = select_series(split_series(headers), training_range)
    skipped = choice.skipped
    if choice.series is None or choice.ordered is None:
        raise _no_series(headers, source, skipped, choice.errors)
    chosen, ordered = choice.series, choice.ordered
    _check_sizes(chosen.items)
    first_ds = ordered.items[0][1]
    _check_volume(len(ordered.items) * int(first_ds.get("Rows", 0)) * int(first_ds.get("Columns", 0)),
                  source_name(source))
    first = ordered.items[0][1]
    syntax = first.file_meta.get("TransferSyntaxUID")
    hu, keep, failures = decode_slices(ordered.items, (int(first.get("Rows", 0)), int(first.get("Columns", 0))),
                                       compressed=bool(getattr(syntax, "is_compressed", True)), size=resize_to)
    names = [ordered.items[i][0].name for i in keep]
    if len(keep) < 2:
        raise failures[0] if failures else TooFewSlicesError(ordered.items[0][0], "fewer than two decodable slices")
    flags = _dropped_flags(ordered.dropped) + ordered.flags
    if not first.get("Modality"):
        flags.append(Flag("no_modality", "the images carry no Modality: read as CT (their SOP class is CT Image Storage or not recorded)"))
    part = body_part(first)
    if part and part not in CHEST_BODY_PARTS:
        flags.append(Flag("body_part", f"BodyPartExamined {first.BodyPartExamined} is not a chest value: read as chest CT",
                          {"body_part": str(first.BodyPartExamined)}))
    lossy = lossy_flag([(p.name, ds) for p, ds in ordered.items])
    flags += [lossy] if lossy else []
    warnings += [f.message for f in flags]
    warnings += _summarise("slice(s) of the chosen series skipped", failures)
    if any(not has_rescale(ds) for _, ds in ordered.items):
        warnings.append("RescaleSlope/RescaleIntercept missing on some slices: stored values taken as HU")
    spacing = first.get("PixelSpacing")
    return Volume(
        hu=None if resize_to else hu, resized=hu if resize_to else None, files=names,
        position_mm=None if ordered.position_mm is None else ordered.position_mm[keep],
        series_uid=chosen.uid, hu_exact=True,
        pixel_spacing_mm=float(spacing[0]) if spacing else None,
        slice_thickness_mm=float(first.SliceThickness) if first.get("SliceThickness") else None,
        skipped_series=skipped, warnings=warnings, flags=flags, dropped_files=ordered.dropped, series_why=choice.why,
        identity=study_identity(first), instance_numbers=[instance_number(ordered.items[i][1]) for i in keep],
    )


def _no_series(headers, source, skipped: list[SkippedSeries], errors: list[StudyError]) -> StudyError:
    """The error for a study without a series to analyse: the most specific reason first."""
    if errors:
        return errors[0]
    outside = [s for s in skipped if s.code == "outside_intended_use"]
    single = [s for s in skipped if s.code == "single_slice"]
    for found, error, problem in ((outside, OutsideIntendedUseError, None),
                                  (single, TooFewSlicesError, "the study's only CT series has a single slice; a CT volume is needed")):
        if found:
            path = next(p for p, ds in headers if str(ds.get("SeriesInstanceUID", "(no SeriesInstanceUID)")) == found[0].uid)
            return error(path, problem or found[0].reason)
    return NoUsableSeriesError(source_name(source), "no axial CT series: " + "; ".join(s.reason for s in skipped))


def _dropped_flags(dropped: list[DroppedFile]) -> list[Flag]:
    """One flag per kind of image screened out of the series (duplicates are flagged where they are found)."""
    flags = []
    for code in ("scout_dropped", "odd_image_dropped", "no_position_dropped"):
        files = [d for d in dropped if d.code == code]
        if files:
            shown = "; ".join(f"{d.file}: {d.reason}" for d in files[:5]) + (" ..." if len(files) > 5 else "")
            flags.append(Flag(code, f"{len(files)} image(s) of the series dropped, not analysed ({shown})",
                              {"files": [d.file for d in files]}))
    return flags


def _load_images(paths: list[Path], warnings: list[str]) -> Volume:
    read, good, failures, pixels = [], [], [], 0
    for p in paths:
        try:
            read.append(read_image_hu(p))
        except (CorruptFileError, FileTooLargeError) as exc:
            failures.append(exc)
            continue
        good.append(p)
        pixels += read[-1][0].size
        _check_volume(pixels, p.parent.name or str(p.parent))
    if len(read) < 2:
        if failures:
            raise failures[0]
        raise TooFewSlicesError(paths[0], "a single image slice; a CT volume is needed")
    warnings += _summarise("image slice(s) skipped", failures)
    paths = good
    _check_shapes([(p, hu.shape) for p, (hu, _) in zip(paths, read)])
    exact = all(e for _, e in read)
    order = Flag("no_position", "image slices: no DICOM positions, ordered by file name (first = most superior "
                 "assumed); " + ("16-bit values taken as HU + 1024" if exact else "8-bit values mapped back through "
                                 "the lung window"), {"order": "file name"})
    return Volume(hu=_to_int16(np.stack([hu for hu, _ in read])), files=[p.name for p in paths], position_mm=None,
                  series_uid=None, hu_exact=exact, warnings=[*warnings, order.message], flags=[order])


MAX_VOLUME_PIXELS = 2000 * 512 * 512
"""The decoded slices of one study together (1 GiB as int16); a larger study is refused before or
while decoding, so that thousands of tiny compressed slices cannot exhaust memory."""


def _check_volume(pixels: int, where: str) -> None:
    if pixels > MAX_VOLUME_PIXELS:
        raise FileTooLargeError(where, f"the study has more than {MAX_VOLUME_PIXELS} pixels "
                                       "(2000 slices of 512 x 512); not read")


def _check_sizes(items) -> None:
    _check_shapes([(p, (int(ds.get("Rows", 0)), int(ds.get("Columns", 0)))) for p, ds in items])


def _check_shapes(shapes: list[tuple[Path, tuple]]) -> None:
    counts = Counter(s for _, s in shapes)
    if len(counts) > 1:
        common = counts.most_common(1)[0][0]
        odd_path, odd = next((p, s) for p, s in shapes if s != common)
        raise MixedSizesError(odd_path, f"slice is {odd[0]}x{odd[1]} but most slices of the series are "
                                        f"{common[0]}x{common[1]}")


def _summarise(what: str, errors: Sequence[StudyError], shown: int = 5) -> list[str]:
    if not errors:
        return []
    details = "; ".join(f"{Path(e.path).name}: {e.problem}" for e in errors[:shown])
    more = f" (and {len(errors) - shown} more)" if len(errors) > shown else ""
    return [f"{len(errors)} {what}: {details}{more}"]


def _to_int16(hu: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(hu), -32768, 32767).astype(np.int16)


def source_name(source: str | Path | Sequence[str | Path]) -> str:
    """How errors name a study: its folder or zip, or the folder its files share."""
    if isinstance(source, (str, Path)):
        return str(source)
    folders = {str(Path(p).parent) for p in source}
    return folders.pop() if len(folders) == 1 else f"{len(source)} files ({Path(source[0]).name}, ...)"
