"""Labelled studies and patient-wise splits. A patient never appears in two parts of a split."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from edge import CLASSES
from edge.dataset import DatasetError, StudyRecord, discover

__all__ = ["DatasetError", "StudyRecord", "discover", "patient_split", "patient_kfold", "class_weights", "one_hot"]


def _patients_by_class(records: Sequence[StudyRecord], seed: int) -> dict[str, list[str]]:
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[str]] = defaultdict(list)
    for r in records:
        if r.patient not in by_class[r.label]:
            by_class[r.label].append(r.patient)
    return {c: [p for p in rng.permutation(sorted(ps)).tolist()] for c, ps in sorted(by_class.items())}


def patient_split(records: Sequence[StudyRecord], val_fraction: float = 0.2, test_fraction: float = 0.0,
                  seed: int = 0) -> dict[str, list[StudyRecord]]:
    """Stratified split by patient into ``train``/``val``/``test``. A class with a single patient
    goes to train; otherwise train and (if asked) val each get at least one of its patients."""
    parts: dict[str, set[str]] = {"train": set(), "val": set(), "test": set()}
    for patients in _patients_by_class(records, seed).values():
        n = len(patients)
        n_test = int(round(n * test_fraction)) if n >= 3 else 0
        n_val = int(round(n * val_fraction)) if n >= 2 else 0
        if val_fraction > 0 and n >= 2:
            n_val = max(n_val, 1)
        n_val = min(n_val, n - n_test - 1)
        parts["test"].update(patients[:n_test])
        parts["val"].update(patients[n_test:n_test + n_val])
        parts["train"].update(patients[n_test + n_val:])
    return {k: [r for r in records if r.patient in ps] for k, ps in parts.items()}


def patient_kfold(records: Sequence[StudyRecord], k: int = 5, seed: int = 0) -> list[tuple[list[StudyRecord], list[StudyRecord]]]:
    """k (train, validation) folds by patient, each class's patients dealt round-robin over the folds."""
    n_patients = len({r.patient for r in records})
    if not 2 <= k <= n_patients:
        raise DatasetError("--folds", f"k={k} folds need 2 <= k <= number of patients ({n_patients})")
    fold_of: dict[str, int] = {}
    offset = 0
    for patients in _patients_by_class(records, seed).values():
        for i, p in enumerate(patients):
            fold_of[p] = (offset + i) % k
        offset += len(patients)
    return [([r for r in records if fold_of[r.patient] != f], [r for r in records if fold_of[r.patient] == f])
            for f in range(k)]


def class_weights(labels: Sequence[str]) -> dict[int, float]:
    """Balanced weights n / (n_classes_present * count), keyed by class index in CLASSES."""
    counts = {c: list(labels).count(c) for c in CLASSES if c in labels}
    return {CLASSES.index(c): len(labels) / (len(counts) * n) for c, n in counts.items()}


def one_hot(labels: Sequence[str]) -> np.ndarray:
    """(n, 3) float32 one-hot rows in CLASSES order."""
    return np.eye(len(CLASSES), dtype=np.float32)[[CLASSES.index(label) for label in labels]]
