"""Does a preprocessing normalisation reduce the X-ray collections' source shortcut? (issue 22)

Protocol fixed before any result: for each variant, frozen MobileNetV2 features (Coral weights) of
the 3439 training-manifest radiographs; a logistic regression (ctedge xray-shortcuts' analysis).
The variant is CHOSEN by the mean leave-one-source-out accuracy over the 7 sources, provided its
hold-out macro F1 is within 3 points of the baseline's. Only the chosen variant and the baseline are
then scored on the reserved external test (Actualmed + Figure1), once.

Variants (all applicable identically at the edge, after the edge's own reader):
  base        resize to 224 (today's preprocessing)
  clahe       base, then CLAHE (clip 2, 8x8 tiles)
  crop_clahe  central crop (8% off each side) then resize, then CLAHE
  crop_eq     central crop then resize, then global histogram equalisation
"""

from __future__ import annotations

import json
import os
import sys
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np

HERE = Path(os.environ.get("XRAY_WORK", "/work/data/xraytrain"))
VARIANTS = ("base", "clahe", "crop_clahe", "crop_eq")
CROP = 0.08


def variants(pixels: np.ndarray) -> dict[str, np.ndarray]:
    def resize(p):
        return np.rint(cv2.resize(p, (224, 224), interpolation=cv2.INTER_AREA) * 255).astype(np.uint8)
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    h, w = pixels.shape
    dy, dx = int(round(h * CROP)), int(round(w * CROP))
    base = resize(pixels)
    cropped = resize(np.ascontiguousarray(pixels[dy:h - dy, dx:w - dx]))
    return {"base": base, "clahe": clahe.apply(base), "crop_clahe": clahe.apply(cropped),
            "crop_eq": cv2.equalizeHist(cropped)}


def read(path: str) -> dict[str, np.ndarray]:
    from edge.ingest.radiograph import load_radiograph
    return variants(load_radiograph(path).pixels.astype(np.float32))


def images_of(paths: list[str]) -> dict[str, np.ndarray]:
    from tqdm import tqdm
    with Pool(2) as pool:
        out = list(tqdm(pool.imap(read, paths, chunksize=8), total=len(paths), desc="reading"))
    return {v: np.stack([o[v] for o in out])[..., None] for v in VARIANTS}


def main() -> None:
    from training.archs import build_slice_model
    from training.data import discover
    from training.feature_cache import pooled_features
    from training.xray_shortcuts import analyse, read_sources

    manifest = HERE / "m700" / "manifest.csv"
    records = discover(manifest)
    source_of = read_sources(manifest)
    sources = [source_of[Path(r.path).resolve()] for r in records]
    holdout = set(json.loads((HERE / "runs" / "xray-a" / "split.json").read_text())["holdout"])
    model = build_slice_model("mobilenetv2", 224, 3, weights=HERE / "mobilenet_v2_1.0_224_quant.tflite").model
    cache = HERE / "cache"
    imgs = images_of([str(r.path) for r in records])
    out = {}
    for v in VARIANTS:
        feats = pooled_features(model, imgs[v], cache)
        np.save(HERE / "preproc" / f"features-{v}.npy", feats)
        doc = analyse(records, feats, sources, holdout, None)
        loso = doc["leave_one_source_out"]
        out[v] = {"source_accuracy": doc["source_from_features"]["all"]["accuracy"],
                  "source_balanced": doc["source_from_features"]["all"]["balanced_accuracy"],
                  "holdout_macro": doc["floor_holdout"].get("macro"),
                  "holdout_accuracy": doc["floor_holdout"].get("accuracy"),
                  "loso": {s: t["accuracy"] for s, t in loso.items()},
                  "loso_mean": float(np.mean([t["accuracy"] for t in loso.values()])),
                  "loso_predicted": {s: t["predicted"] for s, t in loso.items()}}
        (HERE / "preproc" / f"analysis-{v}.json").write_text(json.dumps(doc, indent=2, default=str))
        print(v, json.dumps(out[v], default=str), flush=True)
    (HERE / "preproc" / "summary.json").write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    (HERE / "preproc").mkdir(exist_ok=True)
    sys.exit(main())
