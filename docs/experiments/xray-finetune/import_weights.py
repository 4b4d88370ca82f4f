"""Step 4 (CPU): the fine-tuned weights (``finetune.py``'s ``finetuned.npz``) into the package's own
tf_keras X-ray model, checked against PyTorch's probabilities, written as a run folder that
``ctedge quantize`` converts (``python import_weights.py RESULTS_DIR RUN_DIR``).

The run folder is what ``ctedge train --modality xray`` writes (slice_model.keras, config.json,
preprocessing.json, split.json, history.json), and its validation and hold-out are evaluated the
package's way (``training.slice_evaluate`` on the original files through the edge's reader, then
``training.xray_report``): report.json, which ``ctedge quantize`` puts on the card.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import tf_keras as keras
from tf_keras import layers

from edge.options import PipelineOptions
from training.archs import build_slice_model
from training.data import StudyRecord
from training.slice_evaluate import evaluate_slice_run
from training.slice_train import MODEL_FILE, SliceTrainConfig
from training.train import PREPROCESSING_FILE
from training.trunk import CORAL_MOBILENET_V2, _BN_OF, weights_provenance
from training.xray_report import build_report, write_report

PACK = Path(__file__).resolve().parents[3] / ".xft"
PARTS = Path(os.environ.get("XRAY_WORK", "/work/data")) / "xft"
NOTE = "research model - trained on public data, not validated for clinical use"


def keras_model(weights: dict[str, np.ndarray]) -> tuple[keras.Model, str]:
    """The package's MobileNetV2 X-ray model with the fine-tuned convolutions (each BN: identity plus the bias)."""
    built = build_slice_model("mobilenetv2", 224, 3)
    model = built.model
    convs = [layer for layer in model.layers if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D))]
    for i, layer in enumerate(convs):
        layer.set_weights([weights[f"k{i}"]])
        bias = weights[f"b{i}"]
        bn = model.get_layer(_BN_OF.get(layer.name, f"{layer.name}_BN"))
        bn.set_weights([np.ones_like(bias), bias, np.zeros_like(bias), np.full_like(bias, 1.0 - bn.epsilon)])
    model.get_layer("logits").set_weights([weights["logits_kernel"], weights["logits_bias"]])
    return model, built.gradcam_layer


def records(part: str) -> list[StudyRecord]:
    with open(PARTS / f"{part}.csv", newline="") as f:
        return [StudyRecord(r["patient"], r["class"], Path(r["path"])) for r in csv.DictReader(f)]


def main(results: Path, run: Path) -> None:
    runs = json.loads((results / "runs.json").read_text())
    seed = runs["kept_seed"]
    model, gradcam_layer = keras_model(dict(np.load(results / "finetuned.npz")))
    pack = np.load(PACK / "images.npz")
    torch_probs = np.load(results / "preds.npz")[f"main_seed{seed}"]
    idx = np.flatnonzero(pack["part"] == "holdout")
    offsets = pack["offsets"]
    x = np.stack([cv2.imdecode(pack["jpeg"][offsets[i]:offsets[i + 1]], cv2.IMREAD_GRAYSCALE) for i in idx])
    probs = model.predict(x[..., None].astype(np.float32), batch_size=32, verbose=0)
    check = {"images": len(idx), "argmax_agreement": float(np.mean(probs.argmax(1) == torch_probs[idx].argmax(1))),
             "max_abs_dp": float(np.abs(probs - torch_probs[idx]).max()),
             "mean_abs_dp": float(np.abs(probs - torch_probs[idx]).mean())}
    print("tf_keras vs PyTorch (bf16 on the GPU) on the packed hold-out:", check)
    if check["argmax_agreement"] < 0.98:
        raise SystemExit("the weights did not come across")
    run.mkdir(parents=True, exist_ok=True)
    model.save(run / MODEL_FILE)
    info = runs["runs"][f"main_seed{seed}"]
    options = PipelineOptions(input_size=224)
    config = SliceTrainConfig(arch="mobilenetv2", recipe="xray", learning_rate=1e-4, epochs=15, freeze_epochs=30,
                              batch_size=64, patience=3, val_fraction=0.15, seed=seed, weights=str(CORAL_MOBILENET_V2),
                              preprocessing=options, modality="xray", test_fraction=0.2)
    doc = asdict(config) | {
        "kind": config.kind, "classes": list(config.classes), "gradcam_layer": gradcam_layer,
        "trainer": ("docs/experiments/xray-finetune/finetune.py: the same MobileNetV2 in PyTorch on a lent NVIDIA H200 "
                    f"({runs['torch']}, bf16 autocast), weights brought back by import_weights.py; seeds 0-2, kept: the "
                    "lowest validation loss"),
        "augmentation": {"per_image": "rotation +-10 deg, scale 0.9-1.1, shift +-5%, brightness +-0.1, contrast 0.9-1.1",
                         "frozen_stage": "none: the head trains on features of the unaugmented images"},
        "selected_epoch": {"stage": "all" if info["best_epoch"] else "head", "epoch": info["best_epoch"],
                           "val_loss": info["best_val_loss"]},
        "fine_tuned": "every convolution; batch normalisation folded into the biases (frozen statistics)",
        "n_train_slices": int(np.sum(pack["part"] == "train")), "n_val_slices": int(np.sum(pack["part"] == "val")),
        "weights_file": weights_provenance(CORAL_MOBILENET_V2)}
    (run / "config.json").write_text(json.dumps(doc, indent=2, default=str))
    (run / PREPROCESSING_FILE).write_text(json.dumps({"preprocessing": asdict(options),
                                                      "training_range": {"slice_thickness_mm": None, "pixel_spacing_mm": None}}, indent=2))
    (run / "history.json").write_text(json.dumps(info["history"], indent=2))
    parts = {p: records(p) for p in ("train", "val", "holdout")}
    (run / "split.json").write_text(json.dumps({p: sorted({r.patient for r in rs}) for p, rs in parts.items()}, indent=2))
    val = evaluate_slice_run(run, parts["val"], run / "validation", note=f"validation; {NOTE}")["predictions"]
    held = evaluate_slice_run(run, parts["holdout"], run / "holdout", note=f"hold-out; {NOTE}")["predictions"]
    chosen = {"fold": 0, "rule": "the seed (of 0, 1, 2) with the lowest validation loss",
              "description": f"seed {seed} of 3 fine-tuning runs, the one with the lowest validation loss"}
    print(write_report(build_report([val], held, list(config.classes), chosen, NOTE), run))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
