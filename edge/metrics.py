"""Classification metrics (NumPy only): per class one-vs-rest, macro averages, ROC AUC, confusion,
patient bootstrap confidence intervals and calibration. Shared by `ctedge validate` and training."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import betaincinv

from edge import CLASSES

RATIOS = ("accuracy", "sensitivity", "specificity", "precision", "npv", "f1", "roc_auc")


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int = 3) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    cm = np.zeros((n_classes, n_classes), int)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def roc_curve(y_true: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct score threshold (descending), from (0, 0)."""
    y, s = np.asarray(y_true, bool), np.asarray(scores, float)
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    pos, neg = max(y.sum(), 1), max((~y).sum(), 1)
    return np.r_[0.0, fp / neg], np.r_[0.0, tp / pos], np.r_[np.inf, s[last]]


def roc_auc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve (ties count one half); NaN without positives or without negatives."""
    y = np.asarray(y_true, bool)
    if y.all() or not y.any():
        return float("nan")
    fpr, tpr, _ = roc_curve(y, scores)
    return float(np.trapezoid(tpr, fpr))


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def classification_report(y_true: ArrayLike, y_prob: ArrayLike, classes: Sequence[str] = CLASSES) -> dict:
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


TABLE2 = ("accuracy", "specificity", "sensitivity", "f1")


def one_vs_rest(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class (one-vs-rest) accuracy, specificity, sensitivity and F1 of a confusion matrix, as
    arrays over classes; NaN where a denominator is zero (e.g. sensitivity of a class without patients)."""
    cm = np.asarray(cm, float)
    tp = np.diag(cm)
    fn, fp = cm.sum(axis=1) - tp, cm.sum(axis=0) - tp
    tn = cm.sum() - tp - fn - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"accuracy": (tp + tn) / cm.sum(), "specificity": tn / (tn + fp), "sensitivity": tp / (tp + fn),
                "f1": 2 * tp / (2 * tp + fp + fn)}


def bootstrap_table2(y_true: ArrayLike, y_pred: ArrayLike, patients: ArrayLike, classes: Sequence[str] = CLASSES,
                     n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Percentile bootstrap confidence intervals of the Table 2 metrics, per class and macro average.

    Patients (with all their studies) are drawn with replacement within each true class, so every
    replicate has as many patients of each class as the data. Returns ``{"per_class": {class: {metric:
    [low, high] or None}}, "macro": {...}, "n_boot", "level"}``; None where no replicate defines the metric.
    """
    y_true, y_pred, patients = np.asarray(y_true, int), np.asarray(y_pred, int), np.asarray(patients)
    rng = np.random.default_rng(seed)
    studies_of = {p: np.flatnonzero(patients == p) for p in dict.fromkeys(patients.tolist())}
    by_class = [[p for p, idx in studies_of.items() if y_true[idx[0]] == k] for k in range(len(classes))]
    samples = {m: np.full((n_boot, len(classes)), np.nan) for m in TABLE2}
    for b in range(n_boot):
        drawn = [studies_of[ps[i]] for ps in by_class if ps for i in rng.integers(len(ps), size=len(ps))]
        idx = np.concatenate(drawn)
        for m, values in one_vs_rest(confusion_matrix(y_true[idx], y_pred[idx], len(classes))).items():
            samples[m][b] = values
    tail = 100 * (1 - level) / 2

    def interval(x: np.ndarray) -> list[float] | None:
        x = x[~np.isnan(x)]
        return [float(np.percentile(x, tail)), float(np.percentile(x, 100 - tail))] if len(x) else None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a replicate where no class defines the metric
        macro = {m: interval(np.nanmean(s, axis=1)) for m, s in samples.items()}
    return {"per_class": {c: {m: interval(samples[m][:, k]) for m in TABLE2} for k, c in enumerate(classes)},
            "macro": macro, "n_boot": n_boot, "level": level}


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial confidence interval of k successes in n trials."""
    tail = (1 - level) / 2
    lo = float(betaincinv(k, n - k + 1, tail)) if k else 0.0
    hi = float(betaincinv(k + 1, n - k, 1 - tail)) if k < n else 1.0
    return lo, hi


def reliability(y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 10) -> dict:
    """Calibration of the top-class probability: equal-width confidence bins with their mean
    confidence and accuracy, and the expected calibration error ECE = sum_b n_b / N |accuracy_b - confidence_b|."""
    y_true, y_prob = np.asarray(y_true, int), np.asarray(y_prob, float)
    confidence = y_prob.max(axis=1)
    correct = y_prob.argmax(axis=1) == y_true
    bin_of = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        inside = bin_of == b
        if inside.any():
            conf, acc = float(confidence[inside].mean()), float(correct[inside].mean())
            ece += inside.sum() / len(y_true) * abs(acc - conf)
            bins.append({"lower": b / n_bins, "upper": (b + 1) / n_bins, "n": int(inside.sum()),
                         "confidence": conf, "accuracy": acc})
    return {"bins": bins, "ece": float(ece), "n_bins": n_bins}


def macro_roc_curve(y_true: ArrayLike, y_prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Macro-average ROC curve: the one-vs-rest curves of the classes with positives and negatives,
    averaged vertically on the union of their false-positive rates."""
    y_true, y_prob = np.asarray(y_true, int), np.asarray(y_prob, float)
    curves = [roc_curve(y_true == k, y_prob[:, k])[:2] for k in range(y_prob.shape[1])
              if (y_true == k).any() and (y_true != k).any()]
    if not curves:
        return np.zeros(0), np.zeros(0)
    grid = np.unique(np.concatenate([fpr for fpr, _ in curves]))
    return grid, np.mean([np.interp(grid, fpr, tpr) for fpr, tpr in curves], axis=0)


def spread(values: ArrayLike) -> dict:
    """Mean, standard deviation (ddof 1), minimum and maximum of the values that are not NaN, and how many there are."""
    x = np.asarray(values, float)
    x = x[~np.isnan(x)]
    nan = float("nan")
    return {"mean": float(x.mean()) if len(x) else nan, "sd": float(x.std(ddof=1)) if len(x) > 1 else nan,
            "min": float(x.min()) if len(x) else nan, "max": float(x.max()) if len(x) else nan, "folds": len(x)}


def mean_and_spread(reports: Sequence[dict], metrics: Sequence[str] = ("accuracy", "sensitivity", "specificity", "f1", "roc_auc")) -> dict:
    """The :func:`spread` across folds of each macro-average metric of ``classification_report`` outputs;
    NaN folds are left out."""
    return {m: spread([r["macro"][m] for r in reports]) for m in metrics}
