"""Synthetic chest radiographs for the X-ray training tests: a phantom per class, and labelled
``<class>/<image>.png`` folders of them."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge import CLASSES


def radiograph_phantom(label: str, size: int, seed: int) -> np.ndarray:
    """A frontal chest-like picture: bright body, two dark lung fields, bright patches for disease
    (many small peripheral ones for covid, one large lower-lobe one for other_pneumonia)."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size), 170.0)
    for cx in (0.3, 0.7):
        cv2.ellipse(img, (int(cx * size), int(0.45 * size)), (int(0.15 * size), int(0.3 * size)), 0, 0, 360, 40, -1)
    if label == "covid":
        for _ in range(6):
            x, y = rng.choice([0.2, 0.8]) * size, rng.uniform(0.3, 0.7) * size
            cv2.circle(img, (int(x), int(y)), max(2, size // 20), 120, -1)
    elif label == "other_pneumonia":
        cv2.ellipse(img, (int(rng.choice([0.3, 0.7]) * size), int(0.62 * size)), (size // 8, size // 10), 0, 0, 360, 150, -1)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def radiograph_folders(root: Path, size: int = 96, per_class: int = 4) -> Path:
    """``root/<class>/<class>-<i>.png``: ``per_class`` phantoms of each class (seeds ``10 * k + i``)."""
    for k, label in enumerate(CLASSES):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cv2.imwrite(str(root / label / f"{label}-{i}.png"), radiograph_phantom(label, size, 10 * k + i))
    return root
