"""Lung crop (issue 22): does cutting each radiograph to its lungs remove the collections' source shortcut?

The U-Net of make_pairs.py / ctedge train-unet (OpenIST masks, 128 px) finds the lungs of each
radiograph (as the edge reads it); the image is cut to the box of the mask (5% margin; the whole image
when the mask covers under 5% of it), resized to 224, and goes through the frozen MobileNetV2. Then the
analysis of ctedge xray-shortcuts (logistic regression) on the m700 and m-extra manifests, compared with
the uncropped features of preproc_experiment.py / extra_experiment.py, and the external test (Actualmed +
Figure1) of the logistic regression fitted on each manifest's non-hold-out images."""
import json
import os
import sys
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np

XT = Path(os.environ.get("XRAY_WORK", "/work/data/xraytrain"))
HERE = XT / "lungseg"
MIN_FRACTION, MARGIN = 0.05, 0.05


def read(path: str) -> np.ndarray:
    from edge.ingest.radiograph import load_radiograph
    return load_radiograph(path).pixels.astype(np.float32)


def crops(paths: list[str], unet) -> tuple[np.ndarray, np.ndarray, list[bool]]:
    from tqdm import tqdm
    with Pool(2) as pool:
        pictures = list(tqdm(pool.imap(read, paths, chunksize=8), total=len(paths), desc="reading"))
    small = np.stack([cv2.resize(p, (128, 128), interpolation=cv2.INTER_AREA) * 255 for p in pictures])[..., None]
    masks = unet.predict(small, batch_size=32, verbose=0)[..., 0] > 0.5
    out, boxes, fallback = [], [], []
    for p, m in zip(pictures, masks):
        h, w = p.shape
        if m.mean() < MIN_FRACTION:
            y0, y1, x0, x1 = 0, h, 0, w
            fallback.append(True)
        else:
            ys, xs = np.nonzero(m)
            y0, y1 = ys.min() / 128 * h, (ys.max() + 1) / 128 * h
            x0, x1 = xs.min() / 128 * w, (xs.max() + 1) / 128 * w
            my, mx = MARGIN * (y1 - y0), MARGIN * (x1 - x0)
            y0, y1, x0, x1 = int(max(0, y0 - my)), int(min(h, y1 + my)), int(max(0, x0 - mx)), int(min(w, x1 + mx))
            fallback.append(False)
        crop = np.ascontiguousarray(p[y0:y1, x0:x1])
        out.append(np.rint(cv2.resize(crop, (224, 224), interpolation=cv2.INTER_AREA) * 255).astype(np.uint8))
        boxes.append((y0 / h, y1 / h, x0 / w, x1 / w))
    return np.stack(out)[..., None], np.array(boxes), fallback


def montage(images: np.ndarray, labels: list[str], path: Path, n: int = 24, seed: int = 0) -> None:
    idx = np.random.default_rng(seed).choice(len(images), size=min(n, len(images)), replace=False)
    tiles = []
    for i in idx:
        t = cv2.cvtColor(cv2.resize(images[i, ..., 0], (160, 160)), cv2.COLOR_GRAY2BGR)
        cv2.putText(t, labels[i][:22], (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 255, 255), 1)
        tiles.append(t)
    rows = [np.hstack(tiles[k:k + 8]) for k in range(0, len(tiles) - len(tiles) % 8, 8)]
    cv2.imwrite(str(path), np.vstack(rows))


def main():
    import tf_keras as keras
    from sklearn.metrics import roc_auc_score

    from edge import CLASSES
    from training.archs import build_slice_model
    from training.data import discover
    from training.feature_cache import pooled_features
    from training.xray_shortcuts import _logistic, analyse, format_markdown, read_sources

    unet = keras.models.load_model(HERE / "run" / "unet.keras", compile=False)
    model = build_slice_model("mobilenetv2", 224, 3, weights=XT / "mobilenet_v2_1.0_224_quant.tflite").model
    ext = discover(XT / "external" / "external.csv")
    ye = np.array([CLASSES.index(r.label) for r in ext])
    ext_images, _, ext_fallback = crops([str(r.path) for r in ext], unet)
    fe = pooled_features(model, ext_images, XT / "cache")
    out = {}
    for name, manifest, holdout in (
            ("m700", XT / "m700" / "manifest.csv", set(json.loads((XT / "runs" / "xray-a" / "split.json").read_text())["holdout"])),
            ("m-extra", XT / "m-extra" / "manifest.csv", set(json.loads((XT / "m-extra" / "holdout.json").read_text())))):
        records = discover(manifest)
        source_of = read_sources(manifest)
        sources = [source_of[Path(r.path).resolve()] for r in records]
        images, boxes, fallback = crops([str(r.path) for r in records], unet)
        montage(images, sources, HERE / f"montage-{name}.png")
        feats = pooled_features(model, images, XT / "cache")
        doc = analyse(records, feats, sources, holdout, None)
        (HERE / f"shortcuts-{name}.json").write_text(json.dumps(doc, indent=2, default=str))
        (HERE / f"shortcuts-{name}.md").write_text(format_markdown(doc))
        train = np.array([r.patient not in holdout for r in records])
        y = np.array([CLASSES.index(r.label) for r in records])
        p = _logistic().fit(feats[train], y[train]).predict_proba(fe)
        pred = p.argmax(1)
        healthy, covid = ye == 2, ye == 0
        out[name] = {"fallback_whole_image": int(sum(fallback)), "n": len(records),
                     "box_area_median": float(np.median((boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2]))),
                     "source_accuracy": doc["source_from_features"]["all"]["accuracy"],
                     "holdout_macro": doc["floor_holdout"]["macro"], "holdout_accuracy": doc["floor_holdout"]["accuracy"],
                     "loso": {s: t["accuracy"] for s, t in doc["leave_one_source_out"].items()},
                     "loso_predicted": {s: t["predicted"] for s, t in doc["leave_one_source_out"].items()},
                     "external": {"fallback_whole_image": int(sum(ext_fallback)), "accuracy": float(np.mean(pred == ye)),
                                  "healthy_called_healthy": f"{int(np.sum(pred[healthy] == 2))} of {int(healthy.sum())}",
                                  "covid_called_covid": f"{int(np.sum(pred[covid] == 0))} of {int(covid.sum())}",
                                  "auc_covid": float(roc_auc_score(covid, p[:, 0])),
                                  "auc_healthy": float(roc_auc_score(healthy, p[:, 2]))}}
        print(name, json.dumps(out[name]), flush=True)
    montage(ext_images, [r.source if hasattr(r, "source") else "external" for r in ext], HERE / "montage-external.png")
    (HERE / "experiment.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    sys.exit(main())
