"""Labelled studies and patient-wise splits. A patient never appears in two parts of a split."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge import CLASSES
from edge.errors import UserError


class DatasetError(UserError):
    """A dataset folder or CSV that cannot be used; the message names the file or row."""


@dataclass(frozen=True)
class StudyRecord:
    patient: str
    label: str
    path: Path


def discover(source: str | Path) -> list[StudyRecord]:
    """Studies from a folder tree ``<root>/<class>/<patient>/...`` or a CSV ``patient,class,path``
    (paths relative to the CSV's folder). Every class must be one of CLASSES."""
    source = Path(source)
    records = _from_csv(source) if source.suffix.lower() == ".csv" else _from_tree(source)
    classes: dict[str, str] = {}
    for r in records:
        if classes.setdefault(r.patient, r.label) != r.label:
            raise DatasetError(source, f"patient {r.patient!r} is listed under {classes[r.patient]!r} and {r.label!r}")
    if not records:
        raise DatasetError(source, "no studies found (expected <root>/<class>/<patient>/... or a CSV patient,class,path)")
    return sorted(records, key=lambda r: (r.label, r.patient, str(r.path)))


def _from_tree(root: Path) -> list[StudyRecord]:
    if not root.is_dir():
        raise DatasetError(root, "not a folder or a .csv file")
    records = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if class_dir.name not in CLASSES:
            raise DatasetError(class_dir, f"unknown class folder; expected one of {', '.join(CLASSES)}")
        records += [StudyRecord(p.name, class_dir.name, p) for p in sorted(class_dir.iterdir())
                    if p.is_dir() and not p.name.startswith(".")]
    return records


def _from_csv(path: Path) -> list[StudyRecord]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
            columns = set(rows[0]) if rows else set()
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(path, f"cannot be read as a CSV ({exc})") from exc
    missing = {"patient", "class", "path"} - columns
    if missing:
        raise DatasetError(path, f"missing column(s) {', '.join(sorted(missing))} (expected patient,class,path)")
    records = []
    for row_number, row in enumerate(rows, start=2):
        if row["class"] not in CLASSES:
            raise DatasetError(path, f"row {row_number}: unknown class {row['class']!r}; expected one of {', '.join(CLASSES)}")
        if not row["path"]:
            raise DatasetError(path, f"row {row_number}: empty path")
        study = Path(row["path"]) if Path(row["path"]).is_absolute() else path.parent / row["path"]
        if not study.exists():
            raise DatasetError(path, f"row {row_number}: {study} does not exist")
        records.append(StudyRecord(row["patient"], row["class"], study))
    return records


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
