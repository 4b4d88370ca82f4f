"""X-ray training with k-fold cross-validation and an unseen hold-out (the protocol of Luiz et al.).

Patients are split by patient, seeded and stratified by class (``training.data``): ``test_fraction`` of
each class (classes with 3+ patients) into the hold-out, the rest into ``folds`` folds
(``patient_kfold``), or with ``folds`` 0 into one train/validation split (``val_fraction``). Each fold
trains in OUT/fold<i>/ (``train_slice_run``: trunk frozen and new head first, then fine-tuning; early
stopping, the recipe's ReduceLROnPlateau and the kept epoch watch its validation fold) and is evaluated
on its validation fold in OUT/fold<i>/evaluation/. The final model is chosen by :data:`SELECTION`,
copied to OUT (what ``ctedge quantize OUT`` converts) and evaluated once on the hold-out in
OUT/holdout/. The hold-out patients reach no fold. OUT/split.json records the split; report.json and
report.md (``training.xray_report``) the per-class results.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from edge.card import DEMONSTRATION_BANNER, PLACEHOLDER_BANNER
from training.data import StudyRecord, patient_kfold, patient_split
from training.slice_evaluate import evaluate_slice_run
from training.slice_train import SliceTrainConfig, train_slice_run
from training.xray_report import build_report, class_metrics, write_report

log = logging.getLogger(__name__)

SELECTION = "the fold model with the highest validation-fold macro F1 (ties: the lower validation loss, then the first fold)"

Folds = list[tuple[list[StudyRecord], list[StudyRecord]]]


@dataclass
class XrayRun:
    split: dict             # {"holdout": [patients], "folds": [{"train": [patients], "val": [patients]}]}
    final_fold: int
    report: dict
    text: str               # report.md


def split_patients(records: list[StudyRecord], config: SliceTrainConfig) -> tuple[list[StudyRecord], Folds]:
    """The hold-out studies and the (train, validation) folds of the other patients."""
    if config.folds:
        parts = patient_split(records, val_fraction=0.0, test_fraction=config.test_fraction, seed=config.seed)
        return parts["test"], patient_kfold(parts["train"], config.folds, config.seed)
    parts = patient_split(records, config.val_fraction, config.test_fraction, config.seed)
    return parts["test"], [(parts["train"], parts["val"])]


def _patients(records: list[StudyRecord]) -> list[str]:
    return list(dict.fromkeys(r.patient for r in records))


def _note(config: SliceTrainConfig, n_records: int) -> str:
    if config.epochs + config.freeze_epochs == 0:
        return PLACEHOLDER_BANNER.lower()
    return DEMONSTRATION_BANNER.lower() if n_records < 30 else "not validated on a local prospective set"


def train_xray_run(records: list[StudyRecord], out: Path, config: SliceTrainConfig) -> XrayRun:
    """Train and evaluate every fold, choose the final model, evaluate it on the hold-out, write the report."""
    holdout, folds = split_patients(records, config)
    if config.test_fraction and not holdout:
        log.warning("no hold-out patients: --test-fraction needs classes with at least 3 patients")
    split = {"holdout": _patients(holdout), "folds": [{"train": _patients(t), "val": _patients(v)} for t, v in folds]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "split.json").write_text(json.dumps(split, indent=2))
    note = _note(config, len(records))
    fold_predictions, scores = [], []
    for i, (train, val) in enumerate(folds):
        run = train_slice_run(train + val, out / f"fold{i}", config, {"train": train, "val": val})
        predictions = evaluate_slice_run(out / f"fold{i}", val, out / f"fold{i}" / "evaluation",
                                         note=f"validation fold {i}; {note}")["predictions"] if val else []
        fold_predictions.append(predictions)
        f1 = class_metrics(predictions, config.classes)["macro"]["f1"] if predictions else None
        scores.append((-1.0 if f1 is None else f1, -run.selected.get("val_loss", float("inf"))))
    final = max(range(len(folds)), key=lambda i: scores[i])     # max keeps the first of equal scores
    chosen = {"fold": final, "rule": SELECTION,
              "description": f"fold {final} of {len(folds)}, {SELECTION}" if len(folds) > 1 else "the one fold's model"}
    _copy_run(out / f"fold{final}", out, chosen)
    held = evaluate_slice_run(out, holdout, out / "holdout", note=f"hold-out; {note}")["predictions"] if holdout else []
    report = build_report([p for p in fold_predictions if p], held, config.classes, chosen, note, config.seed)
    return XrayRun(split, final, report, write_report(report, out))


def _copy_run(fold_dir: Path, out: Path, final: dict) -> None:
    """The fold's model, config (with ``final_model``), preprocessing, history and curves into ``out``."""
    for path in fold_dir.iterdir():
        if path.is_file() and path.name != "split.json":
            shutil.copy2(path, out / path.name)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(config | {"final_model": final}, indent=2))
