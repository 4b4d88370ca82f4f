"""The per-class report of an X-ray run (NumPy only): sensitivity, specificity, F1 and support of each
class on every validation fold, their mean and spread across folds, and on the hold-out with patient
bootstrap 95% intervals; the confusion matrices. Written as report.json and report.md in the run folder.

The unit is one radiograph (one study); a metric whose denominator is zero (the sensitivity of a class
with no radiograph in a fold) is undefined (null) and left out of the spread."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge.metrics import bootstrap_table2, confusion_matrix, one_vs_rest, spread

METRICS = ("sensitivity", "specificity", "f1")


def _defined(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def class_metrics(predictions: Sequence[dict], classes: Sequence[str]) -> dict:
    """Per class (one-vs-rest) sensitivity, specificity, F1 and support, their macro averages (over the
    classes that define them), accuracy and the confusion matrix (rows true, columns predicted) of
    predictions ``{"label": true class, "verdict": predicted class, ...}``."""
    index = {c: k for k, c in enumerate(classes)}
    cm = confusion_matrix([index[p["label"]] for p in predictions], [index[p["verdict"]] for p in predictions], len(classes))
    ovr = one_vs_rest(cm)
    per_class = {c: {m: _defined(ovr[m][k]) for m in METRICS} | {"support": int(cm[k].sum())} for k, c in enumerate(classes)}
    macro = {m: _defined(spread(ovr[m])["mean"]) for m in METRICS}
    return {"n": int(cm.sum()), "accuracy": _defined(np.trace(cm) / cm.sum()) if cm.sum() else None,
            "per_class": per_class, "macro": macro, "confusion_matrix": cm.tolist()}


def _spread(values: Sequence[float | None]) -> dict:
    return {k: _defined(v) if isinstance(v, float) else v
            for k, v in spread([np.nan if v is None else v for v in values]).items()}


def build_report(folds: Sequence[Sequence[dict]], holdout: Sequence[dict], classes: Sequence[str], final: dict,
                 note: str, seed: int = 0) -> dict:
    """The report of per-fold validation predictions and hold-out predictions (each with ``patient``,
    ``label`` and ``verdict``); ``final`` says which model the hold-out was predicted with and why."""
    per_fold = [class_metrics(f, classes) for f in folds]
    summary = {"per_class": {c: {m: _spread([r["per_class"][c][m] for r in per_fold]) for m in METRICS}
                             | {"support": sum(r["per_class"][c]["support"] for r in per_fold)} for c in classes},
               "macro": {m: _spread([r["macro"][m] for r in per_fold]) for m in METRICS}}
    held = None
    if holdout:
        held = class_metrics(holdout, classes)
        index = {c: k for k, c in enumerate(classes)}
        boot = bootstrap_table2([index[p["label"]] for p in holdout], [index[p["verdict"]] for p in holdout],
                                [p["patient"] for p in holdout], classes, seed=seed)
        held["bootstrap_95"] = {"per_class": {c: {m: boot["per_class"][c][m] for m in METRICS} for c in classes},
                                "macro": {m: boot["macro"][m] for m in METRICS}, "n_boot": boot["n_boot"],
                                "resampled": "patients within each true class"}
    return {"note": note, "classes": list(classes), "unit": "one radiograph (study)", "final_model": final,
            "folds": per_fold, "folds_summary": summary, "holdout": held}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _mean_sd(s: dict) -> str:
    if s["mean"] is None:
        return "n/a"
    sd = "" if s["sd"] is None else f" ± {_pct(s['sd'])}"
    return f"{_pct(s['mean'])}{sd} [{_pct(s['min'])}-{_pct(s['max'])}]"


def _with_interval(x: float | None, interval: list[float] | None) -> str:
    return _pct(x) + (f" ({_pct(interval[0])}-{_pct(interval[1])})" if interval else "")


def _confusion(cm: list[list[int]], classes: Sequence[str]) -> list[str]:
    rows = ["| true \\ predicted | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    return rows + [f"| {c} | " + " | ".join(map(str, row)) + " |" for c, row in zip(classes, cm)]


def format_markdown(report: dict) -> str:
    """report.md: the fold summary, the hold-out table and the confusion matrices, in percent."""
    classes, summary, k = report["classes"], report["folds_summary"], len(report["folds"])
    head = "| Class | Sensitivity | Specificity | F1 | Support |\n|---|---|---|---|---|"
    lines = [f"# Per-class report ({report['note']})", "",
             f"Unit: {report['unit']}. Final model: {report['final_model']['description']}.", "",
             f"## Validation folds: mean ± sd [min-max] across {k} fold(s), in %", "",
             "Each fold's validation images chose its checkpoint, early stopping and learning-rate cuts: optimistic.",
             "", head]
    for c in classes:
        s = summary["per_class"][c]
        lines.append(f"| {c} | " + " | ".join(_mean_sd(s[m]) for m in METRICS) + f" | {s['support']} |")
    lines.append("| macro average | " + " | ".join(_mean_sd(summary["macro"][m]) for m in METRICS) + " | |")
    if report["folds"]:
        pooled = np.sum([f["confusion_matrix"] for f in report["folds"]], axis=0).tolist()
        lines += ["", "Confusion matrix, all validation folds pooled:", "", *_confusion(pooled, classes), ""]
    else:
        lines += ["", "No validation images (no class has 2+ patients outside the hold-out).", ""]
    held = report["holdout"]
    if held is None:
        return "\n".join(lines + ["## Hold-out", "", "No hold-out patients (--test-fraction 0, or no class with 3+ patients).", ""])
    boot = held["bootstrap_95"]
    lines += [(f"## Hold-out: {held['n']} radiograph(s), never used for fitting, early stopping, learning-rate "
               f"cuts or model choice; in % (patient bootstrap 95% interval, {boot['n_boot']} draws)"), "", head]
    for c in classes:
        m = held["per_class"][c]
        lines.append(f"| {c} | " + " | ".join(_with_interval(m[x], boot["per_class"][c][x]) for x in METRICS)
                     + f" | {m['support']} |")
    lines.append("| macro average | " + " | ".join(_with_interval(held["macro"][x], boot["macro"][x]) for x in METRICS) + " | |")
    lines += ["", f"Accuracy {_pct(held['accuracy'])}%.", "", "Confusion matrix:", "",
              *_confusion(held["confusion_matrix"], classes), ""]
    return "\n".join(lines)


def write_report(report: dict, run_dir: Path) -> str:
    """Write report.json and report.md to ``run_dir``; returns the markdown."""
    text = format_markdown(report)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    (run_dir / "report.md").write_text(text)
    return text
