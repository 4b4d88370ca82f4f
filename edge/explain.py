"""Grad-CAM of a group decision on the edge runtime: two float32 TFLite models, no TensorFlow.

A model bundle made by ``ctedge quantize`` carries, beside the classifier variants, an
``explain`` pair (see ``model.json``):

- ``encoder``: the float32 CNN encoder with two outputs, the per-slice features (G, F) and the
  activations of its last convolution (G, h, w, K);
- ``head``: the float32 biLSTM head with two outputs, the pre-softmax class scores (1, 3) and
  their gradients with respect to every slice feature (3, G, F), computed by the converted
  backward graph.

The last convolution reaches the features only through a global max-pool (features
``F-K..F``), so the gradient of a class score with respect to that convolution is the feature
gradient placed at each channel's maximum, and Grad-CAM's channel weight (its spatial mean) is
that gradient divided by h*w: the heatmap is ReLU(sum_k w_k A_k), exactly as with TensorFlow
(``training.gradcam.gradcam_group``). Each slice's share of the evidence is the drop of the class
score when that slice alone is replaced by a black slice. Heatmaps explain the float32 model;
``fidelity.json`` says how often the int8 model agrees with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import cv2
import numpy as np

from edge.card import ModelCard
from edge.errors import ModelLoadError
from edge.runtime import invoke_all, load_interpreter


@dataclass(frozen=True)
class SliceHeatmap:
    group: int
    slot: int                 # position in the group
    heatmap: np.ndarray       # (H, W) float in [0, 1]
    share: float              # share of the group's evidence for the class (occlusion), in [0, 1]


class GradCam:
    """Grad-CAM with the bundle's ``explain`` models; see the module docstring."""

    def __init__(self, card: ModelCard, threads: int | None = None):
        files = card.explain
        if not files:
            raise ModelLoadError(card.path, "no 'explain' models: re-export the bundle with ctedge quantize to get heatmaps")
        self._files = (card.bundle / files["encoder"], card.bundle / files["head"])
        for path in self._files:
            if not path.is_file():
                raise ModelLoadError(path, "model file not found")
        self._threads = threads
        self.layer = files["layer"]
        self._black: np.ndarray | None = None

    @cached_property
    def encoder(self) -> Any:
        """The explain encoder, loaded on first use: a float32 interpreter holds ~260 MB, which a
        ``predict`` without heatmaps never needs."""
        return load_interpreter(self._files[0], self._threads)

    @cached_property
    def head(self) -> Any:
        return load_interpreter(self._files[1], self._threads)

    def _encode(self, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features (G, F) and last-convolution maps (G, h, w, K) of a (G, H, W) uint8 group."""
        outputs = invoke_all(self.encoder, group[..., None].astype(np.float32))
        return _by_rank(outputs, 2), _by_rank(outputs, 4)

    def _scores(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class scores (3,) and their gradients (3, G, F) for the features (G, F) of one group."""
        outputs = invoke_all(self.head, features[None])
        return _by_rank(outputs, 2)[0], _by_rank(outputs, 3)

    def black_features(self) -> np.ndarray:
        """Features of an all-black slice (what padding and occlusion put in a group)."""
        if self._black is None:
            size = self.encoder.get_input_details()[0]["shape"]
            self._black = self._encode(np.zeros(size[:3], np.uint8))[0][0]
        return self._black

    def explain_group(self, group: np.ndarray, class_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps (G, H, W) in [0, 1] for class ``class_index`` on every slice of a (G, H, W) uint8
        group, and each slice's share of the evidence (G,), summing to 1 unless no slice counts."""
        features, maps = self._encode(group)
        scores, grads = self._scores(features)
        k = maps.shape[-1]
        weights = grads[class_index, :, -k:] / (maps.shape[1] * maps.shape[2])        # (G, K)
        raw = np.maximum(np.einsum("ghwk,gk->ghw", maps, weights), 0.0)
        heat = normalise(np.stack([cv2.resize(r, group.shape[2:0:-1], interpolation=cv2.INTER_LINEAR) for r in raw]))
        drop = np.zeros(len(group))
        for i in range(len(group)):
            occluded = features.copy()
            occluded[i] = self.black_features()
            drop[i] = max(0.0, scores[class_index] - self._scores(occluded)[0][class_index])
        share = drop / drop.sum() if drop.sum() > 0 else drop
        return heat, share

    def top_slices(self, groups: list[np.ndarray], plans: list[np.ndarray], class_index: int,
                   per_group: int = 3) -> list[SliceHeatmap]:
        """The ``per_group`` real (not padding) slices of each group with the largest share."""
        found = []
        for g, (group, plan) in enumerate(zip(groups, plans)):
            heat, share = self.explain_group(group, class_index)
            real = [k for k in np.argsort(-share) if not np.isnan(plan[k])]
            found += [SliceHeatmap(g, int(k), heat[k], float(share[k])) for k in real[:per_group]]
        return found


def normalise(maps: np.ndarray) -> np.ndarray:
    """Scale each (H, W) map of a stack to a maximum of 1 (all-zero maps stay zero)."""
    peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """A BGR uint8 picture of a uint8 slice with a JET-coloured heatmap blended over it, each pixel's
    opacity ``alpha`` times its heat, so that cold regions show the slice unchanged."""
    heat = np.clip(heatmap, 0, 1)
    colour = cv2.applyColorMap(np.uint8(255 * heat), cv2.COLORMAP_JET).astype(np.float32)
    grey = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR).astype(np.float32)
    weight = (alpha * heat)[..., None]
    return np.rint(colour * weight + grey * (1 - weight)).astype(np.uint8)


def _by_rank(outputs: list[np.ndarray], rank: int) -> np.ndarray:
    return next(o for o in outputs if o.ndim == rank)
