"""Classifiers on the edge runtime: group models (encoder + head over slice groups), slice models
(one 2-D classifier per slice), and the placeholder used until a trained model is installed.
Each has ``kind`` (the card kind whose scoring, ``edge.kinds``, runs it) and ``classes``."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edge import CLASSES
from edge.card import ModelCard, banner_for, load_card, training_data_summary
from edge.errors import ModelLoadError
from edge.evidence import NO_EVIDENCE, evidence_line
from edge.result import ModelDoc
from edge.runtime import input_shape, invoke, load_interpreter


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    status: str               # clinical, research, demonstration or placeholder (edge.card.STATUSES)
    note: str
    validation: str = NO_EVIDENCE   # the evidence line: "validated on N patients (...)" or "no validation recorded"
    variant: str = ""         # the bundle variant actually run (int8, float32, ...)
    chosen: str = ""          # how that variant was chosen: tuned on this CPU, set by the profile, default
    threads: int = 0          # interpreter threads (0: not recorded)
    runtime: str = "litert"   # the edge runtime of the classifier (edge.runtime.RUNTIMES)
    training_data: dict | None = None    # research models: what they were trained on (edge.card)
    known_biases: tuple[str, ...] = ()
    card_sha256: str = ""     # sha256 of the bundle's model.json ('' for the built-in placeholder)

    @property
    def banner(self) -> str:
        """The warning every output of this model shows ('' for a clinical model)."""
        return banner_for(self.status)

    def to_dict(self) -> ModelDoc:
        """The model as outputs show it; ``demonstration`` (any model not for clinical use) and
        ``placeholder`` are kept for readers of older results."""
        return {"name": self.name, "version": self.version, "status": self.status, "note": self.note,
                "validation": self.validation, "variant": self.variant, "chosen": self.chosen, "threads": self.threads,
                "runtime": self.runtime, "training_data": self.training_data, "known_biases": list(self.known_biases), "banner": self.banner,
                "demonstration": self.status != "clinical", "placeholder": self.status == "placeholder",
                "training_summary": training_data_summary(self.training_data), "card_sha256": self.card_sha256}

    @classmethod
    def of(cls, card: ModelCard, variant: str, runtime: str = "litert") -> ModelInfo:
        return cls(card.name, f"{card.version} ({variant})", card.status, card.note, evidence_line(card.validations, variant),
                   variant, training_data=card.training_data, known_biases=card.known_biases, runtime=runtime,
                   card_sha256=hashlib.sha256(card.path.read_bytes()).hexdigest())


class Classifier(Protocol):
    """Turns one unit of uint8 input (a (group size, size, size) group for kind ``group``, a
    (size, size) slice for kind ``slice``) into probabilities over ``classes``."""

    info: ModelInfo
    kind: str
    classes: tuple[str, ...]

    def predict(self, unit: np.ndarray) -> np.ndarray: ...


class PlaceholderClassifier:
    """NOT a trained model: returns equal probabilities for every class so that the pipeline can
    run end to end before a trained model is installed. Its verdicts carry no information."""

    kind = "group"
    classes = CLASSES
    info = ModelInfo(
        name="placeholder-uniform", version="0", status="placeholder",
        note="Placeholder, not a classifier: every group gets probability 1/3 for each class. "
             "Install a trained model to get a real verdict. Not for clinical use.",
    )

    def predict(self, group: np.ndarray) -> np.ndarray:
        return np.full(3, 1.0 / 3.0)


ENCODER_BATCH = {"int8": 10}
"""Slices per encoder call, by variant (1 where not named; a divisor of the group size). int8
activations are a quarter of float32's: 10 slices a call hold ~17 MB more than one and run a group
15-30% faster on LiteRT and OpenVINO; float variants gain nothing and would hold ~50 MB more
(docs/benchmarks.md, "Memory")."""


class TFLiteClassifier:
    """The CNN encoder + biLSTM head as two TFLite models, described by the bundle's model card.

    The encoder's file takes a whole group (static batch = group size, the card's (group size, input
    size, input size, 1)) and returns one feature vector per slice; it is loaded with a batch of
    :data:`ENCODER_BATCH` slices, and a group runs through it a batch at a time (``edge.runtime``:
    ~50x less memory for float32, same features). The head turns the (1, group size, features) sequence into class probabilities.
    ``runtime`` (``edge.runtime.RUNTIMES``) runs the encoder; the head always runs on LiteRT, since
    OpenVINO cannot read its fused LSTM operator.
    """

    kind = "group"

    def __init__(self, bundle: str | Path | ModelCard, variant: str = "int8", threads: int | None = None,
                 edgetpu: bool = False, runtime: str = "litert"):
        self.card = bundle if isinstance(bundle, ModelCard) else load_card(bundle)
        files = self.card.files(variant)
        self.variant = variant
        self.classes = self.card.classes
        p = self.card.preprocessing
        expected = (p.group_size, p.input_size, p.input_size, 1)
        shape = input_shape(files["encoder"])
        if shape != expected:
            raise ModelLoadError(files["encoder"], f"input shape {shape} does not match the model card "
                                                   f"{self.card.path} (group_size, input_size): {expected}")
        batch = math.gcd(p.group_size, ENCODER_BATCH.get(variant, 1))
        self.encoder = load_interpreter(files["encoder"], threads, edgetpu=edgetpu, batch=batch, runtime=runtime)
        self.head = load_interpreter(files["head"], threads)
        self.info = ModelInfo.of(self.card, variant, runtime)

    def features(self, group: np.ndarray) -> np.ndarray:
        """Per-slice encoder features of one (group size, size, size) uint8 group."""
        return invoke(self.encoder, group[..., None])

    def predict(self, group: np.ndarray) -> np.ndarray:
        probs = invoke(self.head, self.features(group)[None])[0]
        return probs / probs.sum()


class SliceClassifier:
    """A 2-D classifier as one TFLite model (``model`` of the card's variant): input one
    (1, input size, input size, 1) uint8 slice or radiograph, output the probabilities over the
    card's classes. Its ``kind`` is the card's (``slice`` or ``image``); ``runtime`` as for
    :class:`TFLiteClassifier` (the whole model)."""

    def __init__(self, bundle: str | Path | ModelCard, variant: str = "int8", threads: int | None = None,
                 edgetpu: bool = False, runtime: str = "litert"):
        self.card = bundle if isinstance(bundle, ModelCard) else load_card(bundle)
        self.kind = self.card.kind
        files = self.card.files(variant)
        self.variant = variant
        self.classes = self.card.classes
        self.rule = self.card.patient_rule
        self.model = load_interpreter(files["model"], threads, edgetpu=edgetpu, runtime=runtime)
        size = self.card.preprocessing.input_size
        shape = tuple(int(d) for d in self.model.get_input_details()[0]["shape"])
        outputs = tuple(int(d) for d in self.model.get_output_details()[0]["shape"])
        if shape != (1, size, size, 1) or outputs != (1, len(self.classes)):
            raise ModelLoadError(files["model"], f"input {shape} and output {outputs} do not match the model card "
                                                 f"{self.card.path}: (1, {size}, {size}, 1) and (1, {len(self.classes)})")
        self.info = ModelInfo.of(self.card, variant, runtime)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Class probabilities of one (size, size) uint8 slice."""
        probs = invoke(self.model, image[None, ..., None])[0]
        return probs / max(float(probs.sum()), 1e-12)
