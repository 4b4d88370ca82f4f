"""Augmentations of the seed designs (NumPy/OpenCV), mixup, and the aspect-preserving canvas input."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

AUGMENTATIONS = ("rotate", "flip", "blur", "brightness")


def _apply(image: np.ndarray, kind: str, magnitude: float) -> np.ndarray:
    h, w = image.shape[:2]
    if kind == "rotate":
        m = cv2.getRotationMatrix2D((w / 2, h / 2), magnitude, 1.0)
        return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    if kind == "flip":
        return image[:, ::-1].copy()
    if kind == "blur":
        return cv2.GaussianBlur(image, (0, 0), max(magnitude, 1e-3)) if magnitude > 0 else image.copy()
    scaled = image.astype(np.float32) * (1.0 + magnitude)
    return np.clip(scaled, 0, 255).astype(image.dtype) if image.dtype == np.uint8 else scaled.astype(image.dtype)


def _draw(rng: np.random.Generator, max_rotation: float, max_blur_sigma: float, max_brightness: float) -> tuple[str, float]:
    kind = AUGMENTATIONS[rng.integers(len(AUGMENTATIONS))]
    magnitude = {"rotate": rng.uniform(-max_rotation, max_rotation), "flip": 0.0,
                 "blur": rng.uniform(0.0, max_blur_sigma), "brightness": rng.uniform(-max_brightness, max_brightness)}[kind]
    return kind, float(magnitude)


def random_augment(image: np.ndarray, rng: np.random.Generator, max_rotation: float = 15.0,
                   max_blur_sigma: float = 1.0, max_brightness: float = 0.15) -> np.ndarray:
    """One augmentation of a random type (rotation, horizontal flip, Gaussian blur, brightness) with a
    random magnitude in its range; shape and dtype are kept."""
    return _apply(image, *_draw(rng, max_rotation, max_blur_sigma, max_brightness))


def augment_group(group: np.ndarray, rng: np.random.Generator, **ranges) -> np.ndarray:
    """The same random augmentation applied to every slice of a (n, H, W) group."""
    kind, magnitude = _draw(rng, ranges.get("max_rotation", 15.0), ranges.get("max_blur_sigma", 1.0),
                            ranges.get("max_brightness", 0.15))
    return np.stack([_apply(s, kind, magnitude) for s in group])


def mixup(x: np.ndarray, y: np.ndarray, alpha: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mixup (Zhang et al. 2018): convex combinations of shuffled pairs of a batch and of their one-hot labels."""
    lam = rng.beta(alpha, alpha, size=len(x)).astype(np.float32)
    order = rng.permutation(len(x))
    lx = lam.reshape((-1,) + (1,) * (x.ndim - 1))
    return lx * x + (1 - lx) * x[order], lam[:, None] * y + (1 - lam[:, None]) * y[order]


@dataclass(frozen=True)
class XrayWarp:
    """The published DenseNet121 X-ray augmentation ranges (Luiz et al.): rotation, zoom and shear, each
    drawn uniformly in [-range, range] for every training image and epoch, applied as one affine warp
    (tf_keras has no shear layer, so this is OpenCV)."""

    rotation_deg: float = 5.0
    zoom: float = 0.02             # scale in [1 - zoom, 1 + zoom]
    shear_deg: float = 2.0

    def draw(self, rng: np.random.Generator) -> tuple[float, float, float]:
        """One (rotation in degrees, scale, shear in degrees)."""
        return (float(rng.uniform(-self.rotation_deg, self.rotation_deg)), float(1 + rng.uniform(-self.zoom, self.zoom)),
                float(rng.uniform(-self.shear_deg, self.shear_deg)))


XRAY_WARP = XrayWarp()


def warp_matrix(height: int, width: int, rotation_deg: float, scale: float, shear_deg: float) -> np.ndarray:
    """The 2 x 3 affine matrix about the image centre: horizontal shear (x += tan(shear) (y - centre)),
    then rotation (counter-clockwise as displayed) and scaling."""
    m = cv2.getRotationMatrix2D((width / 2, height / 2), rotation_deg, scale)
    shear = np.tan(np.radians(shear_deg))
    return (m @ np.array([[1, shear, -shear * height / 2], [0, 1, 0], [0, 0, 1]]))[:2]


def xray_augment(image: np.ndarray, rng: np.random.Generator, ranges: XrayWarp = XRAY_WARP) -> np.ndarray:
    """``image`` warped by a random rotation, zoom and shear within ``ranges``; shape and dtype kept."""
    h, w = image.shape[:2]
    return cv2.warpAffine(image, warp_matrix(h, w, *ranges.draw(rng)), (w, h), flags=cv2.INTER_LINEAR, borderValue=0)


def custom_canvas(image: np.ndarray, size: int = 224, fill: float = 0) -> np.ndarray:
    """Alshazly et al.'s input: scale so the longer side is ``size`` (aspect ratio kept, never
    stretched) and embed the image centred in a ``size`` x ``size`` canvas padded with ``fill``."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    canvas = np.full((size, size) + image.shape[2:], fill, dtype=image.dtype)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top:top + nh, left:left + nw] = resized
    return canvas
