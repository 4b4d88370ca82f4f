"""Classification metrics (NumPy only): per class one-vs-rest, macro averages, ROC AUC, confusion."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge import CLASSES

RATIOS = ("accuracy", "sensitivity", "specificity", "precision", "npv", "f1", "roc_auc")


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int = 3) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    cm = np.zeros((n_classes, n_classes), int)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def roc_curve(y_true: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct score threshold (descending), from (0, 0)."""
    y, s = np.asarray(y_true, bool), np.asarray(scores, float)
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    pos, neg = max(y.sum(), 1), max((~y).sum(), 1)
    return np.r_[0.0, fp / neg], np.r_[0.0, tp / pos], np.r_[np.inf, s[last]]


def roc_auc(y_true: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve (ties count one half); NaN without positives or without negatives."""
    y = np.asarray(y_true, bool)
    if y.all() or not y.any():
        return float("nan")
    fpr, tpr, _ = roc_curve(y, scores)
    return float(np.trapezoid(tpr, fpr))


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def classification_report(y_true: Sequence[int], y_prob: np.ndarray, classes: Sequence[str] = CLASSES) -> dict:
    """Per class (one-vs-rest): accuracy, sensitivity, specificity, precision (PPV), NPV, F1, ROC AUC and
    support; their macro averages; overall accuracy; the confusion matrix. Ratios with a zero
    denominator are 0.0; AUC is NaN for a class without positives or negatives."""
    y_true = np.asarray(y_true, int)
    y_prob = np.asarray(y_prob, float)
    if y_prob.shape != (len(y_true), len(classes)):
        raise ValueError(f"probabilities of shape {y_prob.shape} do not match {len(y_true)} labels x {len(classes)} classes")
    y_pred = y_prob.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, len(classes))
    total = cm.sum()
    per_class = {}
    for k, name in enumerate(classes):
        tp = cm[k, k]
        fn, fp = cm[k].sum() - tp, cm[:, k].sum() - tp
        tn = total - tp - fn - fp
        sens, prec = _ratio(tp, tp + fn), _ratio(tp, tp + fp)
        per_class[name] = {
            "accuracy": _ratio(tp + tn, total), "sensitivity": sens, "specificity": _ratio(tn, tn + fp),
            "precision": prec, "npv": _ratio(tn, tn + fn), "f1": _ratio(2 * prec * sens, prec + sens),
            "roc_auc": roc_auc(y_true == k, y_prob[:, k]), "support": int(cm[k].sum()),
        }
    macro = {m: float(np.nanmean([per_class[c][m] for c in classes])) if not all(
        np.isnan(per_class[c][m]) for c in classes) else float("nan") for m in RATIOS}
    return {"classes": list(classes), "per_class": per_class, "macro": macro,
            "accuracy": _ratio(np.trace(cm), total), "confusion_matrix": cm.tolist(), "n": int(total)}


def format_table2(report: dict, title: str = "") -> str:
    """Per-class and average Accuracy, Specificity, Sensitivity and F1 (in %), laid out like Table 2
    of the seed paper so results can be set beside the published figures."""
    head = f"{'Class':<18}{'Accuracy':>10}{'Specificity':>13}{'Sensitivity':>13}{'F1-score':>10}"
    rows = [title, head, "-" * len(head)] if title else [head, "-" * len(head)]
    entries = [(c, report["per_class"][c]) for c in report["classes"]] + [("Average", report["macro"])]
    for name, m in entries:
        rows.append(f"{name:<18}{100 * m['accuracy']:>10.2f}{100 * m['specificity']:>13.2f}"
                    f"{100 * m['sensitivity']:>13.2f}{100 * m['f1']:>10.2f}")
    return "\n".join(rows)
