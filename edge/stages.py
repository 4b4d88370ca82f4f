"""The types a study passes through on its way to a verdict, shared by every stage: read
(:class:`ReadStudy`), prepared to model input (:class:`PreparedStudy`), scored (:class:`Scores` of
:class:`GroupResult` or :class:`SliceScore`) and decided (:class:`StudyResult`), and :func:`timed`,
which records each stage's time. ``edge.pipeline`` makes them, ``edge.kinds`` scores them,
``edge.explain`` and ``edge.report`` read them; this module imports none of those.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge import __version__
from edge.card import TrainingRange
from edge.infer import Classifier
from edge.ingest import Limits, Volume
from edge.ingest.radiograph import Radiograph
from edge.options import PipelineOptions
from edge.preprocess.group import assemble, position_sources
from edge.preprocess.select import Selection
from edge.result import SCHEMA_VERSION, ResultDoc, UsedSliceDoc
from edge.uncertainty import agreement, concern, score_meaning
from edge.vote import Verdict

Source = str | Path | Sequence[str | Path]
"""A study on disk: a folder, a zip, or its files."""


@contextlib.contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Record the wall time of the block in ``timings[stage]`` (ms)."""
    start = time.perf_counter()
    yield
    timings[stage] = (time.perf_counter() - start) * 1000.0


@dataclass
class GroupResult:
    index: int
    plan: np.ndarray          # fractional positions into the kept slices; NaN = black padding
    source: np.ndarray        # volume indices of the real slices that feed this group
    probabilities: np.ndarray
    classes: tuple[str, ...]

    @property
    def label(self) -> str:
        return self.classes[int(np.argmax(self.probabilities))]

    def slot_sources(self, slot: int, kept: np.ndarray) -> list[tuple[int, float]]:
        """The volume indices and weights of the real slices blended into position ``slot`` of this
        group (one slice with weight 1 unless the group is interpolated; none for padding)."""
        return [(int(kept[i]), w) for i, w in position_sources(self.plan[slot])]


@dataclass
class SliceScore:
    index: int                # volume index of the slice
    probabilities: np.ndarray


@dataclass
class Scores:
    """A study's scored units and verdict: ``groups`` for a group model, ``slices`` for a slice model."""

    verdict: Verdict
    groups: list[GroupResult] = field(default_factory=list)
    slices: list[SliceScore] = field(default_factory=list)


