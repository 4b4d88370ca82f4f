"""The result document of one study: what ``ctedge predict --json`` prints, the API serves and a
result folder's ``result.json`` holds (``edge.stages.StudyResult.to_dict`` builds it,
``edge.report.write_result`` completes and writes it). Its schema is the TypedDicts below, one per
part, which mypy checks wherever the document is built or read; ``docs/result.schema.json`` is
generated from them (``docs/make_result_schema.py``). Read a stored document back with
:func:`load_result`, the one place that reads older documents.

A key in the ``total=False`` part of a TypedDict may be absent: the document of ``ctedge predict
--json`` without ``--out`` has no heatmaps, and documents of older versions lack newer keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict, cast

RESULT_FILE = "result.json"
SCHEMA_VERSION = 1
"""The version of the document's schema; documents written before it was recorded are version 0."""
OLDER_MODALITY = "ct"
"""The modality of documents written before X-ray support, which have no ``modality`` key."""


class GroupDoc(TypedDict):
    """One 50-slice group of a CT study (a radiograph has none)."""
    index: int
    slice_range: list[int]          # first and last slice index of the group
    n_padding_slices: int
    interpolated: bool
    probabilities: dict[str, float]  # by class name
    label: str


class _SliceDoc(TypedDict):
    index: int
    file: str
    z: float | None                 # position along the slice normal (mm), None when unknown


class _NumberedSliceDoc(_SliceDoc, total=False):
    instance_number: int | None     # the slice's InstanceNumber, as PACS numbers it (absent from older documents)


class UsedSliceDoc(_NumberedSliceDoc, total=False):
    """A slice the selection kept; slice models add its probabilities and label."""
    probabilities: dict[str, float]
    label: str


class DroppedSliceDoc(_NumberedSliceDoc):
    """A slice the selection dropped, and why."""
    reason: str


class SkippedSeriesDoc(TypedDict):
    uid: str
    n_files: int
    code: str                       # edge.ingest.series.SKIP_CODES
    reason: str


class _SeriesDoc(TypedDict):
    chosen: str | None
    skipped: list[SkippedSeriesDoc]


class SeriesDoc(_SeriesDoc, total=False):
    """The series analysed, why it was chosen (edge.ingest.series.select_series), and those skipped."""
    why: str


class DroppedFileDoc(TypedDict):
    """A file of the chosen series not read into the volume (edge.ingest.flags.DroppedFile)."""
    file: str
    code: str                       # edge.ingest.flags.CODES
    reason: str


class _FlagDoc(TypedDict):
    code: str                       # edge.ingest.flags.CODES
    message: str


class FlagDoc(_FlagDoc, total=False):
    """A typed warning (edge.ingest.flags.Flag) and its details for programs."""
    files: list[str]
    transfer_syntaxes: list[str]
    order: str                      # the slice order used: SliceLocation, InstanceNumber, file name
    extent_mm: float
    degrees: float                  # gantry tilt
    positions: list[Any]
    median_spacing_mm: float
    gaps: list[dict[str, Any]]
    body_part: str


class InputDoc(TypedDict):
    n_files: int
    hu_exact: bool
    pixel_spacing_mm: float | None
    slice_thickness_mm: float | None
    view: str | None                # a radiograph's view position (PA, AP)


class _ModelDoc(TypedDict):
    name: str
    version: str
    note: str
    banner: str                     # the warning every output shows ('' for a clinical model)
    demonstration: bool             # any model not for clinical use
    placeholder: bool


class ModelDoc(_ModelDoc, total=False):
    """The model that analysed the study (``edge.infer.ModelInfo.to_dict``)."""
    status: str                     # edge.card.STATUSES
    validation: str
    variant: str
    chosen: str
    threads: int
    runtime: str                    # edge.runtime.RUNTIMES: what ran the classifier
    training_data: dict[str, Any] | None
    known_biases: list[str]
    training_summary: str
    card_sha256: str                # sha256 of the bundle's model.json ('' for the built-in placeholder)


class SoftwareDoc(TypedDict):
    name: str
    version: str


class HeatmapSourceDoc(TypedDict):
    slice_index: int
    file: str
    weight: float


class _HeatmapDoc(TypedDict):
    n: int
    group: int | None
    slice_index: int
    file: str
    sources: list[HeatmapSourceDoc]
    interpolated: bool
    share: float
    png: str                        # relative to the result folder


class HeatmapDoc(_HeatmapDoc, total=False):
    """One Grad-CAM overlay of the result folder."""
    url: str                        # served by the API only: where to GET the PNG
    instance_number: int | None
    z: float | None
    overlay: str                    # the heat layer alone (the viewer's overlay), relative to the result folder
    in_lungs: float | None          # share of the map's hot part inside the lung mask (None: no mask)
    outside_lungs: bool             # flagged: most of the map lies outside the lungs
    caption: str


class StudyIdentityDoc(TypedDict):
    """Who and what the study is (edge.ingest.identity.IDENTITY_TAGS); in the result folder only, never printed."""
    patient_name: str
    patient_id: str
    accession: str
    study_date: str
    study_time: str
    description: str
    series_description: str
    modality: str
    study_uid: str


class ScoreDoc(TypedDict):
    """What the ``probabilities`` are (edge.uncertainty.score_meaning)."""
    name: str
    explanation: str


class AgreementDoc(TypedDict):
    """How the groups or slices voted (edge.uncertainty.agreement)."""
    unit: str                       # group or slice
    n: int
    for_verdict: int
    votes: dict[str, int]
    level: str                      # unanimous, majority or split
    text: str
    rule: str


ExplanationDoc = TypedDict("ExplanationDoc", {"class": str, "method": str | None})


class _ResultDoc(TypedDict):
    schema_version: int
    modality: str                   # edge.card.MODALITIES
    label: str
    classes: list[str]
    probabilities: dict[str, float]
    decision_rule: str
    groups: list[GroupDoc]
    n_slices_read: int
    n_slices_used: int
    selection: str
    slices_used: list[UsedSliceDoc]
    slices_dropped: list[DroppedSliceDoc]
    series: SeriesDoc
    input: InputDoc
    warnings: list[str]
    timings_ms: dict[str, float]
    model: ModelDoc
    software: SoftwareDoc


class ResultDoc(_ResultDoc, total=False):
    """The result document; ``flags`` and ``files_dropped`` are absent from older documents; the keys
    after them are written with the result folder (``--out``)."""
    flags: list[FlagDoc]
    files_dropped: list[DroppedFileDoc]
    patient_rule: dict[str, Any] | None  # a slice model's patient rule (edge.kinds), None for other models
    score: ScoreDoc
    agreement: AgreementDoc | None
    concern: float                  # 1 - mean probability of the negative class: the worklist's order, not a probability
    study: StudyIdentityDoc
    slice_png_windows: dict[str, list[str]]
    windows: dict[str, list[float]]
    slice_png: list[str]
    heatmaps: list[HeatmapDoc]
    explanation: ExplanationDoc


def load_result(folder: Path) -> ResultDoc:
    """The result document of a result folder in the current schema; OSError when it cannot be
    read, ValueError when it is not a JSON object. The one place that reads older documents: one
    without ``schema_version`` is version 0, and one without ``modality`` (written before X-ray
    support) is CT."""
    path = Path(folder) / RESULT_FILE
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a JSON object")
    doc.setdefault("schema_version", 0)
    doc.setdefault("modality", OLDER_MODALITY)
    return cast(ResultDoc, doc)
