"""Step 1 (CPU): the capped manifest, its patient split, the reserved external test, and a pack of the
model inputs for the GPU fine-tuning run (``finetune.py``).

Reads ``$XRAY_WORK/manifests/xray/manifest.csv`` (``ctedge data import`` of the four collections) and the
agchung Actualmed and Figure1 folders under ``$XRAY_WORK/external``. Writes CSVs (patient,class,path) of
each part to ``$XRAY_WORK/xft/`` and ``.xft/`` in the repository root (ignored; what ``run`` carries):
``images.npz`` (each model input, 224 x 224 grey uint8 from the edge's own radiograph reader, stored
as JPEG quality 90 to fit the 64 MiB transfer), ``trunk.npz`` (the dequantised Coral MobileNetV2
convolutions) and ``check.npz`` (8 inputs and their tf_keras ``pool`` features, to check the port).
"""

from __future__ import annotations

import csv
import os
import re
import sys
from collections import defaultdict
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np

from edge.options import PipelineOptions
from edge.pipeline import prepare_radiograph
from training.data import StudyRecord, patient_split

WORK = Path(os.environ.get("XRAY_WORK", "/work/data"))
OUT = WORK / "xft"
PACK = Path(__file__).resolve().parents[3] / ".xft"
CAP = 700
SOURCES = ("hannover", "ieee8023", "kermany-bacterial", "kermany-viral", "kermany-normal", "radiography-covid",
           "radiography-normal", "external-actualmed", "external-figure1")
CLASSES = ("covid", "other_pneumonia", "healthy")


def source_of(row: dict) -> str | None:
    """The analysis source of a manifest row (None: left out, Radiography's Kermany normals 1-1403)."""
    name = Path(row["path"]).stem
    if row["source"] == "kermany":
        return "kermany-normal" if row["class"] == "healthy" else (
            "kermany-bacterial" if "bacteria" in name else "kermany-viral")
    if row["source"] == "radiography":
        if row["class"] == "healthy":
            number = int(re.findall(r"\d+", name)[-1])
            return None if number <= 1403 else "radiography-normal"
        return "radiography-covid"
    return row["source"]


def capped(rows: list[dict], seed: int = 0) -> list[dict]:
    """At most CAP images per (class, source), 350 each for Kermany bacterial and viral; seeded."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        s = source_of(r)
        if s is not None:
            groups[(r["class"], s)].append(r | {"analysis_source": s})
    rng = np.random.default_rng(seed)
    out = []
    for key in sorted(groups):
        cap = CAP // 2 if key[1] in ("kermany-bacterial", "kermany-viral") else CAP
        g = groups[key]
        out += [g[i] for i in sorted(rng.permutation(len(g))[:cap])] if len(g) > cap else g
    return out


def external_rows() -> list[dict]:
    """Labelled frontal (or unstated-view) films of the reserved Actualmed and Figure1 collections."""
    finding = {"COVID-19": "covid", "No finding": "healthy", "Pneumonia": "other_pneumonia"}
    rows = []
    for name, key in (("Actualmed-COVID-chestxray-dataset", "external-actualmed"), ("Figure1-COVID-chestxray-dataset", "external-figure1")):
        folder = WORK / "external" / name
        for r in csv.DictReader(open(folder / "metadata.csv", encoding="latin-1")):
            if r["finding"] not in finding or r["view"].strip().upper().startswith("L"):
                continue
            names = [r["imagename"]] if r.get("imagename") else [f"{r['patientid']}.{e}" for e in ("jpg", "png", "jpeg")]
            path = next((folder / "images" / n for n in names if (folder / "images" / n).is_file()), None)
            if path is not None:
                rows.append({"path": str(path), "class": finding[r["finding"]], "patient": f"{key}:{r['patientid']}",
                             "analysis_source": key})
    return rows


def model_input(path: str) -> np.ndarray:
    return prepare_radiograph(path, PipelineOptions(input_size=224)).images[0]


def thumb(image: np.ndarray) -> np.ndarray:
    t = cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    return (t - t.mean()) / (t.std() + 1e-6)


def main() -> None:
    rows = capped(list(csv.DictReader(open(WORK / "manifests/xray/manifest.csv"))))
    records = [StudyRecord(r["patient"], r["class"], Path(r["path"])) for r in rows]
    split = patient_split(records, val_fraction=0.15, test_fraction=0.2, seed=0)
    part_of = {str(r.path): part for part, rs in split.items() for r in rs}
    external = external_rows()
    every = rows + external
    with Pool(2) as pool:
        images = np.stack(pool.map(model_input, [r["path"] for r in every], chunksize=16))
    # external films that copy a training collection's film (thumbnail correlation >= 0.97) are dropped
    inside = np.stack([thumb(im) for im in images[:len(rows)]])
    keep = np.ones(len(every), bool)
    for i in range(len(rows), len(every)):
        if (inside @ thumb(images[i]) / inside.shape[1]).max() >= 0.97:
            keep[i] = False
            print("external copy of a training film dropped:", every[i]["path"])
    OUT.mkdir(parents=True, exist_ok=True)
    PACK.mkdir(exist_ok=True)
    parts = [part_of.get(r["path"], "external") for r in every]
    parts = ["holdout" if p == "test" else p for p in parts]
    for name in ("train", "val", "holdout", "external"):
        with open(OUT / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["patient", "class", "path", "source"])
            w.writerows([r["patient"], r["class"], r["path"], r["analysis_source"]] for r, p, k in zip(every, parts, keep) if p == name and k)
    chosen = np.flatnonzero(keep)
    blobs = [cv2.imencode(".jpg", images[i], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].ravel() for i in chosen]
    np.savez(PACK / "images.npz", jpeg=np.concatenate(blobs), offsets=np.cumsum([0] + [len(b) for b in blobs]),
             cls=np.array([CLASSES.index(every[i]["class"]) for i in chosen]),
             source=np.array([SOURCES.index(every[i]["analysis_source"]) for i in chosen]),
             part=np.array([parts[i] for i in chosen]), patient=np.array([every[i]["patient"] for i in chosen]),
             path=np.array([every[i]["path"] for i in chosen]), sources=np.array(SOURCES), classes=np.array(CLASSES))
    write_trunk_and_check(images[chosen[:8]])
    print({p: int(np.sum(np.array(parts)[chosen] == p)) for p in ("train", "val", "holdout", "external")},
          "pack", (PACK / "images.npz").stat().st_size // 2**20, "MiB")


def write_trunk_and_check(sample: np.ndarray) -> None:
    import tf_keras as keras

    from training.archs import build_slice_model
    from training.trunk import CORAL_MOBILENET_V2, _dequantised_convolutions
    convs = _dequantised_convolutions(CORAL_MOBILENET_V2)
    np.savez_compressed(PACK / "trunk.npz", **{f"k{i}": k for i, (_, k, _) in enumerate(convs)},
                        **{f"b{i}": b for i, (_, _, b) in enumerate(convs)})
    model = build_slice_model("mobilenetv2", 224, 3, CORAL_MOBILENET_V2).model
    features = keras.Model(model.inputs, model.get_layer("pool").output).predict(sample[..., None].astype(np.float32), verbose=0)
    np.savez(PACK / "check.npz", images=sample, features=features)


if __name__ == "__main__":
    sys.exit(main())