@dataclass
class StudyResult:
    prepared: PreparedStudy
    groups: list[GroupResult]     # a group model's groups (empty for a slice model)
    slices: list[SliceScore]      # a slice model's per-slice probabilities (empty for a group model)
    verdict: Verdict
    classifier: Classifier
    options: PipelineOptions

    @property
    def classes(self) -> tuple[str, ...]:
        return self.classifier.classes

    @property
    def volume(self) -> Volume:
        return self.prepared.volume

    @property
    def lung_mask(self) -> np.ndarray:
        return self.prepared.lung_mask

    @property
    def images(self) -> np.ndarray:
        return self.prepared.images

    @property
    def selection(self) -> Selection:
        return self.prepared.selection

    @property
    def timings_ms(self) -> dict[str, float]:
        return self.prepared.timings_ms

    def to_dict(self) -> ResultDoc:
        """The JSON document printed by ``ctedge predict --json`` and served by the API."""
        v, sel = self.volume, self.selection
        z = [None if v.position_mm is None else round(float(p), 3) for p in  # type: ignore[arg-type]
             (v.position_mm if v.position_mm is not None else [None] * v.n_slices)]
        kept = sel.kept_indices
        classes = self.classes
        number = v.instance_numbers or [None] * v.n_slices
        scored = {s.index: s.probabilities for s in self.slices}
        doc: ResultDoc = {
            "schema_version": SCHEMA_VERSION,
            "modality": v.modality,
            "label": self.verdict.label,
            "classes": list(classes),
            "probabilities": self.verdict.probabilities,
            "decision_rule": self.verdict.rule,
            "groups": [{
                "index": g.index,
                "slice_range": [int(g.source.min()), int(g.source.max())],
                "n_padding_slices": int(np.isnan(g.plan).sum()),
                "interpolated": bool(np.any(np.mod(g.plan[~np.isnan(g.plan)], 1) > 0)),
                "probabilities": _named(classes, g.probabilities),
                "label": g.label,
            } for g in self.groups],
            "n_slices_read": v.n_slices,
            "n_slices_used": len(kept),
            "selection": sel.method,
            "slices_used": [self._used_slice(int(i), z[i], number[i], scored.get(int(i))) for i in kept],
            "slices_dropped": [{"index": i, "file": v.files[i], "z": z[i], "instance_number": number[i],
                                "reason": sel.reasons[i]}
                               for i in range(v.n_slices) if not sel.keep[i]],
            "files_dropped": [d.to_dict() for d in v.dropped_files],
            "series": {"chosen": v.series_uid, "why": v.series_why,
                       "skipped": [{"uid": s.uid, "n_files": s.n_files, "code": s.code, "reason": s.reason}
                                   for s in v.skipped_series]},
            "input": {"n_files": v.n_files, "hu_exact": v.hu_exact, "pixel_spacing_mm": v.pixel_spacing_mm,
                      "slice_thickness_mm": v.slice_thickness_mm, "view": v.view},
            "warnings": list(v.warnings),
            "flags": [f.to_dict() for f in v.flags],
            "timings_ms": {k: round(t, 1) for k, t in self.timings_ms.items()},
            "model": self.classifier.info.to_dict(),
            "patient_rule": rule.to_dict() if self.slices and (rule := getattr(self.classifier, "rule", None)) else None,
            "software": {"name": "ctedge", "version": __version__},
        }
        doc["score"], doc["agreement"], doc["concern"] = score_meaning(doc), agreement(doc), concern(doc)
        return doc

    def _used_slice(self, index: int, z: float | None, number: int | None, probabilities: np.ndarray | None) -> UsedSliceDoc:
        doc: UsedSliceDoc = {"index": index, "file": self.volume.files[index], "z": z, "instance_number": number}
        if probabilities is not None:      # slice models score each kept slice
            doc["probabilities"] = _named(self.classes, probabilities)
            doc["label"] = self.classes[int(np.argmax(probabilities))]
        return doc


def _named(classes: tuple[str, ...], probabilities: np.ndarray) -> dict[str, float]:
    return {c: round(float(p), 6) for c, p in zip(classes, probabilities)}


@dataclass
class PreparedStudy:
    """A study preprocessed up to model input: what training and inference share."""

    volume: Volume
    lung_mask: np.ndarray     # (n, size, size) bool
    windowed: np.ndarray      # (n, size, size) uint8 lung window, before CLAHE and masking: for display
    images: np.ndarray        # (n, size, size) uint8 model inputs (CLAHE, lungs masked if asked)
    selection: Selection
    plans: list[np.ndarray]   # group plans over the kept slices (see group_plan)
    timings_ms: dict[str, float]
    presets: dict[str, np.ndarray] = field(default_factory=dict)  # (n, size, size) uint8 per DISPLAY_WINDOWS name; empty without exact HU

    def groups(self) -> list[np.ndarray]:
        """The (group_size, size, size) uint8 groups fed to the classifier."""
        kept = self.images[self.selection.kept_indices]
        return [assemble(kept, plan) for plan in self.plans]


@dataclass
class ReadStudy:
    """A study read from disk, not yet preprocessed: the first stage of :func:`run_study`, which a
    caller may run ahead (``ctedge watch`` reads the next study while this one is analysed). It
    remembers what it was read for: it can only be prepared with the same modality and settings."""

    source: Source
    data: Volume | Radiograph   # the CT volume (see load_study's resize_to) or the radiograph
    read_ms: float
    modality: str               # edge.card.MODALITIES
    options: PipelineOptions
    limits: Limits
    release_full_resolution: bool
    training_range: TrainingRange = TrainingRange()
