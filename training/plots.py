"""Training curves and t-SNE maps (PNG); ROC and confusion plots are shared with the edge install in
``edge.plots``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from numpy.typing import ArrayLike

from edge.plots import finish


def plot_training_curves(history: dict[str, list[float]], path: Path, title: str = "Training", note: str = "") -> Path:
    """Loss and accuracy per epoch (training and, when present, validation)."""
    if "loss" not in history:
        raise ValueError("history has no 'loss' entry")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if key in history:
                ax.plot(range(1, len(history[key]) + 1), history[key], style, label=key)
        ax.set(xlabel="epoch", ylabel=metric)
        ax.legend(fontsize=8)
    return finish(fig, Path(path), title, note)


def plot_tsne(points: np.ndarray, labels: ArrayLike, classes: Sequence[str], path: Path, title: str = "t-SNE",
              note: str = "") -> Path:
    """A 2-D embedding (``points``, e.g. from ``training.slice_evaluate.tsne``) coloured by class."""
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    labels = np.asarray(labels)
    for k, name in enumerate(classes):
        chosen = labels == k
        if chosen.any():
            ax.scatter(points[chosen, 0], points[chosen, 1], s=8, alpha=0.7, label=f"{name} ({int(chosen.sum())})")
    ax.set(xticks=[], yticks=[])
    ax.legend(fontsize=8, markerscale=2)
    return finish(fig, Path(path), title, note)
