"""The loaded pipeline of a device, used for many studies.

An :class:`Engine` is one model bundle loaded with its options: an interpreter is not thread-safe,
so it holds ``copies`` sets of interpreters (classifier, explainer, segmenter; loaded once): each
study, once read, borrows one set for the rest of its analysis, so with ``server.workers: 2`` two
studies are analysed at the same time, each on its own set. Reading needs no set (``read``): the
watcher reads the next study during this one. An engine reads studies of its own modality only.

A :class:`Device` is what a device profile loads: one engine per modality (CT, X-ray), each study
routed to the engine of its modality. ``ctedge predict``, ``watch``, ``bench-dicom`` and the server
all build it one way, :meth:`Device.from_profile`; ``validate`` and ``doctor`` take one bundle's
engine (:meth:`Engine.from_profile_bundle`).
"""

from __future__ import annotations

import dataclasses
import queue
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from edge.profile import DEFAULT_XRAY_BUNDLE, Profile
from edge.result import ResultDoc
from edge.report import write_result
from edge.stages import ReadStudy, Source, StudyResult
from edge.tune import AUTO, cache_path, resolve

Progress = Callable[[str], None] | None
OnVerdict = Callable[[ResultDoc], None] | None
"""Told the result document of a study (without heatmaps or slice images) as soon as its verdict is
known, before the explanation: what ``edge.dicomnet`` sends to PACS first."""
"""Told the name of each stage of ``analyse`` as it starts."""


