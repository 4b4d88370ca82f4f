"""Group classifiers: the interface every model implements, and the placeholder used until a
trained model is installed."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edge import CLASSES
from edge.errors import ModelLoadError
from edge.runtime import invoke, load_interpreter


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    demonstration: bool
    placeholder: bool
    note: str

    def to_dict(self) -> dict:
        return asdict(self)


class GroupClassifier(Protocol):
    """Turns one group of (50, 256, 256) uint8 slices into probabilities over CLASSES."""

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
    """The CNN encoder + biLSTM head as two TFLite models, described by a ``model.json`` bundle card.

    The encoder takes a whole group (static batch = group size) and returns one feature vector per
    slice; the head turns the (1, group size, features) sequence into class probabilities.
    """

    def __init__(self, bundle: str | Path, variant: str = "int8", threads: int | None = None, edgetpu: bool = False):
        bundle = Path(bundle)
        card_path = bundle / "model.json"
        try:
            card = json.loads(card_path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(card_path, f"cannot read the model card ({exc})") from exc
        if tuple(card.get("classes", ())) != CLASSES:
            raise ModelLoadError(card_path, f"classes {card.get('classes')} differ from {list(CLASSES)}")
        files = card.get("variants", {}).get(variant)
        if files is None:
            raise ModelLoadError(card_path, f"no {variant!r} variant; available: {', '.join(card.get('variants', {}))}")
        self.variant = variant
        self.card = card
        self.encoder = load_interpreter(bundle / files["encoder"], threads, edgetpu=edgetpu)
        self.head = load_interpreter(bundle / files["head"], threads)
        self.info = ModelInfo(name=card["name"], version=f"{card['version']} ({variant})",
                              demonstration=bool(card.get("demonstration", True)), placeholder=False,
                              note=card.get("note", ""))

    def features(self, group: np.ndarray) -> np.ndarray:
        """Per-slice encoder features of one (group size, 256, 256) uint8 group."""
        return invoke(self.encoder, group[..., None])

    def predict(self, group: np.ndarray) -> np.ndarray:
        probs = invoke(self.head, self.features(group)[None])[0]
        return probs / probs.sum()
