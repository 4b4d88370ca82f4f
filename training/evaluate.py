"""Evaluation of a trained encoder + head at group level and at patient level (after voting)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge import CLASSES
from edge.card import DEMONSTRATION_BANNER
from edge.options import PipelineOptions
from training.data import StudyRecord
from edge.metrics import classification_report, format_table2
from edge.plots import plot_confusion, plot_roc
from training.train import patient_predictions, prepare_records

DEMO_NOTE = DEMONSTRATION_BANNER.lower()


def evaluate_run(encoder, head, records: list[StudyRecord], out_dir: Path, options: PipelineOptions,
                 note: str = DEMO_NOTE) -> dict:
    """Metrics, ROC and confusion plots at group and patient level; writes ``metrics.json`` to ``out_dir``.
    ``options`` are the run's (``training.train.read_run_preprocessing``), its vote threshold included.

    Returns ``{"group": report, "patient": report, "predictions": [...], "table": text}``.
    """
    predictions = patient_predictions(encoder, head, prepare_records(records, options), options.override)
    return report_predictions(predictions, out_dir, note)


def report_predictions(predictions: list[dict], out_dir: Path, note: str = DEMO_NOTE) -> dict:
    """Reports, plots and ``metrics.json`` from per-study predictions (see ``patient_predictions``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    group_true = [CLASSES.index(p["label"]) for p in predictions for _ in p["group_probs"]]
    group_prob = np.array([g for p in predictions for g in p["group_probs"]])
    patient_true = [CLASSES.index(p["label"]) for p in predictions]
    # Patient-level scores for ROC: mean group probabilities; the predicted label is the vote's.
    patient_prob = np.array([p["patient_probs"] for p in predictions])
    patient_pred = np.eye(len(CLASSES))[[CLASSES.index(p["verdict"]) for p in predictions]]
    reports = {"group": classification_report(group_true, group_prob),
               "patient": classification_report(patient_true, patient_pred)}
    reports["patient"]["roc_auc_from_mean_probabilities"] = classification_report(patient_true, patient_prob)["macro"]["roc_auc"]
    for level, y, prob in (("group", group_true, group_prob), ("patient", patient_true, patient_prob)):
        plot_roc(y, prob, out_dir / f"roc_{level}.png", title=f"ROC, {level} level", note=note)
        plot_confusion(np.array(reports[level]["confusion_matrix"]), out_dir / f"confusion_{level}.png",
                       title=f"Confusion matrix, {level} level", note=note)
    table = "\n\n".join(format_table2(reports[level], title=f"{level} level ({note})") for level in ("group", "patient"))
    (out_dir / "metrics.json").write_text(json.dumps({**reports, "predictions": predictions}, indent=2, default=float))
    return {**reports, "predictions": predictions, "table": table}
