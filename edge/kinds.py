"""Model kinds: how a prepared study becomes scored units and a patient verdict.

``KINDS[card.kind]`` names what a bundle of that kind loads (its classifier and Grad-CAM
explainer) and how it scores a study. ``group``: 50-slice groups through the encoder and head,
voted by ``edge.vote.patient_verdict``; ``slice``: every selected slice through one 2-D
classifier, the card's ``edge.vote.PatientRule`` deciding; ``image``: one chest radiograph through
the same 2-D classifier, its most probable class the verdict. The pipeline, engine and outputs
call these; the result document carries ``groups`` or per-slice probabilities, never the kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.explain import GradCam, SliceGradCam
from edge.infer import Classifier, SliceClassifier, TFLiteClassifier
from edge.options import PipelineOptions
from edge.preprocess.group import position_sources
from edge.stages import GroupResult, PreparedStudy, Scores, SliceScore, timed
from edge.vote import Verdict, patient_verdict


def score_groups(prepared: PreparedStudy, classifier: Classifier, options: PipelineOptions,
                 t: dict[str, float]) -> Scores:
    """Group the kept slices, classify each group, vote (majority with the ``override`` threshold)."""
    with timed(t, "group"):
        batches = prepared.groups()
    with timed(t, "infer"):
        probs = [np.asarray(classifier.predict(b), float) for b in batches]
    with timed(t, "vote"):
        verdict = patient_verdict(np.stack(probs), options.override)
    kept = prepared.selection.kept_indices
    groups = [GroupResult(i, plan, _sources(plan, kept), p, classifier.classes)
              for i, (plan, p) in enumerate(zip(prepared.plans, probs))]
    return Scores(verdict, groups=groups)


def score_slices(prepared: PreparedStudy, classifier: SliceClassifier, options: PipelineOptions,
                 t: dict[str, float]) -> Scores:
    """Classify every kept slice; the card's patient rule decides."""
    kept = prepared.selection.kept_indices
    with timed(t, "infer"):
        probs = np.stack([np.asarray(classifier.predict(image), float) for image in kept_slices(prepared)])
    with timed(t, "vote"):
        verdict = classifier.rule.verdict(probs, classifier.classes)  # type: ignore[union-attr]
    return Scores(verdict, slices=[SliceScore(int(i), p) for i, p in zip(kept, probs)])


def score_image(prepared: PreparedStudy, classifier: SliceClassifier, options: PipelineOptions,
                t: dict[str, float]) -> Scores:
    """Classify the one radiograph; its most probable class is the verdict."""
    with timed(t, "infer"):
        probs = np.asarray(classifier.predict(prepared.images[0]), float)
    label = classifier.classes[int(np.argmax(probs))]
    verdict = Verdict(label, {c: float(p) for c, p in zip(classifier.classes, probs)},
                      "most probable class of the radiograph")
    return Scores(verdict, slices=[SliceScore(0, probs)])


def _sources(plan: np.ndarray, kept: np.ndarray) -> np.ndarray:
    return kept[np.unique([i for pos in plan for i, _ in position_sources(pos)])]


def kept_slices(prepared: PreparedStudy) -> list[np.ndarray]:
    """The (size, size) uint8 model inputs of the kept slices: a slice model's units."""
    return list(prepared.images[prepared.selection.kept_indices])


@dataclass(frozen=True)
class Kind:
    classifier: Callable[..., Any]        # (card, variant, threads, edgetpu=, runtime=) -> classifier
    explainer: Callable[..., Any]         # (card, threads) -> Grad-CAM on LiteRT float32 (exact gradients)
    score: Callable[..., Scores]          # (prepared, classifier, options, timings) -> Scores
    units: Callable[..., list[np.ndarray]]   # (prepared) -> the inputs of classifier.predict, one per call
    unit: str                             # what one unit is called


KINDS: dict[str, Kind] = {
    "group": Kind(TFLiteClassifier, GradCam, score_groups, lambda prepared: prepared.groups(), "group"),
    "slice": Kind(SliceClassifier, SliceGradCam, score_slices, kept_slices, "slice"),
    "image": Kind(SliceClassifier, SliceGradCam, score_image, kept_slices, "image"),
}
