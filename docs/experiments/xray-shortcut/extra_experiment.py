"""The m-extra manifest (m700 + OpenIST normals + NIH normals + NIH pneumonia): the shortcut analysis of
ctedge xray-shortcuts (logistic regression on frozen MobileNetV2 features, today's preprocessing) and
the external test (Actualmed + Figure1) of the logistic regression fitted on all non-hold-out images."""
import json
import os
from pathlib import Path

import numpy as np

HERE = Path(os.environ.get("XRAY_WORK", "/work/data/xraytrain"))


def main():
    from sklearn.metrics import roc_auc_score

    from edge import CLASSES
    from preproc_experiment import images_of
    from training.archs import build_slice_model
    from training.data import discover
    from training.feature_cache import pooled_features
    from training.xray_shortcuts import _logistic, analyse, format_markdown, read_sources

    manifest = HERE / "m-extra" / "manifest.csv"
    records = discover(manifest)
    source_of = read_sources(manifest)
    sources = [source_of[Path(r.path).resolve()] for r in records]
    holdout = set(json.loads((HERE / "m-extra" / "holdout.json").read_text()))
    model = build_slice_model("mobilenetv2", 224, 3, weights=HERE / "mobilenet_v2_1.0_224_quant.tflite").model
    out = {}
    for v in ("base", "clahe"):
        feats = pooled_features(model, images_of([str(r.path) for r in records])[v], HERE / "cache")
        np.save(HERE / "m-extra" / f"features-{v}.npy", feats)
        doc = analyse(records, feats, sources, holdout, None)
        (HERE / "m-extra" / f"shortcuts-{v}.json").write_text(json.dumps(doc, indent=2, default=str))
        (HERE / "m-extra" / f"shortcuts-{v}.md").write_text(format_markdown(doc))
        train = np.array([r.patient not in holdout for r in records])
        y = np.array([CLASSES.index(r.label) for r in records])
        ext = discover(HERE / "external" / "external.csv")
        ye = np.array([CLASSES.index(r.label) for r in ext])
        fe = pooled_features(model, images_of([str(r.path) for r in ext])[v], HERE / "cache")
        p = _logistic().fit(feats[train], y[train]).predict_proba(fe)
        pred = p.argmax(1)
        healthy, covid = ye == CLASSES.index("healthy"), ye == CLASSES.index("covid")
        out[v] = {"loso": {s: t["accuracy"] for s, t in doc["leave_one_source_out"].items()},
                  "loso_predicted": {s: t["predicted"] for s, t in doc["leave_one_source_out"].items()},
                  "source_accuracy": doc["source_from_features"]["all"]["accuracy"],
                  "holdout_macro": doc["floor_holdout"]["macro"], "holdout_accuracy": doc["floor_holdout"]["accuracy"],
                  "external": {"accuracy": float(np.mean(pred == ye)),
                               "healthy_called_healthy": f"{int(np.sum(pred[healthy] == 2))} of {int(healthy.sum())}",
                               "covid_called_covid": f"{int(np.sum(pred[covid] == 0))} of {int(covid.sum())}",
                               "auc_covid": float(roc_auc_score(covid, p[:, 0])),
                               "auc_healthy": float(roc_auc_score(healthy, p[:, 2]))}}
        print(v, json.dumps(out[v]), flush=True)
    (HERE / "m-extra" / "experiment.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
