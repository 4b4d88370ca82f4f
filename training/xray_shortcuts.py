"""Shortcut analysis of an X-ray run on a manifest with a ``source`` column (``ctedge xray-shortcuts``).

Public chest X-ray collections tie the class to the source (pediatric normals, ICU films, paper
figures), so a model can score well by recognising the source. On the frozen trunk's pooled features
(``training.feature_cache``; the same trunk and preprocessing as the run) this measures:

- **source from features**: how well a logistic regression tells the sources apart (grouped 5-fold
  cross-validation by patient), over all images and within each class, against chance;
- **the floor**: a logistic regression on the frozen features, fitted on the run's non-hold-out
  patients and scored on its hold-out (what the trained model has to beat);
- **per source**: accuracy of the run's final model and of the floor on the hold-out images of each source;
- **leave one source out**: the logistic regression fitted on the other sources' non-hold-out images,
  scored on every image of the left-out source.

Logistic regression: scikit-learn, features standardised, L2 (C=1), balanced class weights.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np

from edge import CLASSES
from edge.errors import UserError
from edge.metrics import bootstrap_table2
from edge.plots import plot_confusion
from training.data import StudyRecord, discover
from training.xray_report import METRICS, class_metrics


def read_sources(manifest: Path) -> dict[Path, str]:
    """The ``source`` of each image of a manifest CSV, by resolved path (relative to the CSV's folder)."""
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "source" not in rows[0]:
        raise UserError(manifest, "needs a 'source' column (a manifest of ctedge data import) for the shortcut analysis")
    return {(manifest.parent / r["path"]).resolve(): r["source"] for r in rows}


def _logistic():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced"))


def source_predictability(features: np.ndarray, sources: list[str], patients: list[str], seed: int = 0) -> dict:
    """Grouped (by patient) 5-fold cross-validated accuracy and balanced accuracy of predicting the source,
    the majority-source rate and 1/n (chance), and the pooled confusion matrix."""
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

    names = sorted(set(sources))
    y = np.array([names.index(s) for s in sources])
    counts = np.bincount(y, minlength=len(names))
    folds = int(min(5, counts.min())) if len(names) > 1 else 0
    if folds < 2:
        return {"sources": names, "n": len(y), "note": "fewer than 2 images of some source: not measured"}
    pred = cross_val_predict(_logistic(), features, y, groups=patients,
                             cv=StratifiedGroupKFold(folds, shuffle=True, random_state=seed))
    recall = [float(np.mean(pred[y == k] == k)) for k in range(len(names))]
    cm = np.zeros((len(names), len(names)), int)
    np.add.at(cm, (y, pred), 1)
    return {"sources": names, "n": int(len(y)), "folds": folds, "accuracy": float(np.mean(pred == y)),
            "balanced_accuracy": float(np.mean(recall)), "majority_rate": float(counts.max() / len(y)),
            "chance_balanced": 1.0 / len(names), "recall": dict(zip(names, recall)), "confusion_matrix": cm.tolist()}


def _predictions(records: list[StudyRecord], pred: np.ndarray) -> list[dict]:
    return [{"patient": r.patient, "label": r.label, "verdict": CLASSES[int(k)]} for r, k in zip(records, pred)]


def _with_bootstrap(predictions: list[dict], seed: int) -> dict:
    report = class_metrics(predictions, CLASSES)
    index = {c: k for k, c in enumerate(CLASSES)}
    boot = bootstrap_table2([index[p["label"]] for p in predictions], [index[p["verdict"]] for p in predictions],
                            [p["patient"] for p in predictions], CLASSES, seed=seed)
    report["bootstrap_95"] = {"per_class": {c: {m: boot["per_class"][c][m] for m in METRICS} for c in CLASSES},
                              "macro": {m: boot["macro"][m] for m in METRICS}, "n_boot": boot["n_boot"]}
    return report


def _per_source(predictions: list[dict], sources: list[str]) -> dict:
    out = {}
    for s in sorted(set(sources)):
        mine = [p for p, src in zip(predictions, sources) if src == s]
        out[s] = {"n": len(mine), "accuracy": float(np.mean([p["label"] == p["verdict"] for p in mine])),
                  "labels": dict(Counter(p["label"] for p in mine)), "predicted": dict(Counter(p["verdict"] for p in mine))}
    return out


def analyse(records: list[StudyRecord], features: np.ndarray, sources: list[str], holdout: set[str],
            final_holdout: list[dict] | None, seed: int = 0) -> dict:
    """Every measure of the module docstring. ``holdout``: the run's hold-out patients; ``final_holdout``:
    the run's hold-out predictions (``holdout/metrics.json``), or None."""
    patients = [r.patient for r in records]
    labels = np.array([CLASSES.index(r.label) for r in records])
    doc: dict = {"n_images": len(records),
                 "counts": dict(sorted(Counter(f"{r.label} / {s}" for r, s in zip(records, sources)).items()))}
    doc["source_from_features"] = {"all": source_predictability(features, sources, patients, seed)}
    for c in CLASSES:
        idx = [i for i, r in enumerate(records) if r.label == c]
        if len({sources[i] for i in idx}) > 1:
            doc["source_from_features"][c] = source_predictability(
                features[idx], [sources[i] for i in idx], [patients[i] for i in idx], seed)
    train = np.array([p not in holdout for p in patients])
    test = ~train
    if test.any():
        floor = _logistic().fit(features[train], labels[train])
        held = [r for r, t in zip(records, test) if t]
        held_sources = [s for s, t in zip(sources, test) if t]
        floor_pred = _predictions(held, floor.predict(features[test]))
        doc["floor_holdout"] = _with_bootstrap(floor_pred, seed) | {"per_source": _per_source(floor_pred, held_sources)}
        if final_holdout is not None:
            source_of = {p: s for p, s in zip(patients, sources)}
            doc["final_model_holdout_per_source"] = _per_source(final_holdout, [source_of[p["patient"]] for p in final_holdout])
    loso = {}
    for s in sorted(set(sources)):
        fit = train & np.array([src != s for src in sources])
        left = np.array([src == s for src in sources])
        if len(set(labels[fit])) < 2:
            continue
        model = _logistic().fit(features[fit], labels[fit])
        pred = _predictions([r for r, t in zip(records, left) if t], model.predict(features[left]))
        loso[s] = _per_source(pred, [s] * len(pred))[s] | {"classes_in_training": sorted({CLASSES[k] for k in labels[fit]})}
    doc["leave_one_source_out"] = loso
    return doc


def format_markdown(doc: dict) -> str:
    """shortcuts.md: the tables of :func:`analyse`, in percent."""
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}"   # noqa: E731
    lines = ["# Shortcut analysis (frozen trunk features, logistic regression)", "",
             f"{doc['n_images']} images. Counts (class / source): " + ", ".join(f"{k} {v}" for k, v in doc["counts"].items()), "",
             "## Source from the frozen features (grouped 5-fold CV by patient)", "",
             "| images | sources | accuracy | balanced accuracy | chance (majority / 1 over n) |", "|---|---|---|---|---|"]
    for what, s in doc["source_from_features"].items():
        if "accuracy" in s:
            lines.append(f"| {what} | {len(s['sources'])} | {pct(s['accuracy'])} | {pct(s['balanced_accuracy'])} | "
                         f"{pct(s['majority_rate'])} / {pct(s['chance_balanced'])} |")
    for title, key in (("Final model, hold-out, per source", "final_model_holdout_per_source"),
                       ("Floor (logistic regression on frozen features), hold-out, per source", None)):
        table = doc.get(key) if key else doc.get("floor_holdout", {}).get("per_source")
        if table:
            lines += ["", f"## {title}", "", "| source | n | accuracy | true classes | predicted |", "|---|---|---|---|---|"]
            lines += [f"| {s} | {t['n']} | {pct(t['accuracy'])} | {t['labels']} | {t['predicted']} |" for s, t in table.items()]
    floor = doc.get("floor_holdout")
    if floor:
        boot = floor["bootstrap_95"]
        lines += ["", "## Floor on the hold-out (patient bootstrap 95% intervals)", "",
                  "| class | sensitivity | specificity | F1 | support |", "|---|---|---|---|---|"]
        for c in CLASSES:
            m, b = floor["per_class"][c], boot["per_class"][c]
            lines.append(f"| {c} | " + " | ".join(f"{pct(m[x])} ({pct(b[x][0])}-{pct(b[x][1])})" if b[x] else pct(m[x])
                                                  for x in METRICS) + f" | {m['support']} |")
        lines.append("| macro | " + " | ".join(pct(floor["macro"][x]) for x in METRICS) + f" | accuracy {pct(floor['accuracy'])} |")
    lines += ["", "## Leave one source out (fitted on the other sources' non-hold-out images)", "",
              "| left-out source | n | accuracy | true classes | predicted | classes in training |", "|---|---|---|---|---|---|"]
    lines += [f"| {s} | {t['n']} | {pct(t['accuracy'])} | {t['labels']} | {t['predicted']} | {', '.join(t['classes_in_training'])} |"
              for s, t in doc["leave_one_source_out"].items()]
    return "\n".join(lines) + "\n"


