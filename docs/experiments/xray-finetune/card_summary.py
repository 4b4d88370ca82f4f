"""Step 5 (CPU, after analyse.py on RESULTS_DIR=$XRAY_WORK/xft/gpu1): the card's ``training_data`` and ``known_biases`` (``research.json``, read by
``ctedge quantize --research``) and the int8 calibration list (up to 40 training radiographs per class
and source), from pack.py's parts and ``ctedge data import``'s manifest."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

WORK = Path(os.environ.get("XRAY_WORK", "/work/data"))
PARTS = WORK / "xft"
TRUNK = {"file": "mobilenet_v2_1.0_224_quant.tflite", "repository": "google-coral/test_data", "licence": "Apache-2.0",
         "sha256": "7aad0c74c5e3c06e5eb3c827e13304fdd68a83da6087d92ee169c24ff9fd4776",
         "how": "ImageNet MobileNetV2 dequantised (training.trunk), then every convolution fine-tuned on the radiographs"}
NON_COMMERCIAL = ("NC-SA", "NC-ND", "NC ")


def main() -> None:
    manifest = WORK / "manifests/xray/manifest.csv"
    licence = {r["path"]: r["licence"] for r in csv.DictReader(open(manifest, newline=""))}
    rows = [r | {"part": p} for p in ("train", "val", "holdout") for r in csv.DictReader(open(PARTS / f"{p}.csv", newline=""))]
    sources: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        sources[r["source"]][r["class"]] += 1
    licences = Counter(licence[r["path"]] or "not stated" for r in rows)
    nc = sum(n for k, n in licences.items() if "NC" in k)
    listing = "\n".join(sorted(f"{r['path']},{r['class']},{r['patient']},{r['source']},{r['part']}" for r in rows))
    training_data = {
        "sources": {s: dict(c) for s, c in sorted(sources.items())}, "licences": dict(licences.most_common()),
        "non_commercial": nc > 0, "noncommercial_images": nc,
        "noncommercial_terms": f"{nc} images carry CC BY-NC-* terms (ieee8023): the model is for non-commercial research use",
        "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
        "parts_sha256": hashlib.sha256(listing.encode()).hexdigest(),
        "images": len(rows), "patients_or_surrogates": len({r["patient"] for r in rows}),
        "parts": dict(Counter(r["part"] for r in rows)),
        "cap": "at most 700 images per (class, source), 350 each for Kermany bacterial and viral; seeded sample; "
               "COVID-19 Radiography's Normal-1..1403 (Kermany's films) left out",
        "views": "frontal only (ctedge data import: lateral and unstated views dropped)",
        "duplicates": "removed by ctedge data import (sha256, pHash confirmed by thumbnail correlation, ieee8023 copies of Hannover by id)",
        "patient_ids": "ieee8023, Hannover and Kermany: patient ids; COVID-19 Radiography: none (each image its own surrogate patient)",
        "external_test_reserved": "agchung Actualmed and Figure1: never trained or tuned on",
        "pretrained_trunk": TRUNK}
    loso = json.loads((PARTS / "gpu1/analysis.json").read_text())["leave_one_source_out"]
    share = {k: {c: n / loso[k]["n"] for c, n in loso[k]["finetuned_predicted"].items()} for k in loso}
    biases = [
        "Class is tied to source: other_pneumonia is mostly Kermany pediatric films (age 1-5), healthy is half Kermany "
        "pediatric and half adult RSNA normals, covid is adult only (Hannover ICU films, ieee8023 paper figures, COVID-19 "
        "Radiography). Fine-tuning made the features tell the sources apart better, not worse (docs/models-research.md).",
        f"Leave-one-source-out, fine-tuned: with the adult RSNA normals left out {share['radiography-normal']['covid']:.0%} of "
        f"them are called covid; with the Kermany normals left out {share['kermany-normal']['other_pneumonia']:.0%} are called "
        "other_pneumonia. Healthy is learnt per collection, not as clear lungs.",
        "An adult with non-COVID pneumonia is under-represented (77 ieee8023 images): adult bacterial/viral pneumonia may be called covid.",
        "COVID-19 Radiography and Kermany images were resized to 224 px (8-bit) by their publishers; hospital DICOMs differ in size, bit depth and processing.",
        "No patient ids in COVID-19 Radiography: the same patient may be in training and hold-out there.",
        "External test (agchung Actualmed + Figure1, never trained on): most normal radiographs are called sick (see validations).",
        "int8 variant: agrees with float32 on about 94% of the calibration radiographs, below the fidelity gate (99%), "
        "so the edge runs float32; the loss is spread over every layer (QuantizationDebugger), not one layer to keep in float."]
    (PARTS / "research.json").write_text(json.dumps({"training_data": training_data, "known_biases": biases}, indent=2))
    rng = np.random.default_rng(0)
    train = [r for r in rows if r["part"] == "train"]
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in train:
        groups[(r["class"], r["source"])].append(r)
    chosen = [g[i] for k in sorted(groups) for g in [groups[k]] for i in sorted(rng.permutation(len(g))[:40])]
    with open(PARTS / "calibration.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient", "class", "path"])
        w.writerows([r["patient"], r["class"], r["path"]] for r in chosen)
    print(len(chosen), "calibration radiographs;", json.dumps(training_data["sources"]))


if __name__ == "__main__":
    main()
