"""U-Net lung segmentation: image/mask pairs on disk, training with Dice, split by patient prefix.

Pairs live as ``<root>/images/<patient>_<n>.png`` (uint8 lung-windowed 256x256 slices) and
``<root>/masks/<patient>_<n>.png`` (0/255). ``export_pairs`` writes them from studies with the
classical segmenter's masks, a bootstrap that a radiologist's corrected masks should replace.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import tf_keras as keras

from edge.pipeline import PipelineOptions, prepare_study
from training.data import DatasetError
from training.models import build_unet, dice_coefficient, dice_loss


def export_pairs(studies: list[Path], out_root: Path, every: int = 2) -> int:
    """Write lung-windowed slices and classical lung masks of every ``every``-th kept slice; return the count."""
    (out_root / "images").mkdir(parents=True, exist_ok=True)
    (out_root / "masks").mkdir(parents=True, exist_ok=True)
    count = 0
    for study in studies:
        prepared = prepare_study(study, PipelineOptions())
        for i in prepared.selection.kept_indices[::every]:
            name = f"{study.name}_{i:04d}.png"
            cv2.imwrite(str(out_root / "images" / name), prepared.windowed[i])
            cv2.imwrite(str(out_root / "masks" / name), prepared.lung_mask[i].astype(np.uint8) * 255)
            count += 1
    return count


def read_pairs(root: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images (n, H, W) uint8, masks (n, H, W) bool and each pair's patient (the name before the last '_')."""
    images, masks, patients = [], [], []
    files = sorted((root / "images").glob("*.png"))
    if not files:
        raise DatasetError(root / "images", "no PNG images")
    for f in files:
        mask_path = root / "masks" / f.name
        image, mask = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise DatasetError(f, "cannot be read as an image")
        if mask is None:
            raise DatasetError(mask_path, f"missing or unreadable mask for {f.name}")
        if mask.shape != image.shape:
            raise DatasetError(mask_path, f"mask is {mask.shape}, image is {image.shape}")
        images.append(image)
        masks.append(mask > 127)
        patients.append(f.stem.rsplit("_", 1)[0])
    return np.stack(images), np.stack(masks), patients


def train_unet(root: Path, run_dir: Path, epochs: int = 30, learning_rate: float = 1e-3, batch_size: int = 8,
               base_filters: int = 16, val_patients: int = 1, seed: int = 0) -> dict:
    """Train the U-Net on the pairs, holding out ``val_patients`` patients; save ``unet.keras`` and
    ``unet_metrics.json`` (validation Dice) to ``run_dir`` and return the metrics."""
    images, masks, patients = read_pairs(root)
    names = sorted(set(patients))
    rng = np.random.default_rng(seed)
    held_out = set(rng.permutation(names)[:val_patients].tolist()) if len(names) > val_patients else set()
    val = np.array([p in held_out for p in patients])
    x, y = images[..., None].astype(np.float32), masks[..., None].astype(np.float32)
    keras.utils.set_random_seed(seed)
    model = build_unet(images.shape[1:] + (1,), base_filters=base_filters)
    model.compile(keras.optimizers.Adam(learning_rate), dice_loss, metrics=[dice_coefficient])
    run_dir.mkdir(parents=True, exist_ok=True)
    monitor = "val_dice_coefficient" if val.any() else "dice_coefficient"
    history = model.fit(x[~val], y[~val], validation_data=(x[val], y[val]) if val.any() else None, epochs=epochs,
                        batch_size=batch_size, verbose=2,
                        callbacks=[keras.callbacks.EarlyStopping(monitor, mode="max", patience=10, restore_best_weights=True)])
    model.save(run_dir / "unet.keras")
    dice = float(dice_coefficient(y[val], model.predict(x[val], verbose=0))) if val.any() else None
    metrics = {"val_patients": sorted(held_out), "n_train": int((~val).sum()), "n_val": int(val.sum()),
               "val_dice": dice, "epochs": len(history.history["loss"])}
    (run_dir / "unet_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
