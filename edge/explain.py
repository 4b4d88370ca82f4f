"""Grad-CAM on the edge runtime from float32 TFLite models, no TensorFlow: :class:`GradCam` for
group models, :class:`SliceGradCam` for slice models. Both give the heatmaps of the slices that
drove a study's verdict (``explain``) and say how (``method``).

Group models.
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

Slice models. The bundle's ``explain`` names one float32 ``model`` with two outputs: the
activations of the Grad-CAM layer (1, h, w, K) and Grad-CAM's channel weights (C, K), the spatial
means of each pre-softmax class score's gradient with respect to those activations, computed by
the converted backward graph (``quantize.convert.export_slice_explain``). The heatmap is
ReLU(sum_k w_k A_k), as ``training.gradcam.gradcam_slice`` computes it with TensorFlow.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import cv2
import numpy as np

from edge.card import ModelCard
from edge.errors import ModelLoadError
from edge.runtime import invoke_all, load_interpreter
from edge.stages import StudyResult


MAX_PARALLEL = 2
"""At most this many copies of a group model's explain head run a group's occlusions at once: each
further copy adds ~32 MB to the peak memory of a study with heatmaps (measured, docs/benchmarks.md)."""


@dataclass(frozen=True)
class SliceHeatmap:
    heatmap: np.ndarray                       # (H, W) float in [0, 1]
    share: float                              # the slice's part of the evidence for the class, in [0, 1]
    sources: tuple[tuple[int, float], ...]    # volume indices and weights of the slice(s) shown
    group: int | None = None                  # the group it explains (group models)


class GradCam:
    """Grad-CAM of group models with the bundle's ``explain`` models; see the module docstring."""

    method = ("Grad-CAM on the last convolution of the float32 CNN encoder, for the verdict class, computed on "
              "the edge runtime; slices ranked by how much the class score drops when the slice is blacked out")

    def __init__(self, card: ModelCard, threads: int | None = None, parallel: int | None = None):
        files = card.explain
        if not files:
            raise ModelLoadError(card.path, "no 'explain' models: re-export the bundle with ctedge quantize to get heatmaps")
        self._files = (card.bundle / files["encoder"], card.bundle / files["head"])
        for path in self._files:
            if not path.is_file():
                raise ModelLoadError(path, "model file not found")
        self._threads = threads
        self._parallel = max(1, parallel or min(os.cpu_count() or 1, MAX_PARALLEL))
        self.layer = files["layer"]
        self._black: np.ndarray | None = None

    @cached_property
    def encoder(self) -> Any:
        """The explain encoder (float32), loaded on first use with a batch of one slice (as the
        classifier's float variants, ``edge.infer.ENCODER_BATCH``)."""
        return load_interpreter(self._files[0], self._threads, batch=1)

    @cached_property
    def heads(self) -> list[Any]:
        """Copies of the explain head (the biLSTM head and its gradient), one per core up to
        ``parallel``, loaded on first use with TFLite's own kernels: measured 4x faster than XNNPACK
        per group and 7 instead of 148 MB of weights (it has ~800 FULLY_CONNECTED operators, whose
        weights XNNPACK packs one by one). A group's occlusions run on them in parallel threads (the
        runtime lets go of the GIL while it runs: 1.7-1.9x on 2 cores)."""
        return [load_interpreter(self._files[1], self._threads, xnnpack=False) for _ in range(self._parallel)]

    def _encode(self, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features (G, F) and last-convolution maps (G, h, w, K) of a (G, H, W) uint8 group."""
        outputs = invoke_all(self.encoder, group[..., None])
        return _by_rank(outputs, 2), _by_rank(outputs, 4)

    def _scores(self, features: np.ndarray, copy: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Class scores (3,) and their gradients (3, G, F) for the features (G, F) of one group, on
        head ``copy`` (one thread at a time per copy)."""
        outputs = invoke_all(self.heads[copy], features[None])
        return _by_rank(outputs, 2)[0], _by_rank(outputs, 3)

    def black_features(self) -> np.ndarray:
        """Features of an all-black slice (what padding and occlusion put in a group)."""
        if self._black is None:
            size = self.encoder.get_input_details()[0]["shape"]
            self._black = self._encode(np.zeros(size[:3], np.uint8))[0][0]
        return self._black

    def evidence(self, group: np.ndarray, class_index: int) -> tuple[np.ndarray, np.ndarray]:
        """For class ``class_index`` on every slice of a (G, H, W) uint8 group: the Grad-CAM maps at
        the last convolution's resolution (G, h, w), and each slice's share of the evidence (G,),
        summing to 1 unless no slice counts."""
        features, maps = self._encode(group)
        scores, grads = self._scores(features)
        k = maps.shape[-1]
        weights = grads[class_index, :, -k:] / (maps.shape[1] * maps.shape[2])        # (G, K)
        raw = np.maximum(np.einsum("ghwk,gk->ghw", maps, weights), 0.0)
        black = self.black_features()

        def drops(copy: int) -> list[tuple[int, float]]:
            found = []
            for i in range(copy, len(group), len(self.heads)):
                occluded = features.copy()
                occluded[i] = black
                found.append((i, max(0.0, scores[class_index] - self._scores(occluded, copy)[0][class_index])))
            return found

        drop = np.zeros(len(group))
        with ThreadPoolExecutor(len(self.heads)) as pool:
            for i, d in (pair for part in pool.map(drops, range(len(self.heads))) for pair in part):
                drop[i] = d
        share = drop / drop.sum() if drop.sum() > 0 else drop
        return raw, share

    def explain_group(self, group: np.ndarray, class_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps (G, H, W) in [0, 1] for class ``class_index`` on every slice of a (G, H, W) uint8
        group, and each slice's share of the evidence (G,) (see ``evidence``)."""
        raw, share = self.evidence(group, class_index)
        return heatmaps(raw, group.shape[1:]), share

    def explain(self, result: StudyResult, per_group: int = 3) -> list[SliceHeatmap]:
        """For the verdict class, the ``per_group`` real (not padding) slices of each group that voted
        for it (its most probable class is the verdict's) with the largest share (only theirs are
        resized to heatmaps): a group that called another class cannot explain the verdict."""
        class_index = result.classes.index(result.verdict.label)
        kept = result.selection.kept_indices
        found = []
        for group, scored in zip(result.prepared.groups(), result.groups):
            if scored.label != result.verdict.label:
                continue
            raw, share = self.evidence(group, class_index)
            chosen = [int(k) for k in np.argsort(-share) if not np.isnan(scored.plan[k])][:per_group]
            found += [SliceHeatmap(heat, float(share[k]), tuple(scored.slot_sources(k, kept)), scored.index)
                      for k, heat in zip(chosen, heatmaps(raw[chosen], group.shape[1:]))]
        return found


class SliceGradCam:
    """Grad-CAM of slice and image (radiograph) models with the bundle's ``explain`` model; see the
    module docstring."""

    METHODS: ClassVar[dict[str, str]] = {
        "slice": "Grad-CAM on the last convolutional features of the float32 slice model, for the verdict class, "
                 "computed on the edge runtime; the slices shown are those the model gives the highest probability "
                 "of that class (share = that probability)",
        "image": "Grad-CAM on the last convolutional features of the float32 image model, for the verdict class, "
                 "computed on the edge runtime over the whole radiograph",
    }
    """How the heatmaps of each kind were made (shown with them)."""

    def __init__(self, card: ModelCard, threads: int | None = None):
        if not card.explain:
            raise ModelLoadError(card.path, "no 'explain' model: re-export the bundle with ctedge quantize to get heatmaps")
        self.method = self.METHODS[card.kind]
        self.model = load_interpreter(card.bundle / card.explain["model"], threads)
        self.layer = card.explain["layer"]

    def explain_slice(self, image: np.ndarray, class_index: int) -> np.ndarray:
        """The (H, W) heatmap in [0, 1] of class ``class_index`` on one (H, W) uint8 slice."""
        outputs = invoke_all(self.model, image[None, ..., None].astype(np.float32))
        maps, weights = _by_rank(outputs, 4)[0], _by_rank(outputs, 2)
        raw = np.maximum(np.einsum("hwk,k->hw", maps, weights[class_index]), 0.0)
        return heatmaps(raw[None], image.shape)[0]

    def explain(self, result: StudyResult, top: int = 3) -> list[SliceHeatmap]:
        """Heatmaps of the ``top`` slices with the highest probability of the verdict class among the
        slices that voted for it (their most probable class is the verdict's)."""
        class_index = result.classes.index(result.verdict.label)
        voters = [s for s in result.slices if int(np.argmax(s.probabilities)) == class_index]
        ranked = sorted(voters, key=lambda s: -s.probabilities[class_index])[:top]
        return [SliceHeatmap(self.explain_slice(result.images[s.index], class_index), float(s.probabilities[class_index]),
                             ((s.index, 1.0),)) for s in ranked]


def heatmaps(raw: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Grad-CAM maps (n, h, w) resized to (n, *size) and each scaled to a maximum of 1."""
    return normalise(np.stack([cv2.resize(r, size[::-1], interpolation=cv2.INTER_LINEAR) for r in raw]))


def normalise(maps: np.ndarray) -> np.ndarray:
    """Scale each (H, W) map of a stack to a maximum of 1 (all-zero maps stay zero)."""
    peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """A BGR uint8 picture of a uint8 slice with a JET-coloured heatmap blended over it, each pixel's
    opacity ``alpha`` times its heat, so that cold regions show the slice unchanged."""
    heat = np.clip(heatmap, 0, 1)
    colour = cv2.applyColorMap((255 * heat).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float32)
    grey = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR).astype(np.float32)
    weight = (alpha * heat)[..., None]
    return np.rint(colour * weight + grey * (1 - weight)).astype(np.uint8)


def _by_rank(outputs: list[np.ndarray], rank: int) -> np.ndarray:
    return next(o for o in outputs if o.ndim == rank)
