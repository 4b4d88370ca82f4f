"""Evaluation of a trained slice model at slice level and at patient level (after the patient rule):
Table 2 layout, ROC curves with their macro average, confusion matrices, and a t-SNE map of the
penultimate (pooled) features of the labelled slices, as seeds 001 and 004 show (``ctedge evaluate``
on a slice run). Slice truth: the patient's class, or for a two-class run its slice labels CSV; patient
truth of a two-class run: ``none`` for a healthy patient, ``infection`` otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge import CLASSES
from edge.metrics import classification_report, format_table2
from edge.plots import plot_confusion, plot_roc
from edge.selection_report import read_labels
from edge.vote import PatientRule
from training.data import StudyRecord
from training.evaluate import DEMO_NOTE
from training.plots import plot_tsne
from training.slice_train import SliceTrainConfig, labelled_slices, load_slice_run
from training.train import prepare_records, read_run_preprocessing


def _features_and_probabilities(model):
    """``model`` with two outputs, in one pass: the pooled features that feed its classifier (layer ``pool``
    of ``training.archs``) and the probabilities."""
    import tf_keras as keras

    return keras.Model(model.inputs, [model.get_layer("pool").output, model.output])


def tsne(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 2-D t-SNE embedding (scikit-learn) of (N, F) features; perplexity 30, or less for few points."""
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(features) - 1) / 3)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def evaluate_slice_run(run: Path, records: list[StudyRecord], out_dir: Path, note: str = DEMO_NOTE) -> dict:
    """Reports, plots and ``metrics.json`` in ``out_dir``; returns the reports and the printable table."""
    model, config = load_slice_run(run)
    options, _ = read_run_preprocessing(run)
    classes, rule = tuple(config["classes"]), PatientRule(**config["patient_rule"])
    labels = read_labels(config["slice_labels"]) if config.get("slice_labels") else None
    truth = SliceTrainConfig(slice_labels=config.get("slice_labels"), preprocessing=options)
    slice_true, slice_prob, patient_true, patient_prob, patient_pred, predictions = [], [], [], [], [], []
    features = []
    both = _features_and_probabilities(model)
    for p in prepare_records(records, options, config.get("modality", "ct")):
        kept = p.study.images[p.study.selection.kept_indices]
        feats, probs = both.predict(kept[..., None].astype(np.float32), batch_size=32, verbose=0)
        verdict = rule.verdict(probs, classes)
        x, y, _ = labelled_slices([p], truth, labels)
        if len(x):
            slice_true += y.tolist()
            if labels is not None:          # slice labels: the labelled slices, a subset of the kept ones
                feats, probs = both.predict(x.astype(np.float32), batch_size=32, verbose=0)
            slice_prob.append(probs)
            features.append(feats)
        label = p.record.label if classes == CLASSES else classes[-1] if p.record.label == "healthy" else classes[0]
        patient_true.append(classes.index(label))
        patient_prob.append([verdict.probabilities[c] for c in classes])
        patient_pred.append(classes.index(verdict.label))
        predictions.append({"patient": p.record.patient, "label": label, "verdict": verdict.label,
                            "rule": verdict.rule, "patient_probs": patient_prob[-1]})
    slice_prob = np.concatenate(slice_prob) if slice_prob else np.zeros((0, len(classes)))  # type: ignore[assignment]
    reports = {"slice": classification_report(slice_true, slice_prob, classes),
               "patient": classification_report(patient_true, np.eye(len(classes))[patient_pred], classes)}
    reports["patient"]["roc_auc_from_mean_probabilities"] = \
        classification_report(patient_true, np.array(patient_prob), classes)["macro"]["roc_auc"]
    out_dir.mkdir(parents=True, exist_ok=True)
    for level, y, prob in (("slice", slice_true, slice_prob), ("patient", patient_true, np.array(patient_prob))):  # type: ignore[assignment]
        plot_roc(y, prob, out_dir / f"roc_{level}.png", classes, title=f"ROC, {level} level", note=note)
        plot_confusion(np.array(reports[level]["confusion_matrix"]), out_dir / f"confusion_{level}.png", classes,
                       title=f"Confusion matrix, {level} level", note=note)
    if len(slice_true) > 5:
        plot_tsne(tsne(np.concatenate(features)), slice_true, classes, out_dir / "tsne_slice.png",
                  title="t-SNE of the penultimate features, labelled slices", note=note)
    table = "\n\n".join(format_table2(reports[level], title=f"{level} level ({note})") for level in ("slice", "patient"))
    (out_dir / "metrics.json").write_text(json.dumps({**reports, "predictions": predictions}, indent=2, default=float))
    return {**reports, "predictions": predictions, "table": table}
