"""Manifest m-extra: m700 plus three further public sources (issue 22: a second and third adult normal
source, and adult non-COVID pneumonia):
  openist        pi-null-mezon/OpenIST Datasets/Chest_x-ray/*.jpg   healthy (normal adult PA, teaching site), no licence
  nih-normal     muhammedtalo/COVID-19 "X-Ray Image DataSet/No_findings"  healthy (NIH ChestX-ray8 'No Finding')
  nih-pneumonia  muhammedtalo/COVID-19 "X-Ray Image DataSet/Pneumonia"    other_pneumonia (NIH ChestX-ray8 'Pneumonia')
Near duplicates (pHash <= 8 bits and thumbnail correlation >= 0.97, ctedge data import's rule) of any
m700 or external-test image, or of each other, are dropped; NIH patients under both classes dropped.
Hold-out: the m700 run's hold-out patients plus 20% of each new source's patients (seed 0)."""
import csv
import os
import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from training.public_data import NEAR_CORRELATION, NEAR_THRESHOLD, phash, thumbnail

HERE = Path(os.environ.get("XRAY_WORK", "/work/data/xraytrain"))
EXTRA = Path(os.environ.get("XRAY_EXTRA", "/work/data/extra"))
OUT = HERE / "m-extra"


def describe(path: Path):
    data = path.read_bytes()
    grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    return hashlib.sha256(data).hexdigest(), phash(grey), thumbnail(grey), grey.shape


def main():
    rows = list(csv.DictReader(open(HERE / "m700" / "manifest.csv")))
    old = [describe(HERE / "m700" / r["path"]) for r in rows]
    ext = list(csv.DictReader(open(HERE / "external" / "external.csv")))
    old += [describe(HERE / "external" / r["path"]) for r in ext]
    new = []
    for folder, label, source, repo, repo_dir in (
            ("openist", "healthy", "openist", "pi-null-mezon+OpenIST", "Datasets/Chest_x-ray"),
            ("nih-normal", "healthy", "nih-normal", "muhammedtalo+COVID-19", "X-Ray Image DataSet/No_findings"),
            ("nih-pneumonia", "other_pneumonia", "nih-pneumonia", "muhammedtalo+COVID-19", "X-Ray Image DataSet/Pneumonia")):
        for p in sorted((EXTRA / folder).iterdir()):
            patient = f"openist-{p.stem}" if source == "openist" else f"nih-{p.stem.split('_')[0]}"
            new.append((p, label, source, repo, f"{repo_dir}/{p.name}", patient))
    dropped = Counter()
    kept, seen = [], list(old)
    for item in new:
        sha, ph, th, shape = describe(item[0])
        if any(sha == o[0] or (bin(ph ^ o[1]).count("1") <= NEAR_THRESHOLD and float(th @ o[2]) / th.size >= NEAR_CORRELATION)
               for o in seen):
            dropped[f"{item[2]} near/exact duplicate"] += 1
            continue
        seen.append((sha, ph, th, shape))
        kept.append((*item, sha, shape))
    classes_of = {}
    for k in kept:
        classes_of.setdefault(k[5], set()).add(k[1])
    both = {p for p, c in classes_of.items() if len(c) > 1}
    dropped["NIH patients under both classes (images)"] = sum(k[5] in both for k in kept)
    kept = [k for k in kept if k[5] not in both]
    OUT.mkdir(exist_ok=True)
    (OUT / "images").mkdir(exist_ok=True)
    out_rows = [dict(r, path=str(Path("..") / "m700" / r["path"])) for r in rows]
    for p, label, source, repo, repo_path, patient, sha, shape in kept:
        out_rows.append({"patient": patient, "class": label, "path": str(p), "source": source,
                         "view": "PA" if source == "openist" else "frontal", "licence": "none stated",
                         "noncommercial": "no", "sha256": sha, "width": shape[1], "height": shape[0],
                         "repo": repo, "repo_path": repo_path})
    with open(OUT / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(out_rows)
    holdout = set(json.loads((HERE / "runs" / "xray-a" / "split.json").read_text())["holdout"])
    rng = random.Random(0)
    for source in ("openist", "nih-normal", "nih-pneumonia"):
        patients = sorted({k[5] for k in kept if k[2] == source})
        rng.shuffle(patients)
        holdout |= set(patients[:round(0.2 * len(patients))])
    (OUT / "holdout.json").write_text(json.dumps(sorted(holdout)))
    summary = {"kept": dict(Counter(k[2] for k in kept)), "dropped": dict(dropped),
               "holdout_patients": len(holdout)}
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2))
    print(summary)


if __name__ == "__main__":
    main()
