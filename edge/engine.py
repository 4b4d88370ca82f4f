"""The loaded pipeline: model, heatmaps and options of a device profile, used for many studies.

``ctedge predict``, the server and the watcher all build one :class:`Engine` and call it. An
interpreter is not thread-safe, so the engine holds ``copies`` sets of interpreters (classifier,
explainer, segmenter; loaded once): each study, once read, borrows one set for the rest of its
analysis, so with ``server.workers: 2`` two studies are analysed at the same time, each on its own
set. Reading needs no set (``Engine.read``): the watcher reads the next study during this one.
"""

from __future__ import annotations

import dataclasses
import queue
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from edge.card import DEFAULT_BUNDLE, KIND_MODALITY, MODALITY_TERMS, ModelCard, TrainingRange, load_card, modality_names
from edge.errors import UserError
from edge.explain import GradCam, SliceGradCam
from edge.infer import Classifier, ModelInfo
from edge.ingest import Limits, source_name
from edge.ingest.radiograph import study_modality
from edge.kinds import KINDS
from edge.options import PipelineOptions, apply_settings
from edge.pipeline import read_study, run_study
from edge.preprocess.segment import LungSegmenter, TFLiteSegmenter
from edge.profile import Profile
from edge.report import write_result
from edge.stages import ReadStudy, Source, StudyResult
from edge.tune import resolve


class NoModelForModalityError(UserError):
    """A study of a modality (CT, X-ray) for which this device has no model bundle."""

    def __init__(self, path: str | Path, problem: str, modality: str):
        super().__init__(path, problem)
        self.modality = modality        # the study's (edge.card.MODALITIES)


class Models(NamedTuple):
    """One set of interpreters: used by one study at a time."""

    classifier: Classifier
    explainer: GradCam | SliceGradCam | None = None
    segmenter: LungSegmenter | None = None


