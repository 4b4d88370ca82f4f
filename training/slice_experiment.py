"""Slice-level infection detection against radiologists' slice labels, leave-one-patient-out.

A small demonstration that the CNN encoder learns real ground-glass and consolidation features:
each fold trains the encoder + a two-class softmax (infection / none) on the other patients'
slices and reports the ROC AUC on the held-out patient's slices. Not a clinical claim.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge.selection_report import read_labels
from training.data import StudyRecord
from edge.metrics import roc_auc
from edge.plots import plot_roc
from training.train import TrainConfig, prepare_records, train_slice_model


def labelled_slices(prepared, labels: dict[tuple[str, str], int]) -> tuple[np.ndarray, np.ndarray]:
    """Kept model-input slices of one study (N, 256, 256, 1) and their 0/1 infection labels."""
    study, name = prepared.study, prepared.record.patient
    kept = study.selection.kept_indices
    y = np.array([labels.get((name, study.volume.files[i]), -1) for i in kept])
    if (y < 0).any():
        raise ValueError(f"{name}: {(y < 0).sum()} kept slices have no label in the CSV")
    return study.images[kept][..., None], y


def run(studies: list[Path], labels_csv: Path, out_dir: Path, config: TrainConfig) -> dict:
    """Leave-one-patient-out folds; returns per-fold AUCs and writes ``slice_auc.json`` and ROC plots."""
    labels = read_labels(labels_csv)
    records = [StudyRecord(s.name, "covid", s) for s in studies]
    prepared = prepare_records(records, config.preprocessing)
    data = {p.record.patient: labelled_slices(p, labels) for p in prepared}
    folds = []
    for held_out in data:
        x = np.concatenate([data[p][0] for p in data if p != held_out])
        y = np.concatenate([data[p][1] for p in data if p != held_out])
        xv, yv = data[held_out]
        fold_dir = out_dir / f"held_out_{held_out}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        # No validation slices from the held-out patient during training: early stopping watches the training loss.
        _, model, history = train_slice_model(x, y, xv[:0], yv[:0], 2, config, fold_dir)
        scores = model.predict(xv.astype(np.float32), verbose=0)[:, 1]
        auc = roc_auc(yv, scores)
        plot_roc(yv, np.stack([1 - scores, scores], axis=1), fold_dir / "roc.png", classes=("none", "infection"),
                 title=f"Slice-level ROC, held-out patient {held_out}", note="demonstration - not a clinical claim")
        folds.append({"held_out": held_out, "n_train_slices": int(len(y)), "n_test_slices": int(len(yv)),
                      "test_infected": int(yv.sum()), "roc_auc": auc, "epochs": len(history["loss"])})
    result = {"folds": folds, "mean_roc_auc": float(np.nanmean([f["roc_auc"] for f in folds]))}
    (out_dir / "slice_auc.json").write_text(json.dumps(result, indent=2))
    return result
