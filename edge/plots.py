"""PNG plots for people: ROC curves with their macro average, normalised confusion matrix, reliability diagram."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from numpy.typing import ArrayLike  # noqa: E402

from edge import CLASSES  # noqa: E402
from edge.metrics import macro_roc_curve, roc_auc, roc_curve  # noqa: E402


def finish(fig, path: Path, title: str, note: str) -> Path:
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc(y_true: ArrayLike, y_prob: ArrayLike, path: Path, classes: Sequence[str] = CLASSES,
             title: str = "ROC", note: str = "") -> Path:
    """One-vs-rest ROC curve per class and their macro average, AUC in the legend."""
    y_true, y_prob = np.asarray(y_true, int), np.asarray(y_prob, float)
    if y_prob.shape != (len(y_true), len(classes)):
        raise ValueError(f"probabilities of shape {y_prob.shape} do not match {len(y_true)} labels x {len(classes)} classes")
    fig, ax = plt.subplots(figsize=(5, 5))
    aucs = []
    for k, name in enumerate(classes):
        auc = roc_auc(y_true == k, y_prob[:, k])
        if np.isnan(auc):
            continue
        aucs.append(auc)
        fpr, tpr, _ = roc_curve(y_true == k, y_prob[:, k])
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    if aucs:
        ax.plot(*macro_roc_curve(y_true, y_prob), "k:", lw=2.2, label=f"macro average (AUC {np.mean(aucs):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower right", fontsize=8)
    return finish(fig, Path(path), title, note)


def plot_confusion(cm: np.ndarray, path: Path, classes: Sequence[str] = CLASSES, title: str = "Confusion matrix",
                   note: str = "") -> Path:
    """Row-normalised confusion matrix with counts and percentages."""
    cm = np.asarray(cm)
    if cm.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion matrix of shape {cm.shape} does not match {len(classes)} classes")
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=9)
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true")
    ax.set_xticklabels(classes, rotation=20)
    ax.set_yticklabels(classes)
    return finish(fig, Path(path), title, note)


def plot_reliability(calibration: dict, path: Path, title: str = "Reliability", note: str = "") -> Path:
    """Reliability diagram of ``edge.metrics.reliability``: accuracy against mean confidence per bin
    (marker area = number of studies), the diagonal of perfect calibration, ECE in the legend."""
    bins = calibration["bins"]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    width = 1 / calibration["n_bins"]
    ax.bar([b["lower"] for b in bins], [b["accuracy"] for b in bins], width=width, align="edge",
           color="#9ecae1", edgecolor="#3182bd", label="accuracy per confidence bin")
    ax.scatter([b["confidence"] for b in bins], [b["accuracy"] for b in bins], s=[30 + 20 * b["n"] for b in bins],
               color="#08519c", zorder=3, label=f"mean confidence (ECE {calibration['ece']:.3f})")
    for b in bins:
        ax.annotate(f"n={b['n']}", (b["lower"] + width / 2, b["accuracy"]), textcoords="offset points",
                    xytext=(0, 4), ha="center", fontsize=7)
    ax.set(xlabel="predicted probability of the top class", ylabel="fraction correct", xlim=(0, 1), ylim=(0, 1.08))
    ax.legend(loc="upper left", fontsize=8)
    return finish(fig, Path(path), title, note)
