"""Step 3 (CPU): the tables of the fine-tuning experiment, from what ``finetune.py`` returned
(``python analyse.py RESULTS_DIR``; writes RESULTS_DIR/analysis.json and prints markdown).

Every figure is on the packed inputs (the edge's model input, JPEG quality 90). Fine-tuned runs are
compared with the floor on the same inputs: a logistic regression (``training.xray_shortcuts``' own,
standardised, C=1, balanced) on the frozen ImageNet features, fitted on the same images.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from training.xray_shortcuts import _logistic, _with_bootstrap, source_predictability

PACK = Path(__file__).resolve().parents[3] / ".xft"


def predictions(labels, pred, patients, classes) -> list[dict]:
    return [{"patient": p, "label": classes[a], "verdict": classes[b]} for a, b, p in zip(labels, pred, patients)]


def summary(labels, probs, patients, classes, seed=0) -> dict:
    pred = probs.argmax(1)
    doc = _with_bootstrap(predictions(labels, pred, patients, classes), seed)
    doc["roc_auc"] = {c: float(roc_auc_score(labels == k, probs[:, k])) for k, c in enumerate(classes)
                      if 0 < np.sum(labels == k) < len(labels)}
    return doc


def main(results: Path) -> None:
    pack = np.load(PACK / "images.npz")
    classes, sources = [str(c) for c in pack["classes"]], [str(s) for s in pack["sources"]]
    y, src, part, patients = pack["cls"], pack["source"], pack["part"], pack["patient"]
    preds = dict(np.load(results / "preds.npz"))
    base = np.load(results / "features_base.npz")["features"].astype(np.float32)
    tuned = np.load(results / "features_ft.npz")["features"].astype(np.float32)
    runs = json.loads((results / "runs.json").read_text())
    fit = np.isin(part, ["train", "val"])
    held, ext = part == "holdout", part == "external"
    floor = _logistic().fit(base[fit], y[fit])
    floor_probs = floor.predict_proba(base)
    out: dict = {"kept_seed": runs["kept_seed"], "port_max_abs_diff": runs["port_max_abs_diff"]}
    rows = {"floor (frozen ImageNet + logistic)": floor_probs} | {k: v for k, v in preds.items() if k.startswith("main")}
    out["holdout"] = {k: summary(y[held], p[held], patients[held], classes) for k, p in rows.items()}
    out["external"] = {k: summary(y[ext], p[ext], patients[ext], classes) for k, p in rows.items()}
    kept = preds[f"main_seed{runs['kept_seed']}"]
    out["holdout_per_source"] = {}
    for s in sorted(set(src[held])):
        m = held & (src == s)
        out["holdout_per_source"][sources[s]] = {
            "n": int(m.sum()), "floor_accuracy": float(np.mean(floor_probs[m].argmax(1) == y[m])),
            "finetuned_accuracy": float(np.mean(kept[m].argmax(1) == y[m])),
            "finetuned_predicted": dict(Counter(classes[k] for k in kept[m].argmax(1)))}
    out["leave_one_source_out"] = {}
    for s, name in enumerate(sources):
        if f"loso_{name}" not in preds:
            continue
        left = src == s
        lr = _logistic().fit(base[fit & ~left], y[fit & ~left])
        ft = preds[f"loso_{name}"][left].argmax(1)
        out["leave_one_source_out"][name] = {
            "n": int(left.sum()), "floor_accuracy": float(np.mean(lr.predict(base[left]) == y[left])),
            "finetuned_accuracy": float(np.mean(ft == y[left])),
            "finetuned_predicted": dict(Counter(classes[k] for k in ft)),
            "best_epoch": runs["runs"][f"loso_{name}"]["best_epoch"]}
    inside = ~ext
    names = [sources[s] for s in src[inside]]
    out["source_from_features"] = {
        "frozen ImageNet": source_predictability(base[inside], names, list(patients[inside])),
        "fine-tuned (kept seed)": source_predictability(tuned[inside], names, list(patients[inside]))}
    (results / "analysis.json").write_text(json.dumps(out, indent=2))
    print(markdown(out, classes))


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def markdown(out: dict, classes: list[str]) -> str:
    lines = ["| model | hold-out accuracy | macro F1 (95% CI) | external: normals called healthy | external covid specificity | external ROC AUC covid / healthy |",
             "|---|---|---|---|---|---|"]
    for k, h in out["holdout"].items():
        e = out["external"][k]
        cm = np.array(e["confusion_matrix"])
        hk = classes.index("healthy")
        ci = h["bootstrap_95"]["macro"]["f1"]
        lines.append(f"| {k} | {pct(h['accuracy'])} | {pct(h['macro']['f1'])} ({pct(ci[0])}-{pct(ci[1])}) | "
                     f"{cm[hk, hk]} of {cm[hk].sum()} | {pct(e['per_class']['covid']['specificity'])} | "
                     f"{e['roc_auc'].get('covid', float('nan')):.2f} / {e['roc_auc'].get('healthy', float('nan')):.2f} |")
    lines += ["", "| hold-out source | n | floor accuracy | fine-tuned accuracy | fine-tuned predicted |", "|---|---|---|---|---|"]
    for s, r in out["holdout_per_source"].items():
        lines.append(f"| {s} | {r['n']} | {pct(r['floor_accuracy'])} | {pct(r['finetuned_accuracy'])} | {r['finetuned_predicted']} |")
    lines += ["", "| left-out source | n | floor accuracy | fine-tuned accuracy | fine-tuned predicted |", "|---|---|---|---|---|"]
    for s, r in out["leave_one_source_out"].items():
        lines.append(f"| {s} | {r['n']} | {pct(r['floor_accuracy'])} | {pct(r['finetuned_accuracy'])} | {r['finetuned_predicted']} |")
    lines += ["", "| features | source accuracy | balanced | majority / chance |", "|---|---|---|---|"]
    for k, r in out["source_from_features"].items():
        lines.append(f"| {k} | {pct(r['accuracy'])} | {pct(r['balanced_accuracy'])} | {pct(r['majority_rate'])} / {pct(r['chance_balanced'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
