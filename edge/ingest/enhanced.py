"""Enhanced CT and Legacy Converted Enhanced CT: one multi-frame object read as the slices of a series.

Each frame becomes a :class:`FrameHeader`, a header with what a single-frame CT slice states, taken
from the frame's functional groups (its per-frame item first, then the shared item):
ImagePositionPatient (PlanePositionSequence), ImageOrientationPatient (PlaneOrientationSequence),
PixelSpacing and SliceThickness (PixelMeasuresSequence), RescaleSlope, RescaleIntercept and
RescaleType (PixelValueTransformationSequence), ImageType (the frame's FrameType,
CTImageFrameTypeSequence), GantryDetectorTilt and ConvolutionKernel (CT Acquisition Details, CT
Reconstruction), and, in a legacy converted object, the attributes of the single-frame images it was
converted from (the Unassigned Shared/Per-Frame Converted Attributes). The object's other top-level
attributes (patient, study, series, Modality, Rows, Columns, ...) are every frame's. Series selection
and slice ordering then treat the frames as single-frame slices, so frames are ordered by their
positions, never by frame number, and :func:`decode_slices` decodes them frame by frame.

An object whose frames do not all state a position and an orientation is refused (CorruptFileError
naming the file), as is one declaring more than ``MAX_FRAMES`` frames, frames of more than one slice
of ``MAX_SLICE_PIXELS`` or more pixels in all than ``MAX_FRAMES`` slices of 512 x 512
(FileTooLargeError), before any pixel is decoded.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import iter_pixels
from pydicom.tag import Tag
from pydicom.uid import EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage

from edge.errors import CorruptFileError, FileTooLargeError, NoPixelDataError, StudyError
from edge.ingest.dicom_files import (JPEG_2000, MAX_SLICE_PIXELS, check_tags, decoding_error, j2k_size,
                                     to_hu)
from edge.ingest.parallel import ERRORS, decode_path, decode_series
from edge.limits import MAX_FRAMES
from edge.preprocess.window import resize_slices

ENHANCED_CT_CLASSES = (EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage)
"""The multi-frame CT SOP classes read frame by frame."""

FUNCTIONAL_GROUPS: dict[str, tuple[str, ...] | None] = {
    "UnassignedSharedConvertedAttributesSequence": None,      # None: every attribute of the item
    "UnassignedPerFrameConvertedAttributesSequence": None,
    "PlanePositionSequence": ("ImagePositionPatient",),
    "PlaneOrientationSequence": ("ImageOrientationPatient",),
    "PixelMeasuresSequence": ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices"),
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
    "CTImageFrameTypeSequence": ("FrameType",),
    "CTAcquisitionDetailsSequence": ("GantryDetectorTilt",),
    "CTReconstructionSequence": ("ConvolutionKernel",),
}
"""The functional groups read into each frame's header and the attributes taken from each, in the
order applied (a later one wins: the standard groups over the converted attributes)."""
NOT_PER_FRAME = {Tag(k) for k in ("PixelData", "NumberOfFrames", "PerFrameFunctionalGroupsSequence",
                                  "SharedFunctionalGroupsSequence")}


class FrameHeader(Dataset):
    """The header of one frame of a multi-frame CT object, as a single-frame CT slice would state it;
    ``frame_index`` is the frame's 0-based index in the object's pixel data."""

    frame_index: int


def frame_headers(path: Path, ds: Dataset) -> list[tuple[Path, Dataset]]:
    """One (path, header) per frame of an Enhanced or Legacy Converted Enhanced CT object, in frame
    order; any other data set as it is. Raises CorruptFileError or FileTooLargeError naming the file."""
    if str(ds.get("SOPClassUID", "")) not in ENHANCED_CT_CLASSES:
        return [(path, ds)]
    n = check_frame_bounds(ds, path)
    try:
        per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
        shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    except Exception as exc:  # noqa: BLE001 - pydicom parses sequences lazily: broken items raise here
        raise CorruptFileError(path, f"the functional groups cannot be read ({type(exc).__name__})") from exc
    if len(per_frame) != n:
        raise CorruptFileError(path, f"the PerFrameFunctionalGroupsSequence has {len(per_frame)} item(s) for "
                                     f"{n} frames")
    common = [ds[tag] for tag in ds.keys() if tag not in NOT_PER_FRAME]   # keys(): PixelData stays on disk
    return [(path, _frame(path, common, ds, shared, item, i, n)) for i, item in enumerate(per_frame)]


def check_frame_bounds(ds: Dataset, path: Path) -> int:
    """The number of frames of a multi-frame CT object, after checking its pixel matrix against the
    bounds (``edge.limits.MAX_FRAMES``) from its header alone."""
    try:
        frames = int(ds.get("NumberOfFrames", 0) or 0)
        rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
        samples, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.get("BitsAllocated", 16) or 16)
    except Exception as exc:  # noqa: BLE001 - pydicom decodes lazily: bad VR, odd length, wrong type
        raise CorruptFileError(path, f"the pixel matrix tags cannot be read ({type(exc).__name__})") from exc
    if "PixelData" not in ds:
        raise NoPixelDataError(path, "has no pixel data (7FE0,0010)")
    if frames < 1:
        raise CorruptFileError(path, "a multi-frame CT object without NumberOfFrames")
    if frames > MAX_FRAMES:
        raise FileTooLargeError(path, f"declares {frames} frames, above the limit of {MAX_FRAMES}; not read")
    if rows * columns * samples > MAX_SLICE_PIXELS or bits > 32:
        raise FileTooLargeError(path, f"declares frames of {rows} x {columns} pixels x {samples} sample(s) of {bits} "
                                      "bits, above the limit of one 2048 x 2048 slice; not decoded")
    if frames * rows * columns > MAX_FRAMES * 512 * 512:
        raise FileTooLargeError(path, f"declares {frames} frames of {rows} x {columns} pixels, more than "
                                      f"{MAX_FRAMES} slices of 512 x 512; not decoded")
    if samples != 1:
        raise CorruptFileError(path, f"frames of {samples} samples per pixel; a CT frame is greyscale")
    return frames


def _frame(path: Path, common: list, ds: Dataset, shared: Dataset, item: Dataset, index: int, n: int) -> FrameHeader:
    frame = FrameHeader()
    for element in common:
        frame.add(element)
    frame.file_meta = ds.file_meta
    frame.frame_index = index
    where = f"frame {index + 1} of {n}"
    try:
        for group, keywords in FUNCTIONAL_GROUPS.items():
            for source in (shared, item):
                for values in source.get(group) or []:
                    for element in values:
                        if keywords is None or element.keyword in keywords:
                            frame[element.tag] = element
        if "FrameType" in frame:
            frame.ImageType = frame.FrameType
            del frame.FrameType
        check_tags(frame, path)
    except CorruptFileError as exc:
        raise CorruptFileError(path, f"{where}: {exc.problem}") from exc
    except Exception as exc:  # noqa: BLE001 - a functional group item that cannot be parsed
        raise CorruptFileError(path, f"{where}: its functional groups cannot be read ({type(exc).__name__})") from exc
    if "ImagePositionPatient" not in frame:
        raise CorruptFileError(path, f"{where} states no position (PlanePositionSequence > ImagePositionPatient): "
                                     "the frames cannot be ordered")
    if "ImageOrientationPatient" not in frame:
        raise CorruptFileError(path, f"{where} states no orientation (PlaneOrientationSequence > "
                                     "ImageOrientationPatient)")
    return frame


def decode_slices(items: Sequence[tuple[Path, Dataset]], shape: tuple[int, int], compressed: bool = True,
                  size: int | None = None) -> tuple[np.ndarray, list[int], list[StudyError]]:
    """``edge.ingest.parallel.decode_series`` for the ordered slices of a series, any of which may be
    frames of multi-frame objects (:class:`FrameHeader`): those are decoded here, each object read once."""
    if not any(isinstance(ds, FrameHeader) for _, ds in items):
        return decode_series([p for p, _ in items], shape, compressed, size=size)
    hu = np.empty((len(items), *shape) if size is None else (len(items), size, size),
                  np.int16 if size is None else np.float32)
    done = np.zeros(len(items), bool)
    failures: list[StudyError] = []
    objects: dict[Path, list[tuple[int, FrameHeader]]] = defaultdict(list)
    for slot, (path, ds) in enumerate(items):
        if isinstance(ds, FrameHeader):
            objects[path].append((slot, ds))
            continue
        result = decode_path(path, shape, size)
        if isinstance(result, tuple):
            failures.append(ERRORS[result[0]](path, result[1]))
        else:
            hu[slot], done[slot] = result, True
    for path, frames in objects.items():
        frames.sort(key=lambda f: f[1].frame_index)
        try:
            for (slot, _), pixels in zip(frames, _frames(path, [ds for _, ds in frames], shape)):
                hu[slot] = pixels if size is None else resize_slices(pixels[None], size)[0]
                done[slot] = True
        except StudyError as exc:
            failures.append(exc)
    kept = np.flatnonzero(done).tolist()
    return (hu if len(kept) == len(items) else hu[kept]), kept, failures


def _frames(path: Path, frames: list[FrameHeader], shape: tuple[int, int]) -> Iterator[np.ndarray]:
    """The HU pixels of ``frames`` (in that order, increasing frame index) of the object at ``path``."""
    try:
        ds = pydicom.dcmread(path, defer_size="64 KB")
    except Exception as exc:  # noqa: BLE001 - the file changed or broke since its header was read
        raise CorruptFileError(path, f"cannot be read again for decoding ({type(exc).__name__})") from exc
    check_frame_bounds(ds, path)
    check_codestreams(ds, path)
    pixels = iter_pixels(path, indices=[f.frame_index for f in frames])
    for frame in frames:
        try:
            array = next(pixels)
        except StopIteration:
            raise CorruptFileError(path, f"frame {frame.frame_index + 1} is missing from the pixel data") from None
        except Exception as exc:  # noqa: BLE001 - no decoder, truncated pixel data, wrong lengths, bad codestreams
            raise decoding_error(exc, ds, path) from exc
        if array.shape != shape:
            raise CorruptFileError(path, f"frame {frame.frame_index + 1} decoded to {array.shape}, expected {shape}")
        yield to_hu(array, frame)


def check_codestreams(ds: Dataset, path: Path) -> None:
    """Refuse JPEG 2000 frames whose codestream states another size than the header's Rows and
    Columns (the decoder allocates what the codestream states): every frame is checked, before any
    is decoded."""
    if ds.file_meta.get("TransferSyntaxUID") not in JPEG_2000:
        return
    header = (int(ds.Columns), int(ds.Rows), 1)
    try:
        stated = ((n, j2k_size(fragment)) for n, fragment in
                  enumerate(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)), start=1))
        wrong = next(((n, size) for n, size in stated if size != header), None)
    except Exception as exc:  # noqa: BLE001 - broken item tags: the encapsulation is damaged
        raise CorruptFileError(path, f"the encapsulated pixel data cannot be read ({type(exc).__name__})") from exc
    if wrong is not None:
        raise CorruptFileError(path, f"the JPEG 2000 codestream of frame {wrong[0]} states {wrong[1] or 'no size'}, "
                                     f"the header {header[0]} x {header[1]}; not decoded")