class NoModelForModalityError(UserError):
    """A study of a modality (CT, X-ray) for which this device has no model bundle."""

    def __init__(self, path: str | Path, problem: str, modality: str):
        super().__init__(path, problem)
        self.modality = modality        # the study's (edge.card.MODALITIES)

    def __reduce__(self) -> tuple:
        return type(self), (self.path, self.problem, self.modality)


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

    @classmethod
    def from_bundle(cls, bundle: str | Path | ModelCard = DEFAULT_BUNDLE, variant: str = "int8",
                    threads: int | None = None, edgetpu: bool = False,
                    settings: Mapping[str, tuple[Any, str]] | None = None, copies: int = 1,
                    chosen: str = "", runtime: str = "litert") -> Engine:
        """Load a model bundle (``model.json`` + TFLite files) of any kind (``edge.kinds``) ``copies``
        times; heatmaps when the bundle has explain models. The pipeline options come from the card;
        ``settings`` (``{key: (value, where)}``, from a profile or flags) may change the vote threshold
        and must agree with the card otherwise. ``chosen`` says how the variant was chosen (shown with
        the model info); ``runtime`` runs the classifier (``edge.runtime.RUNTIMES``), while Grad-CAM
        always runs on LiteRT float32 (exact gradients)."""
        card = bundle if isinstance(bundle, ModelCard) else load_card(bundle)
        settings = {k: (_card_segmenter(v, card) if k == "segmenter" else v, where)
                    for k, (v, where) in (settings or {}).items()}
        options = apply_settings(card.preprocessing, card.path, settings)
        kind = KINDS[card.kind]

        def load() -> Models:
            classifier = kind.classifier(card, variant, threads, edgetpu=edgetpu, runtime=runtime)
            classifier.info = dataclasses.replace(classifier.info, chosen=chosen, threads=threads or 0)
            explainer = kind.explainer(card, threads) if card.explain else None
            segmenter = None if options.segmenter == "threshold" else \
                TFLiteSegmenter(card.bundle / options.segmenter, threads=threads)
            return Models(classifier, explainer, segmenter)

        first, *spares = [load() for _ in range(max(1, copies))]
        return cls(first.classifier, options, first.explainer, first.segmenter, training_range=card.training_range,
                   spares=spares)

    @classmethod
    def from_profile_bundle(cls, profile: Profile, bundle: Path, flags: Mapping[str, tuple[Any, str]] | None = None,
                            copies: int = 1, tune_if_missing: bool = False) -> Engine:
        """The engine of one of ``profile``'s bundles, as :meth:`Device.from_profile` loads it for that
        bundle's modality (what ``ctedge doctor`` checks and ``ctedge validate`` measures). ``flags``
        (command-line settings, same form as the profile's) are applied after the profile's;
        ``model.variant: auto`` takes the variant and threads tuned for this CPU (``edge.tune``);
        ``tune_if_missing`` tunes now when there is no such choice yet, or when it was timed on a busy CPU
        and the CPU is idle now."""
        card = load_card(bundle)
        variant, runtime, threads, chosen = resolve(card, profile.model, tune_if_missing, cache_path(profile))
        edgetpu = profile.model.delegate == "edgetpu"
        return cls.from_bundle(card, variant, threads, edgetpu=edgetpu,
                               settings=profile.pipeline_settings() | dict(flags or {}), copies=copies, chosen=chosen,
                               runtime="litert" if edgetpu else runtime)

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

    @property
    def routes(self) -> dict[str, Engine]:
        """The engine of each modality it reads: itself (a :class:`Device` has one per modality)."""
        return {self.modality: self}

    def read(self, source: Source) -> ReadStudy:
        """Read (decode) ``source`` without a model set: the first stage of ``run`` and ``analyse``,
        which a caller may do ahead (``ctedge watch`` reads the next study while this one is
        analysed). NoModelForModalityError for a study of another modality."""
        route(self.routes, source, self.limits)
        return self._read(source)

    def _read(self, source: Source) -> ReadStudy:
        return read_study(source, self.modality, self.options, self.limits, release_full_resolution=True,
                          training_range=self.training_range)

    def run(self, source: Source | ReadStudy) -> StudyResult:
        """Read (unless ``source`` was read by ``read``), preprocess, classify and vote one study
        (raises StudyError subclasses on bad input)."""
        study = self._own(source)
        with self._borrow() as models:
            return self._run(study, models)

    def _own(self, source: Source | ReadStudy) -> ReadStudy:
        """The study, read now unless it was read ahead (then it must be of this engine's modality)."""
        if not isinstance(source, ReadStudy):
            return self.read(source)
        route(self.routes, source.source, self.limits, source.modality)
        return source

    def _run(self, study: ReadStudy, models: Models) -> StudyResult:
        return run_study(study, models.classifier, self.options, models.segmenter, self.limits,
                         self.training_range, release_full_resolution=True)

    def analyse(self, source: Source | ReadStudy, out_dir: Path, progress: Progress = None,
                on_verdict: OnVerdict = None) -> ResultDoc:
        """Run one study (read ahead by ``read``, or now) and write its result folder (see
        ``edge.report.write_result``); return the result document: the ``ctedge predict --json``
        object plus heatmaps and slice images. ``progress`` is told each stage as it starts
        (``reading``, ``analysing``, ``explaining``); ``on_verdict`` the ``ctedge predict --json``
        object as soon as the verdict is known, before the explanation."""
        tell = progress or (lambda stage: None)
        tell("reading")
        study = self._own(source)
        with self._borrow() as models:
            tell("analysing")
            result = self._run(study, models)
            if on_verdict is not None:
                on_verdict(result.to_dict())
            start = time.perf_counter()
            heatmaps = []
            if models.explainer is not None:
                tell("explaining")
                heatmaps = models.explainer.explain(result, self.heatmaps_per_group)
                result.timings_ms["explain"] = (time.perf_counter() - start) * 1000.0
                result.timings_ms["total"] += result.timings_ms["explain"]
        return write_result(result, heatmaps, out_dir, models.explainer.method if models.explainer else None)