class Engine:
    """Sets of (classifier, optional Grad-CAM explainer, optional segmenter), pipeline options and
    input limits. ``spares`` are further model sets, so that ``1 + len(spares)`` studies can run at once."""

    def __init__(self, classifier: Classifier, options: PipelineOptions = PipelineOptions(),
                 explainer: GradCam | SliceGradCam | None = None, segmenter: LungSegmenter | None = None,
                 limits: Limits = Limits(), heatmaps_per_group: int = 3,
                 training_range: TrainingRange = TrainingRange(), spares: Sequence[Models] = ()):
        self.classifier = classifier
        self.options = options
        self.explainer = explainer
        self.segmenter = segmenter
        self.limits = limits
        self.heatmaps_per_group = heatmaps_per_group
        self.training_range = training_range
        self._free: queue.Queue[Models] = queue.Queue()
        for models in (Models(classifier, explainer, segmenter), *spares):
            self._free.put(models)
        self.concurrency = 1 + len(spares)
        self.modality = KIND_MODALITY[classifier.kind]
        self.routes: dict[str, Engine] = {self.modality: self}   # the engine of each modality this device reads

    @classmethod
    def from_bundle(cls, bundle: str | Path | ModelCard = DEFAULT_BUNDLE, variant: str = "int8",
                    threads: int | None = None, edgetpu: bool = False,
                    settings: Mapping[str, tuple[Any, str]] | None = None, copies: int = 1,
                    chosen: str = "") -> Engine:
        """Load a model bundle (``model.json`` + TFLite files) of any kind (``edge.kinds``) ``copies``
        times; heatmaps when the bundle has explain models. The pipeline options come from the card;
        ``settings`` (``{key: (value, where)}``, from a profile or flags) may change the vote threshold
        and must agree with the card otherwise. ``chosen`` says how the variant was chosen (shown with
        the model info)."""
        card = bundle if isinstance(bundle, ModelCard) else load_card(bundle)
        settings = {k: (_card_segmenter(v, card) if k == "segmenter" else v, where)
                    for k, (v, where) in (settings or {}).items()}
        options = apply_settings(card.preprocessing, card.path, settings)
        kind = KINDS[card.kind]

        def load() -> Models:
            classifier = kind.classifier(card, variant, threads, edgetpu=edgetpu)
            classifier.info = dataclasses.replace(classifier.info, chosen=chosen, threads=threads or 0)
            explainer = kind.explainer(card, threads) if card.explain else None
            segmenter = None if options.segmenter == "threshold" else \
                TFLiteSegmenter(card.bundle / options.segmenter, threads=threads)
            return Models(classifier, explainer, segmenter)

        first, *spares = [load() for _ in range(max(1, copies))]
        return cls(first.classifier, options, first.explainer, first.segmenter, training_range=card.training_range,
                   spares=spares)

    @classmethod
    def from_profile(cls, profile: Profile, flags: Mapping[str, tuple[Any, str]] | None = None,
                     copies: int = 1, tune_if_missing: bool = False) -> Engine:
        """The model, delegate, threads and pipeline settings of a validated device profile; ``flags``
        (command-line settings, same form as the profile's) are applied after the profile's.
        ``model.variant: auto`` takes the variant and threads tuned for this CPU (``edge.tune``);
        ``tune_if_missing`` tunes now when there is no such choice yet."""
        engines = [cls.from_profile_bundle(profile, bundle, flags, copies, tune_if_missing)
                   for bundle in profile.model.bundles]
        first = engines[0]
        first.routes = {e.modality: e for e in engines}
        return first

    @classmethod
    def from_profile_bundle(cls, profile: Profile, bundle: Path, flags: Mapping[str, tuple[Any, str]] | None = None,
                            copies: int = 1, tune_if_missing: bool = False) -> Engine:
        """The engine of one of ``profile``'s bundles alone, as ``from_profile`` loads it for that
        bundle's modality (what ``ctedge doctor`` checks and ``ctedge validate`` measures)."""
        card = load_card(bundle)
        variant, threads, chosen = resolve(card, profile.model, tune_if_missing)
        return cls.from_bundle(card, variant, threads, edgetpu=profile.model.delegate == "edgetpu",
                               settings=profile.pipeline_settings() | dict(flags or {}), copies=copies, chosen=chosen)

    @classmethod
    def default(cls) -> Engine:
        """The bundled demonstration model with default options."""
        return cls.from_bundle()

    @property
    def info(self) -> ModelInfo:
        return self.classifier.info

    @contextmanager
    def _borrow(self) -> Iterator[Models]:
        """A free model set for one study (waits while all are in use)."""
        models = self._free.get()
        try:
            yield models
        finally:
            self._free.put(models)

    def route(self, source: Source) -> Engine:
        """The engine of ``source``'s modality (CT, or one X-ray image); NoModelForModalityError when
        this device has no model for it."""
        modality = study_modality(source, self.limits)
        if modality not in self.routes:
            name = MODALITY_TERMS[modality].name
            raise NoModelForModalityError(source_name(source), f"a study of modality {name}, but this device has "
                                          f"no {name} model (it reads: {modality_names(self.routes)})", modality)
        return self.routes[modality]

    def read(self, source: Source) -> ReadStudy:
        """Read (decode) ``source`` for the engine of its modality (see ``route``), without a model set:
        the first stage of ``run`` and ``analyse``, which a caller may do ahead (``ctedge watch`` reads
        the next study while this one is analysed)."""
        engine = self.route(source)
        return read_study(source, engine.modality, engine.options, engine.limits, release_full_resolution=True)

    def run(self, source: Source | ReadStudy) -> StudyResult:
        """Read (unless ``source`` was read by ``read``), preprocess, classify and vote one study (raises
        StudyError subclasses on bad input); the study's modality picks the model (see ``route``)."""
        engine, study = self._routed(source)
        with engine._borrow() as models:
            return engine._run(study, models)

    def _routed(self, source: Source | ReadStudy) -> tuple[Engine, ReadStudy]:
        """The engine of the study's modality and the study, read now unless it was read ahead."""
        study = source if isinstance(source, ReadStudy) else self.read(source)
        return self.routes[study.modality], study

    def _run(self, study: ReadStudy, models: Models) -> StudyResult:
        return run_study(study, models.classifier, self.options, models.segmenter, self.limits,
                         self.training_range, release_full_resolution=True)

    def analyse(self, source: Source | ReadStudy, out_dir: Path) -> dict:
        """Run one study (read ahead by ``read``, or now) and write its result folder (see
        ``edge.report.write_result``); return the result document: the ``ctedge predict --json``
        object plus heatmaps and slice images."""
        engine, study = self._routed(source)
        with engine._borrow() as models:
            result = engine._run(study, models)
            start = time.perf_counter()
            heatmaps = []
            if models.explainer is not None:
                heatmaps = models.explainer.explain(result, engine.heatmaps_per_group)
                result.timings_ms["explain"] = (time.perf_counter() - start) * 1000.0
                result.timings_ms["total"] += result.timings_ms["explain"]
        return write_result(result, heatmaps, out_dir, models.explainer.method if models.explainer else None)



def _card_segmenter(value: Any, card: ModelCard) -> Any:
    """A segmenter setting given as a path names the card's own U-Net when the files are identical."""
    bundled = card.preprocessing.segmenter
    if value == "threshold" or bundled == "threshold":
        return value
    given = Path(str(value))
    return bundled if given.is_file() and given.read_bytes() == (card.bundle / bundled).read_bytes() else value
