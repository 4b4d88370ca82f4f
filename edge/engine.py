"""The loaded pipeline: model, heatmaps and options of a device profile, used for many studies.

``ctedge predict``, the server and the watcher all build one :class:`Engine` and call it; it
holds the TFLite interpreters (loaded once) behind a lock, since an interpreter is not thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edge.card import ModelCard, TrainingRange, load_card
from edge.explain import GradCam, SliceGradCam
from edge.infer import Classifier, ModelInfo
from edge.ingest import Limits
from edge.kinds import KINDS
from edge.options import PipelineOptions, apply_settings
from edge.pipeline import StudyResult, run_study
from edge.preprocess.segment import LungSegmenter, TFLiteSegmenter
from edge.profile import Profile
from edge.report import write_result

DEFAULT_BUNDLE = Path(__file__).resolve().parent / "models" / "demo"

Source = str | Path | Sequence[str | Path]


class Engine:
    """A classifier, an optional Grad-CAM explainer, pipeline options and input limits."""

    def __init__(self, classifier: Classifier, options: PipelineOptions = PipelineOptions(),
                 explainer: GradCam | SliceGradCam | None = None, segmenter: LungSegmenter | None = None,
                 limits: Limits = Limits(), heatmaps_per_group: int = 3,
                 training_range: TrainingRange = TrainingRange()):
        self.classifier = classifier
        self.options = options
        self.explainer = explainer
        self.segmenter = segmenter
        self.limits = limits
        self.heatmaps_per_group = heatmaps_per_group
        self.training_range = training_range
        self._lock = threading.RLock()

    @classmethod
    def from_bundle(cls, bundle: str | Path | ModelCard = DEFAULT_BUNDLE, variant: str = "int8",
                    threads: int | None = None, edgetpu: bool = False,
                    settings: Mapping[str, tuple[Any, str]] | None = None) -> Engine:
        """Load a model bundle (``model.json`` + TFLite files) of any kind (``edge.kinds``); heatmaps
        when the bundle has explain models. The pipeline options come from the card; ``settings``
        (``{key: (value, where)}``, from a profile or flags) may change the vote threshold and must
        agree with the card otherwise."""
        card = bundle if isinstance(bundle, ModelCard) else load_card(bundle)
        settings = {k: (_card_segmenter(v, card) if k == "segmenter" else v, where)
                    for k, (v, where) in (settings or {}).items()}
        options = apply_settings(card.preprocessing, card.path, settings)
        kind = KINDS[card.kind]
        classifier = kind.classifier(card, variant, threads, edgetpu=edgetpu)
        explainer = kind.explainer(card, threads) if card.explain else None
        segmenter = None if options.segmenter == "threshold" else \
            TFLiteSegmenter(card.bundle / options.segmenter, threads=threads)
        return cls(classifier, options, explainer, segmenter, training_range=card.training_range)

    @classmethod
    def from_profile(cls, profile: Profile, flags: Mapping[str, tuple[Any, str]] | None = None) -> Engine:
        """The model, delegate, threads and pipeline settings of a validated device profile; ``flags``
        (command-line settings, same form as the profile's) are applied after the profile's."""
        return cls.from_bundle(profile.model.bundle, profile.model.variant, profile.threads,
                               edgetpu=profile.model.delegate == "edgetpu",
                               settings=profile.pipeline_settings() | dict(flags or {}))

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
            return run_study(source, self.classifier, self.options, self.segmenter, self.limits, self.training_range)

    def analyse(self, source: Source, out_dir: Path) -> dict:
        """Run one study and write its result folder (see ``edge.report.write_result``); return the
        result document: the ``ctedge predict --json`` object plus heatmaps and slice images."""
        with self._lock:
            result = self.run(source)
            start = time.perf_counter()
            heatmaps = []
            if self.explainer is not None:
                heatmaps = self.explainer.explain(result, self.heatmaps_per_group)
                result.timings_ms["explain"] = (time.perf_counter() - start) * 1000.0
                result.timings_ms["total"] += result.timings_ms["explain"]
        return write_result(result, heatmaps, out_dir, self.explainer.method if self.explainer else None)


def _card_segmenter(value: Any, card: ModelCard) -> Any:
    """A segmenter setting given as a path names the card's own U-Net when the files are identical."""
    bundled = card.preprocessing.segmenter
    if value == "threshold" or bundled == "threshold":
        return value
    given = Path(str(value))
    return bundled if given.is_file() and given.read_bytes() == (card.bundle / bundled).read_bytes() else value
