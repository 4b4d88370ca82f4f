"""Read one chest radiograph (DICOM CR/DX or an 8/16-bit PNG/JPEG) as a study.

The picture comes out as grey values in [0, 1], dense tissue bright (MONOCHROME2 sense):
the Modality LUT (or rescale) and the VOI LUT (or window) are applied when the file has them,
MONOCHROME1 is inverted (as is a Presentation LUT Shape INVERSE; the two together cancel out),
values beyond BitsStored are ignored. A DICOM without a VOI and a 16-bit image are stretched
between their 0.5 and 99.5 percentiles; an 8-bit image is taken as displayed.
PixelSpacing is not used (it is often missing or 0 on CR). The view (ViewPosition) must be PA or
AP: a lateral view is refused, an unknown one accepted with a warning.

A DICOM study of several images (PA and lateral sent together, a retake) is read as its frontal
radiograph: PA before AP, the last taken (highest InstanceNumber) of that view; every other file is
named in a warning as not analysed. Without a frontal view the study is refused, unless it holds
exactly one image of unknown view. As in a CT study, a file that is not a DICOM image (a DICOMDIR,
a notes.txt) is skipped with a warning, and image files are ignored when there are DICOM files.
A radiograph (DICOM or image file) of more than 4096 x 4096 pixels is refused from its header.
Outside the intended use (OutsideIntendedUseError): a BodyPartExamined of a region without lungs
(a limb, the head, the abdomen) and an image with a side under MIN_RADIOGRAPH_SIDE pixels. Lossy
input and an unknown view are typed flags (edge.ingest.flags).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
import zipfile
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from edge.errors import CorruptFileError, FileTooLargeError, OutsideIntendedUseError, StudyError
from edge.ingest.dicom_files import check_codestream_size, read_header
from edge.ingest.flags import Flag, lossy_flag
from edge.ingest.series import OTHER_BODY_PARTS, body_part
from edge.ingest.identity import study_identity
from edge.ingest.image_files import is_image_file, read_grey
from edge.ingest.sources import Limits, study_files

XRAY_MODALITIES = ("CR", "DX")
FRONTAL_VIEWS = ("PA", "AP")
LATERAL_VIEWS = ("LL", "RL", "LATERAL", "LLD", "RLD", "LAT")
MAX_RADIOGRAPH_PIXELS = 4096 * 4096
"""Detector images are up to about 3000 x 3000; a file declaring more is not decoded."""
MIN_RADIOGRAPH_SIDE = 32
"""A radiograph with a side of fewer pixels is refused: the model's input is 224-256 pixels wide, and
a chest radiograph this small shows no lung detail (public datasets go down to 224 x 224)."""


class LateralViewError(StudyError):
    """A lateral radiograph: the model reads frontal (PA/AP) views only."""


class NotOneRadiographError(StudyError):
    """An X-ray study whose one frontal radiograph cannot be chosen."""


@dataclass
class Radiograph:
    pixels: np.ndarray                 # (H, W) float32 in [0, 1], dense tissue bright
    file: str                          # base name of the file
    view: str | None                   # PA, AP, or None when the file does not say
    series_uid: str | None = None
    warnings: list[str] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)     # typed warnings (each also in ``warnings``)
    identity: dict[str, str] = field(default_factory=lambda: study_identity(None))  # edge.ingest.identity


def study_modality(source: str | Path | Sequence[str | Path], limits: Limits = Limits()) -> str:
    """``xray`` when the study's first DICOM file with a Modality (headers only; a DICOMDIR, a file
    without Modality and a non-DICOM file are skipped) says CR or DX, or when it has no such file
    and exactly one image file; else ``ct`` (a zip is taken as a CT study without unpacking it: a
    radiograph is sent as its file)."""
    if isinstance(source, (str, Path)) and Path(source).is_file() and zipfile.is_zipfile(source):
        return "ct"
    with study_files(source, limits) as files:
        for path in files:
            if is_image_file(path):
                continue
            try:
                modality = str(read_header(path).get("Modality", "") or "")
            except StudyError:
                continue                 # the reader names the file in a warning, or in its error
            if modality:
                return "xray" if modality in XRAY_MODALITIES else "ct"
        return "xray" if sum(map(is_image_file, files)) == 1 else "ct"


def load_radiograph(source: str | Path | Sequence[str | Path], limits: Limits = Limits()) -> Radiograph:
    """Read the frontal radiograph of ``source`` (see the module docstring for a study of several
    images). As the CT reader does, a file that is not a DICOM image (a DICOMDIR, a notes.txt) is
    skipped and named in a warning, and image files are ignored when the study has DICOM files.
    StudyError subclasses name the file and the problem."""
    with study_files(source, limits) as files:
        if len(files) == 1:
            path = files[0]
            return _read_image(path) if is_image_file(path) else _read_dicom(path)
        where = source if isinstance(source, (str, Path)) else files[0]
        images = [f for f in files if is_image_file(f)]
        headers, notes, rejected = {}, [], []
        for path in files:
            if not is_image_file(path):
                try:
                    headers[path] = read_header(path)
                except StudyError as exc:
                    rejected.append(exc)
                    notes.append(f"{path.name}: {exc.problem}; skipped")
        if headers:
            chosen, more = _choose_frontal(where, headers)
            radiograph = _read_dicom(chosen, headers[chosen])
            notes += more + [f"{p.name}: image file ignored, the study has DICOM files" for p in images]
        elif len(images) == 1:
            radiograph = _read_image(images[0])
        elif images:
            raise NotOneRadiographError(where, f"an X-ray study of image files is one file, got {len(images)}")
        else:
            raise type(rejected[0])(rejected[0].path, rejected[0].problem
                                    + f" (and {len(rejected) - 1} other file(s) of the study not usable)")
        radiograph.warnings.extend(notes)
        return radiograph


def _choose_frontal(where: str | Path, headers: dict[Path, Dataset]) -> tuple[Path, list[str]]:
    """The file to analyse among a study's DICOM files (with their headers), and a note on each
    file left out."""
    views: dict[Path, str] = {}
    notes: list[str] = []
    order: dict[Path, int] = {}
    for path, header in headers.items():
        if str(header.get("Modality", "")) not in XRAY_MODALITIES:
            notes.append(f"{path.name}: Modality {header.get('Modality', 'not recorded')}, not a radiograph; not analysed")
            continue
        views[path] = str(header.get("ViewPosition", "") or "").strip().upper()
        order[path] = int(header.get("InstanceNumber", 0) or 0)
    frontal = [p for v in FRONTAL_VIEWS for p in sorted(views, key=lambda q: (-order[q], q.name)) if views[p] == v]
    unknown = [p for p, v in views.items() if v not in FRONTAL_VIEWS + LATERAL_VIEWS]
    if frontal:
        chosen = frontal[0]
    elif len(unknown) == 1:
        chosen = unknown[0]
    elif unknown:
        raise NotOneRadiographError(where, f"{len(unknown)} radiographs without a PA/AP ViewPosition "
                                           f"({', '.join(sorted(p.name for p in unknown))}): cannot choose the frontal one")
    elif views:
        first = sorted(views, key=lambda q: q.name)[0]
        raise LateralViewError(first, f"only lateral views ({', '.join(sorted(p.name for p in views))}); "
                                      f"the model reads frontal ({'/'.join(FRONTAL_VIEWS)}) chest radiographs only")
    else:
        raise NotOneRadiographError(where, f"no CR/DX radiograph among its {len(headers)} DICOM files")
    for path, view in sorted(views.items(), key=lambda item: item[0].name):
        if path != chosen:
            kind = "lateral view" if view in LATERAL_VIEWS else f"view {view or 'not recorded'}"
            notes.append(f"{path.name}: {kind}, not analysed (one frontal radiograph is read: {chosen.name})")
    return chosen, notes


def _read_dicom(path: Path, header: Dataset | None = None) -> Radiograph:
    """The radiograph of one DICOM file (``header``: its header, when already read)."""
    header = header if header is not None else read_header(path)
    rows, columns = int(header.get("Rows", 0)), int(header.get("Columns", 0))
    if rows * columns > MAX_RADIOGRAPH_PIXELS:
        raise FileTooLargeError(path, f"declares {rows} x {columns} pixels, above the limit of one 4096 x 4096 "
                                      "radiograph; not decoded")
    _check_size(path, rows, columns)
    if body_part(header) in OTHER_BODY_PARTS:
        raise OutsideIntendedUseError(path, f"BodyPartExamined {header.BodyPartExamined}: the model reads chest "
                                            "radiographs (outside the intended use); no verdict")
    given = str(header.get("ViewPosition", "") or "").strip().upper()
    view = _check_view(path, given)
    try:
        ds = pydicom.dcmread(path)
        check_codestream_size(ds, path)
        raw = ds.pixel_array
    except StudyError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure
        raise CorruptFileError(path, f"pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
    if raw.ndim != 2:
        raise CorruptFileError(path, f"a radiograph is one grey frame, got pixel data of shape {raw.shape}")
    bits = int(ds.get("BitsStored", raw.dtype.itemsize * 8))
    if int(ds.get("PixelRepresentation", 0)) == 0:
        raw = np.minimum(raw, (1 << bits) - 1)
    values = apply_modality_lut(raw, ds).astype(np.float32)
    has_voi = "VOILUTSequence" in ds or "WindowCenter" in ds
    if has_voi:
        values = apply_voi_lut(values, ds, index=0).astype(np.float32)
    pixels = _stretch(values, 0.0 if has_voi else 0.5)
    monochrome1 = str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    inverse_lut = str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    if monochrome1 != inverse_lut:       # either one inverts the display; both cancel out
        pixels = 1.0 - pixels
    flags = [] if view else [Flag("view_unknown", f"view position {given or 'not recorded'}: the model reads PA/AP "
                                                  "chest radiographs")]
    lossy = lossy_flag([(path.name, ds)])
    flags += [lossy] if lossy else []
    return Radiograph(pixels, path.name, view, str(ds.get("SeriesInstanceUID", "")) or None,
                      [f.message for f in flags], flags, study_identity(header))


def _read_image(path: Path) -> Radiograph:
    img = read_grey(path, MAX_RADIOGRAPH_PIXELS, "radiograph")
    _check_size(path, *img.shape[:2])
    if img.dtype == np.uint8:
        pixels = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        pixels = _stretch(img.astype(np.float32), 0.5)
    else:
        raise CorruptFileError(path, f"unsupported image sample type {img.dtype}")
    flag = Flag("view_unknown", "image file: no view position recorded; the model reads PA/AP chest radiographs")
    return Radiograph(pixels, path.name, None, None, [flag.message], [flag])


def _check_size(path: Path, rows: int, columns: int) -> None:
    if min(rows, columns) < MIN_RADIOGRAPH_SIDE:
        raise OutsideIntendedUseError(path, f"{columns} x {rows} pixels, smaller than {MIN_RADIOGRAPH_SIDE} pixels a "
                                            "side: too small to be read as a chest radiograph; no verdict")


def _check_view(path: Path, view: str) -> str | None:
    if view in LATERAL_VIEWS:
        raise LateralViewError(path, f"a lateral view (ViewPosition {view}); the model reads frontal "
                                     f"({'/'.join(FRONTAL_VIEWS)}) chest radiographs only")
    return view if view in FRONTAL_VIEWS else None


def _stretch(values: np.ndarray, percent: float) -> np.ndarray:
    """``values`` mapped linearly to [0, 1] between their ``percent`` and ``100 - percent`` percentiles."""
    low, high = np.percentile(values, [percent, 100.0 - percent])
    if high <= low:
        return np.zeros(values.shape, np.float32)
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)
