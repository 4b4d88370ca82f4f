"""Second step of preproc_experiment.py (protocol fixed there): the chosen variant (clahe: highest mean
leave-one-source-out accuracy, 55.9 vs 54.9 for base, hold-out macro F1 within 3 points) and the
baseline, scored ONCE on the reserved external test (Actualmed + Figure1): logistic regression fitted
on all non-hold-out training images, as xray-shortcuts' floor."""
import json
import os
from pathlib import Path

import numpy as np

HERE = Path(os.environ.get("XRAY_WORK", "/work/data/xraytrain"))


def main():
    from sklearn.metrics import roc_auc_score

    from edge import CLASSES
    from training.archs import build_slice_model
    from training.data import discover
    from training.feature_cache import pooled_features
    from training.xray_shortcuts import _logistic
    from preproc_experiment import images_of

    records = discover(HERE / "m700" / "manifest.csv")
    holdout = set(json.loads((HERE / "runs" / "xray-a" / "split.json").read_text())["holdout"])
    train = np.array([r.patient not in holdout for r in records])
    y = np.array([CLASSES.index(r.label) for r in records])
    ext = discover(HERE / "external" / "external.csv")
    ye = np.array([CLASSES.index(r.label) for r in ext])
    model = build_slice_model("mobilenetv2", 224, 3, weights=HERE / "mobilenet_v2_1.0_224_quant.tflite").model
    imgs = images_of([str(r.path) for r in ext])
    out = {}
    for v in ("base", "clahe"):
        feats = np.load(HERE / "preproc" / f"features-{v}.npy")
        fe = pooled_features(model, imgs[v], HERE / "cache")
        lr = _logistic().fit(feats[train], y[train])
        p = lr.predict_proba(fe)
        pred = p.argmax(1)
        healthy = ye == CLASSES.index("healthy")
        covid = ye == CLASSES.index("covid")
        out[v] = {"n": len(ye), "accuracy": float(np.mean(pred == ye)),
                  "healthy_called_healthy": f"{int(np.sum(pred[healthy] == CLASSES.index('healthy')))} of {int(healthy.sum())}",
                  "covid_called_covid": f"{int(np.sum(pred[covid] == CLASSES.index('covid')))} of {int(covid.sum())}",
                  "auc_covid": float(roc_auc_score(covid, p[:, CLASSES.index("covid")])),
                  "auc_healthy": float(roc_auc_score(healthy, p[:, CLASSES.index("healthy")]))}
        print(v, out[v], flush=True)
    (HERE / "preproc" / "external.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
