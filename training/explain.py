"""Grad-CAM overlays of the slices that drove each group's decision, with the consistency check."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import tf_keras as keras

from edge import CLASSES
from edge.card import DEMONSTRATION_BANNER
from edge.explain import overlay
from edge.pipeline import prepare_study
from edge.vote import patient_verdict
from training.gradcam import consistency, gradcam_group
from training.models import predict_group
from training.train import load_run_models, read_run_preprocessing


def explain_study(study: Path, run: Path, out_dir: Path, class_name: str | None = None, top: int = 3) -> dict:
    """Write ``group<g>_slice<i>.png`` overlays for the ``top`` slices of each group (by share of
    Grad-CAM evidence for the class) and ``explain.json``; with the run's stage-1 slice model, also
    the mean heatmap consistency under rotation and translation. Only whole slices are explained:
    a position of an interpolated group blends two slices and is skipped."""
    encoder, head = load_run_models(run)
    options, _ = read_run_preprocessing(run)
    slice_model_path = run / "slice_model.best.keras"
    softmax = keras.models.load_model(slice_model_path).get_layer("slice_softmax") if slice_model_path.exists() else None
    prepared = prepare_study(study, options)
    groups = prepared.groups()
    probs = np.stack([predict_group(encoder, head, g) for g in groups])
    verdict = patient_verdict(probs, options.override)
    target = CLASSES.index(class_name or verdict.label)
    kept = prepared.selection.kept_indices
    out_dir.mkdir(parents=True, exist_ok=True)
    slices, scores = [], []
    for g, (group, plan) in enumerate(zip(groups, prepared.plans)):
        heat, share = gradcam_group(encoder, head, group, target)
        whole = [k for k in np.argsort(-share) if not np.isnan(plan[k]) and float(plan[k]).is_integer()]
        for k in whole[:top]:
            index = int(kept[int(plan[k])])
            picture = overlay(group[k], heat[k])
            cv2.putText(picture, f"{CLASSES[target]} g{g} s{index} {DEMONSTRATION_BANNER}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX,
                        0.38, (255, 255, 255), 1, cv2.LINE_AA)
            name = f"group{g}_slice{index}.png"
            cv2.imwrite(str(out_dir / name), picture)
            entry = {"group": g, "slice_index": index, "file": prepared.volume.files[index], "share": float(share[k]),
                     "png": name}
            if softmax is not None:
                entry["consistency"] = consistency(encoder, softmax, group[k], min(target, softmax.units - 1))
                scores.append(entry["consistency"]["mean"])  # type: ignore[index]
            slices.append(entry)
    result = {"class": CLASSES[target], "verdict": verdict.label, "group_probabilities": probs.tolist(),
              "slices": slices, "mean_consistency": float(np.mean(scores)) if scores else None, "note": DEMONSTRATION_BANNER}
    (out_dir / "explain.json").write_text(json.dumps(result, indent=2))
    return result
