"""Training curves (PNG); ROC and confusion plots are shared with the edge install in ``edge.plots``."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

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