def run_shortcuts(manifest: Path, run: Path, out: Path, cache: Path | None, seed: int = 0) -> dict:
    """Load the run's final model and preprocessing, the manifest's images and sources; write
    ``out``/shortcuts.json, shortcuts.md and source_confusion.png; return the analysis."""
    from training.feature_cache import pooled_features
    from training.slice_train import load_slice_run
    from training.train import prepare_records, read_run_preprocessing

    model, config = load_slice_run(run)
    if config.get("modality") != "xray":
        raise UserError(run, "not an X-ray run of ctedge train --modality xray")
    options, _ = read_run_preprocessing(run)
    records = discover(manifest)
    source_of = read_sources(manifest)
    sources = [source_of[Path(r.path).resolve()] for r in records]
    images = np.stack([p.study.images[0] for p in prepare_records(records, options, "xray")])[..., None]
    features = pooled_features(model, images, cache)
    split = json.loads((run / "split.json").read_text())
    held_file = run / "holdout" / "metrics.json"
    final = json.loads(held_file.read_text())["predictions"] if held_file.is_file() else None
    doc = analyse(records, features, sources, set(split.get("holdout", [])), final, seed)
    doc["run"], doc["manifest"] = str(run), str(manifest)
    out.mkdir(parents=True, exist_ok=True)
    (out / "shortcuts.json").write_text(json.dumps(doc, indent=2))
    (out / "shortcuts.md").write_text(format_markdown(doc))
    s = doc["source_from_features"]["all"]
    if "confusion_matrix" in s:
        plot_confusion(np.array(s["confusion_matrix"]), out / "source_confusion.png", s["sources"],
                       title="Source predicted from frozen trunk features",
                       note=f"logistic regression, grouped {s['folds']}-fold CV; accuracy {100 * s['accuracy']:.1f}%")
    return doc
