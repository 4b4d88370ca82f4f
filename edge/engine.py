"""The loaded pipeline: model, heatmaps and options of a device profile, used for many studies.

``ctedge predict``, the server and the watcher all build one :class:`Engine` and call it; it
holds the TFLite interpreters (loaded once) behind a lock, since an interpreter is not thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from edge import CLASSES
from edge.explain import GradCam
from edge.infer import GroupClassifier, ModelInfo, TFLiteClassifier
from edge.ingest import Limits
from edge.pipeline import PipelineOptions, StudyResult, run_study
from edge.preprocess.segment import LungSegmenter
from edge.profile import Profile
from edge.report import write_result

DEFAULT_BUNDLE = Path(__file__).resolve().parent / "models" / "demo"

Source = str | Path | Sequence[str | Path]


class Engine:
    """A classifier, an optional Grad-CAM explainer, pipeline options and input limits."""

    def __init__(self, classifier: GroupClassifier, options: PipelineOptions = PipelineOptions(),
                 explainer: GradCam | None = None, segmenter: LungSegmenter | None = None,
                 limits: Limits = Limits(), heatmaps_per_group: int = 3):
        self.classifier = classifier
        self.options = options
        self.explainer = explainer
        self.segmenter = segmenter
        self.limits = limits
        self.heatmaps_per_group = heatmaps_per_group
        self._lock = threading.RLock()

    @classmethod
    def from_bundle(cls, bundle: str | Path = DEFAULT_BUNDLE, variant: str = "int8", threads: int | None = None,
                    edgetpu: bool = False, options: PipelineOptions = PipelineOptions(),
                    segmenter: LungSegmenter | None = None) -> Engine:
        """Load a model bundle (``model.json`` + TFLite files); heatmaps when the bundle has explain models."""
        classifier = TFLiteClassifier(bundle, variant, threads, edgetpu=edgetpu)
        explainer = GradCam(bundle, classifier.card, threads) if classifier.card.get("explain") else None
        return cls(classifier, options, explainer, segmenter)

    @classmethod
    def from_profile(cls, profile: Profile) -> Engine:
        """The model, delegate, threads and pipeline settings of a validated device profile."""
        return cls.from_bundle(profile.model.bundle, profile.model.variant, profile.threads,
                               edgetpu=profile.model.delegate == "edgetpu",
                               options=PipelineOptions(**asdict(profile.pipeline)))

    @classmethod
    def default(cls) -> Engine:
        """The bundled demonstration model with default options."""
        return cls.from_bundle()

    @property
    def info(self) -> ModelInfo:
        return self.classifier.info

    def run(self, source: Source) -> StudyResult:
        """Read, preprocess, classify and vote one study (raises StudyError subclasses on bad input)."""
        with self._lock:
            return run_study(source, self.classifier, self.options, self.segmenter, self.limits)

    def analyse(self, source: Source, out_dir: Path) -> dict:
        """Run one study and write its result folder (see ``edge.report.write_result``); return the
        result document: the ``ctedge predict --json`` object plus heatmaps and slice images."""
        with self._lock:
            result = self.run(source)
            start = time.perf_counter()
            heatmaps = []
            if self.explainer is not None:
                heatmaps = self.explainer.top_slices(result.prepared.groups(), [g.plan for g in result.groups],
                                                     CLASSES.index(result.verdict.label), self.heatmaps_per_group)
                result.timings_ms["explain"] = (time.perf_counter() - start) * 1000.0
                result.timings_ms["total"] += result.timings_ms["explain"]
        return write_result(result, heatmaps, out_dir, explained=self.explainer is not None)
