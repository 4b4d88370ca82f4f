"""Group classifiers: the interface every model implements, and the placeholder used until a
trained model is installed."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np


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
