"""The one place where the steps are wired: study on disk -> patient verdict.

The CLI, the server and the watcher all call :func:`run_study`.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge.card import KIND_MODALITY, TrainingRange
from edge.errors import NoLungFoundError, OutsideIntendedUseError
from edge.infer import Classifier, PlaceholderClassifier
from edge.ingest import Limits, Volume, load_study, source_name
from edge.ingest.flags import Flag
from edge.ingest.radiograph import Radiograph, load_radiograph
from edge.kinds import KINDS
from edge.options import PipelineOptions
from edge.preprocess.group import group_plan
from edge.preprocess.segment import LungSegmenter, ThresholdSegmenter
from edge.preprocess.select import Selection, select_slices
from edge.preprocess.window import DISPLAY_WINDOWS, clahe, crop_slices, lung_box, lung_window, resize_slices
from edge.stages import PreparedStudy, ReadStudy, Source, StudyResult, timed

__all__ = ["PREPARE", "PreparedStudy", "ReadStudy", "StudyResult", "prepare_radiograph", "prepare_study", "read_study",
           "run_study"]

def read_study(source: Source, modality: str = "ct", options: PipelineOptions = PipelineOptions(),
               limits: Limits = Limits(), release_full_resolution: bool = False,
               training_range: TrainingRange = TrainingRange()) -> ReadStudy:
    """Read (decode) a study of ``modality``. With ``release_full_resolution`` CT slices are resized
    to the model input as they are decoded (unless the selection rule needs full resolution), so a
    study read ahead holds only the small volume. ``training_range`` (the model card's) decides
    between candidate CT series."""
    t: dict[str, float] = {}
    with timed(t, "read"):
        if modality == "xray":
            data: Volume | Radiograph = load_radiograph(source, limits)
        else:
            data = load_study(source, limits, resize_to=decode_size(options, release_full_resolution),
                              training_range=training_range)
    return ReadStudy(source, data, t["read"], modality, options, limits, release_full_resolution, training_range)


def decode_size(options: PipelineOptions, release_full_resolution: bool = True) -> int | None:
    """The size CT slices are resized to as they are decoded (None: kept at full resolution, as the
    ``rahimzadeh`` selection rule needs)."""
    return options.input_size if release_full_resolution and options.selection != "rahimzadeh" else None


def _read(source: Source | ReadStudy, modality: str, options: PipelineOptions, limits: Limits,
          release_full_resolution: bool, training_range: TrainingRange) -> ReadStudy:
    """``source`` read now, or as it was read ahead (checked against the settings it is prepared with)."""
    if not isinstance(source, ReadStudy):
        return read_study(source, modality, options, limits, release_full_resolution, training_range)
    if (source.modality, source.options, source.limits, source.release_full_resolution, source.training_range) != \
            (modality, options, limits, release_full_resolution, training_range):
        raise ValueError(f"{source_name(source.source)}: read ahead with other settings than it is prepared with")
    return source


def prepare_study(source: Source | ReadStudy, options: PipelineOptions = PipelineOptions(),
                  segmenter: LungSegmenter | None = None, limits: Limits = Limits(),
                  release_full_resolution: bool = False, training_range: TrainingRange = TrainingRange()) -> PreparedStudy:
    """Read (unless ``source`` was read ahead by :func:`read_study`) and preprocess one study: HU
    volume, lung mask, model-input slices, selection, group plans. A study where too few slices
    hold lung (:func:`check_lung_fraction`) is refused as outside the intended use.
    With ``release_full_resolution`` DICOM slices are resized as they are decoded and the
    full-resolution HU volume is never kept (``volume.hu`` is None) unless the selection rule needs
    it: peak memory stays low (the "read" time then includes resizing)."""
    segmenter = segmenter or ThresholdSegmenter()
    read = _read(source, "ct", options, limits, release_full_resolution, training_range)
    volume = read.data
    t: dict[str, float] = {"read": read.read_ms}
    with timed(t, "resize"):
        hu256 = volume.resized if volume.resized is not None else resize_slices(volume.hu, options.input_size)  # type: ignore[arg-type, union-attr]
    volume.resized = None  # type: ignore[union-attr]
    full_hu = volume.hu if options.selection == "rahimzadeh" else None  # type: ignore[union-attr]  # the only rule on full resolution
    if release_full_resolution:
        volume.hu = None  # type: ignore[union-attr]
    with timed(t, "segment"):
        mask = segmenter.segment(hu256)
    check_lung_fraction(hu256, mask, source_name(read.source))
    with timed(t, "select"):
        selection = select_slices(options.selection, full_hu, mask)
    del full_hu
    if not selection.keep.any():
        raise NoLungFoundError(source_name(read.source), f"no slice with lung found by the {selection.method!r} selection")
    with timed(t, "window_clahe"):
        windowed = lung_window(hu256, options.window)
        presets = {name: lung_window(hu256, w) for name, w in DISPLAY_WINDOWS.items()} if volume.hu_exact else {}  # type: ignore[union-attr]
        if options.crop == "lungs":
            box = lung_box(mask[selection.kept_indices])
            windowed = crop_slices(windowed, box, options.input_size)
            presets = {name: crop_slices(p, box, options.input_size) for name, p in presets.items()}
            mask = crop_slices(mask.view(np.uint8), box, options.input_size, cv2.INTER_NEAREST).view(bool)
        images = clahe(windowed, options.clahe_clip)
        if options.mask_lungs:
            np.multiply(images, mask, out=images)          # in place: no copy of the volume
    plans = group_plan(int(selection.keep.sum()), options.group_size)
    return PreparedStudy(volume, mask, windowed, images, selection, plans, t, presets)  # type: ignore[arg-type]


def prepare_radiograph(source: Source | ReadStudy, options: PipelineOptions = PipelineOptions(),
                       segmenter: LungSegmenter | None = None, limits: Limits = Limits(),
                       release_full_resolution: bool = False, training_range: TrainingRange = TrainingRange()) -> PreparedStudy:
    """Read one chest radiograph (unless ``source`` was read ahead) and resize it to the model input:
    a study of one unit (slice 0). No segmentation or selection (``segmenter`` is not used); the
    display image is the input itself."""
    read = _read(source, "xray", options, limits, release_full_resolution, training_range)
    picture = read.data
    t: dict[str, float] = {"read": read.read_ms}
    with timed(t, "resize"):
        size = options.input_size
        image = np.rint(cv2.resize(picture.pixels, (size, size), interpolation=cv2.INTER_AREA) * 255).astype(np.uint8)  # type: ignore[union-attr]
    volume = Volume(hu=None, files=[picture.file], position_mm=None, series_uid=picture.series_uid, hu_exact=False,  # type: ignore[union-attr]
                    warnings=picture.warnings, n_files=1, modality="xray", view=picture.view, flags=picture.flags,
                    identity=picture.identity)
    images = image[None]
    return PreparedStudy(volume, np.ones(images.shape, bool), images, images,
                         Selection("whole radiograph", np.ones(1, bool), ("",)), [], t)


LUNG_SLICE_RATIO = 0.05
"""A slice holds lung when its lung mask covers at least this fraction of its body (air inside the
body plus tissue above -500 HU): 0.3-0.4 in the middle of the real sample studies, 0 in the neck and abdomen."""
MIN_LUNG_SLICE_FRACTION = 0.25
"""A CT study where fewer slices than this fraction hold lung is refused (head, neck, abdomen, a
limb); the real sample chest CTs hold lung in 79-92 % of their slices (docs/series-rules.md)."""


def check_lung_fraction(hu: np.ndarray, mask: np.ndarray, where: str) -> None:
    """Refuse (OutsideIntendedUseError) a volume where fewer than MIN_LUNG_SLICE_FRACTION of the
    slices hold lung (LUNG_SLICE_RATIO of the body's area)."""
    lung = mask.reshape(len(mask), -1).sum(axis=1)
    body = ((hu > -500) | mask).reshape(len(mask), -1).sum(axis=1)
    fraction = float(np.mean(lung >= LUNG_SLICE_RATIO * np.maximum(body, 1)))
    if fraction < MIN_LUNG_SLICE_FRACTION:
        raise OutsideIntendedUseError(where, f"only {fraction:.0%} of its {len(mask)} slices show lung (at least "
                                             f"{MIN_LUNG_SLICE_FRACTION:.0%} needed): not a chest CT, outside the "
                                             "model's intended use; no verdict")


PREPARE = {"ct": prepare_study, "xray": prepare_radiograph}
"""How a study of each modality (``edge.card.KIND_MODALITY``) becomes model input."""


def run_study(source: Source | ReadStudy, classifier: Classifier | None = None,
              options: PipelineOptions = PipelineOptions(), segmenter: LungSegmenter | None = None,
              limits: Limits = Limits(), training_range: TrainingRange = TrainingRange(),
              release_full_resolution: bool = False) -> StudyResult:
    """Read (unless ``source`` was read ahead by :func:`read_study`), preprocess, score (``edge.kinds``:
    groups or slices, by the classifier's kind) and decide one study; raises StudyError subclasses on bad input.
    A study whose geometry lies outside ``training_range`` gets a warning."""
    classifier = classifier or PlaceholderClassifier()
    prepare = PREPARE[KIND_MODALITY[classifier.kind]]
    prepared = prepare(source, options, segmenter, limits, release_full_resolution, training_range)
    v = prepared.volume
    for message in training_range.warnings(v.slice_thickness_mm, v.pixel_spacing_mm):
        v.flag(Flag("outside_training_range", message))
    scores = KINDS[classifier.kind].score(prepared, classifier, options, prepared.timings_ms)
    t = prepared.timings_ms
    t["total"] = sum(t.values())
    return StudyResult(prepared, scores.groups, scores.slices, scores.verdict, classifier, options)