class Device:
    """The engines of a device profile, one per modality (the main bundle's first): each study goes to
    the engine of its modality. Same interface as an :class:`Engine` for ``read``, ``run``, ``analyse``,
    ``info``, ``routes`` and ``concurrency``."""

    def __init__(self, engines: Sequence[Engine]):
        self.routes: dict[str, Engine] = {}
        for engine in engines:
            if engine.modality in self.routes:
                raise ValueError(f"two engines read {MODALITY_TERMS[engine.modality].name} studies")
            self.routes[engine.modality] = engine
        self.main = engines[0]

    @classmethod
    def from_profile(cls, profile: Profile, flags: Mapping[str, tuple[Any, str]] | None = None,
                     copies: int = 1, tune_if_missing: bool = False, modality: str | None = None) -> Device:
        """Every bundle of a validated device profile, each loaded by :meth:`Engine.from_profile_bundle`;
        with ``modality`` (a one-shot command that knows its study) only the bundles reading it, so the
        others cost neither memory nor start-up time (all of them when none reads it: the error names them)."""
        bundles = [b for b in profile.model.bundles if modality is None or load_card(b).modality == modality]
        if profile.model.variant != AUTO and profile.model.bundle not in bundles:
            load_card(profile.model.bundle).files(profile.model.variant)   # an explicit variant binds the main bundle
        return cls([Engine.from_profile_bundle(profile, bundle, flags, copies, tune_if_missing)
                    for bundle in bundles or profile.model.bundles])

    @property
    def info(self) -> ModelInfo:
        """The main bundle's model (the device's others are in ``routes``)."""
        return self.main.info

    @property
    def concurrency(self) -> int:
        return self.main.concurrency

    def read(self, source: Source) -> ReadStudy:
        """Read ``source`` for the engine of its modality (NoModelForModalityError when the device has none)."""
        return route(self.routes, source, self.main.limits)._read(source)

    def run(self, source: Source | ReadStudy) -> StudyResult:
        """:meth:`Engine.run` on the engine of the study's modality."""
        study = source if isinstance(source, ReadStudy) else self.read(source)
        return self.routes[study.modality].run(study)

    def analyse(self, source: Source | ReadStudy, out_dir: Path, progress: Progress = None,
                on_verdict: OnVerdict = None) -> ResultDoc:
        """:meth:`Engine.analyse` on the engine of the study's modality."""
        if progress:
            progress("reading")
        study = source if isinstance(source, ReadStudy) else self.read(source)
        return self.routes[study.modality].analyse(study, out_dir, progress, on_verdict)


def route(routes: Mapping[str, Engine], source: Source, limits: Limits, modality: str | None = None) -> Engine:
    """The engine of ``source``'s modality (CT, or one X-ray image; ``modality`` when it is known);
    NoModelForModalityError when ``routes`` has none."""
    modality = modality or study_modality(source, limits)
    if modality not in routes:
        name = MODALITY_TERMS[modality].name
        raise NoModelForModalityError(source_name(source), f"a study of modality {name}, but this device has "
                                      f"no {name} model (it reads: {modality_names(routes)}); "
                                      f"{adding(modality)}", modality)
    return routes[modality]


def adding(modality: str) -> str:
    """The next step for a device without a model of ``modality``: the profile key and bundle that add one."""
    bundle = DEFAULT_XRAY_BUNDLE if modality == "xray" else DEFAULT_BUNDLE
    name = MODALITY_TERMS[modality].name
    return (f"to read {name} too, add {'an' if name[0] in 'AEIOUX' else 'a'} {name} bundle to the profile's "
            f"model.more_bundles (e.g. {bundle}; ctedge predict: --model {bundle})")


def _card_segmenter(value: Any, card: ModelCard) -> Any:
    """A segmenter setting given as a path names the card's own U-Net when the files are identical."""
    bundled = card.preprocessing.segmenter
    if value == "threshold" or bundled == "threshold":
        return value
    given = Path(str(value))
    return bundled if given.is_file() and given.read_bytes() == (card.bundle / bundled).read_bytes() else value
