"""Grad-CAM overlays of the slices that drove each group's decision, with the consistency check."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import tf_keras as keras

from edge import CLASSES
from edge.explain import overlay
from edge.pipeline import PipelineOptions, prepare_study
from edge.vote import patient_verdict
from training.gradcam import consistency, gradcam_group

BANNER = "demonstration model - not for clinical use"


def explain_study(study: Path, run: Path, out_dir: Path, class_name: str | None = None, top: int = 3,
                  options: PipelineOptions = PipelineOptions()) -> dict:
    """Write ``group<g>_slice<i>.png`` overlays for the ``top`` slices of each group (by share of
    Grad-CAM evidence for the class) and ``explain.json``; with the run's stage-1 slice model, also
    the mean heatmap consistency under rotation and translation."""
    encoder = keras.models.load_model(run / "encoder.keras")
    head = keras.models.load_model(run / "head.keras")
    slice_model_path = run / "slice_model.best.keras"
    softmax = keras.models.load_model(slice_model_path).get_layer("slice_softmax") if slice_model_path.exists() else None
    prepared = prepare_study(study, options)
    groups = prepared.groups()
    probs = np.stack([head(encoder(g[..., None].astype(np.float32))[None]).numpy()[0] for g in groups])
    verdict = patient_verdict(probs, options.override)
    target = CLASSES.index(class_name or verdict.label)
    kept = prepared.selection.kept_indices
    out_dir.mkdir(parents=True, exist_ok=True)
    slices, scores = [], []
    for g, (group, plan) in enumerate(zip(groups, prepared.plans)):
        heat, share = gradcam_group(encoder, head, group, target)
        for k in np.argsort(-share)[:top]:
            if np.isnan(plan[k]):
                continue
            index = int(kept[int(round(plan[k]))])
            picture = overlay(group[k], heat[k])
            cv2.putText(picture, f"{CLASSES[target]} g{g} s{index} {BANNER}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX,
                        0.38, (255, 255, 255), 1, cv2.LINE_AA)
            name = f"group{g}_slice{index}.png"
            cv2.imwrite(str(out_dir / name), picture)
            entry = {"group": g, "slice_index": index, "file": prepared.volume.files[index], "share": float(share[k]),
                     "png": name}
            if softmax is not None:
                entry["consistency"] = consistency(encoder, softmax, group[k], min(target, softmax.units - 1))
                scores.append(entry["consistency"]["mean"])
            slices.append(entry)
    result = {"class": CLASSES[target], "verdict": verdict.label, "group_probabilities": probs.tolist(),
              "slices": slices, "mean_consistency": float(np.mean(scores)) if scores else None, "note": BANNER}
    (out_dir / "explain.json").write_text(json.dumps(result, indent=2))
    return result
