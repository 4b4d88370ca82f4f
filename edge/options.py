"""Pipeline options: everything that turns a study into model input, plus the vote threshold.

One type, :class:`PipelineOptions`. A model card records the options its model was trained with
(``edge.card``); the edge takes them from the card. A device profile or a command-line flag may
change only what does not change the model input (``override``); any other setting must agree
with the card, or it is refused (:func:`apply_settings`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import UserError

METHODS = ("lung-extent", "seed-area", "rahimzadeh")
"""The slice selection rules (``edge.preprocess.select``), named here so that options are checked
without importing the preprocessing."""
CROPS = ("none", "lungs")
"""``PipelineOptions.crop``: ``none`` keeps the whole field of view; ``lungs`` cuts every slice to the box of
the lung mask over the kept slices (``edge.preprocess.window.lung_box``), as the public slice collections are cut."""


class SettingConflictError(UserError):
    """A profile key or flag that contradicts the model card (it would change the model input)."""


@dataclass(frozen=True)
class PipelineOptions:
    """Preprocessing of a study into model input, and the patient vote's override threshold."""

    window_center: float = -600.0     # lung window, HU
    window_width: float = 1500.0
    input_size: int = 256             # slices are padded to square and resized to input_size x input_size
    clahe_clip: float = 2.0           # CLAHE clip limit, 8x8 tiles
    mask_lungs: bool = True           # non-lung pixels black
    selection: str = "lung-extent"    # slice selection rule (METHODS)
    group_size: int = 50              # slices per group
    segmenter: str = "threshold"      # "threshold", or a U-Net .tflite file name inside the model bundle
    crop: str = "none"                # "lungs": every slice cut to the lungs' box over the kept slices (CROPS)
    override: float = 0.9             # a group's disease probability above this overrides a healthy majority

    def __post_init__(self) -> None:
        if self.selection not in METHODS:
            raise ValueError(f"selection must be one of {', '.join(METHODS)}, got {self.selection!r}")
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {', '.join(CROPS)}, got {self.crop!r}")

    @property
    def window(self) -> tuple[float, float]:
        """(low, high) HU of the lung window."""
        return self.window_center - self.window_width / 2, self.window_center + self.window_width / 2

    def model_input(self) -> dict[str, Any]:
        """The options that decide the model input (all but ``override``), as recorded in a model card."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "override"}


MODEL_INPUT_KEYS = tuple(PipelineOptions().model_input())


def apply_settings(card_options: PipelineOptions, card_path: Path, settings: Mapping[str, tuple[Any, str]]) -> PipelineOptions:
    """The card's options with ``settings`` applied: ``{key: (value, where)}``, ``where`` naming the
    profile key or flag that set it. ``override`` may change; any other key must equal the card's
    value, or a SettingConflictError names ``where``, the key and the card's value."""
    options = card_options
    for key, (value, where) in settings.items():
        if key == "override":
            if not 0.5 <= value <= 1.0:
                raise SettingConflictError(where, f"override must be between 0.5 and 1.0, got {value}")
            options = dataclasses.replace(options, override=value)
            continue
        expected = getattr(card_options, key)
        if value != expected:
            raise SettingConflictError(
                where, f"{key} = {value!r} contradicts the model card {card_path}, which says {key} = {expected!r}: "
                       "the model was trained on input prepared that way; remove the setting or use a model "
                       "trained with it")
    return options
