"""Group classifiers: the interface every model implements, and the placeholder used until a
trained model is installed."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edge.card import ModelCard, banner_for, load_card
from edge.errors import ModelLoadError
from edge.evidence import NO_EVIDENCE, evidence_line
from edge.runtime import invoke, load_interpreter


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    demonstration: bool
    placeholder: bool
    note: str
    validation: str = NO_EVIDENCE   # the evidence line: "validated on N patients (...)" or "no validation recorded"
    variant: str = ""         # the bundle variant actually run (int8, float32, ...)
    chosen: str = ""          # how that variant was chosen: tuned on this CPU, set by the profile, default
    threads: int = 0          # interpreter threads (0: not recorded)

    @property
    def banner(self) -> str:
        """The warning every output of this model shows ('' for a clinical model)."""
        return banner_for(self.demonstration, self.placeholder)

    def to_dict(self) -> dict:
        return asdict(self) | {"banner": self.banner}

    @classmethod
    def of(cls, card: ModelCard, variant: str) -> ModelInfo:
        return cls(card.name, f"{card.version} ({variant})", card.demonstration, card.placeholder, card.note,
                   evidence_line(card.validations), variant)


class GroupClassifier(Protocol):
    """Turns one group of (group size, size, size) uint8 slices into probabilities over CLASSES."""

    info: ModelInfo

    def predict(self, group: np.ndarray) -> np.ndarray: ...


class PlaceholderClassifier:
    """NOT a trained model: returns equal probabilities for every class so that the pipeline can
    run end to end before a trained model is installed. Its verdicts carry no information."""

    info = ModelInfo(
        name="placeholder-uniform", version="0", demonstration=True, placeholder=True,
        note="Placeholder, not a classifier: every group gets probability 1/3 for each class. "
             "Install a trained model to get a real verdict. Not for clinical use.",
    )

    def predict(self, group: np.ndarray) -> np.ndarray:
        return np.full(3, 1.0 / 3.0)


class TFLiteClassifier:
    """The CNN encoder + biLSTM head as two TFLite models, described by the bundle's model card.

    The encoder takes a whole group (static batch = group size) and returns one feature vector per
    slice; the head turns the (1, group size, features) sequence into class probabilities. The
    encoder's input shape must be the card's (group size, input size, input size, 1).
    """

    def __init__(self, bundle: str | Path | ModelCard, variant: str = "int8", threads: int | None = None,
                 edgetpu: bool = False):
        self.card = bundle if isinstance(bundle, ModelCard) else load_card(bundle)
        files = self.card.files(variant)
        self.variant = variant
        self.encoder = load_interpreter(files["encoder"], threads, edgetpu=edgetpu)
        self.head = load_interpreter(files["head"], threads)
        p = self.card.preprocessing
        expected = (p.group_size, p.input_size, p.input_size, 1)
        shape = tuple(int(d) for d in self.encoder.get_input_details()[0]["shape"])
        if shape != expected:
            raise ModelLoadError(files["encoder"], f"input shape {shape} does not match the model card "
                                                   f"{self.card.path} (group_size, input_size): {expected}")
        self.info = ModelInfo.of(self.card, variant)

    def features(self, group: np.ndarray) -> np.ndarray:
        """Per-slice encoder features of one (group size, size, size) uint8 group."""
        return invoke(self.encoder, group[..., None])

    def predict(self, group: np.ndarray) -> np.ndarray:
        probs = invoke(self.head, self.features(group)[None])[0]
        return probs / probs.sum()
