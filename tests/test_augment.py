import cv2
import numpy as np
import pytest

from training.augment import (
    XRAY_WARP,
    XrayWarp,
    augment_group,
    custom_canvas,
    mixup,
    random_augment,
    warp_matrix,
    xray_augment,
)


def test_random_augment_keeps_shape_and_dtype_and_is_seeded():
    img = np.random.default_rng(0).integers(0, 255, (64, 48), dtype=np.uint8)
    outs = [random_augment(img, np.random.default_rng(s)) for s in range(12)]
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs)
    assert np.array_equal(random_augment(img, np.random.default_rng(3)), outs[3])
    assert any(not np.array_equal(o, img) for o in outs)


def test_group_gets_one_consistent_transform():
    rng = np.random.default_rng(0)
    slice_ = rng.integers(0, 255, (32, 32), dtype=np.uint8)
    group = np.stack([slice_] * 5)
    out = augment_group(group, np.random.default_rng(7))
    assert all(np.array_equal(out[0], s) for s in out)


def test_flip_is_a_mirror_image():
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for seed in range(40):
        out = random_augment(img, np.random.default_rng(seed), max_rotation=0, max_blur_sigma=0, max_brightness=0)
        if not np.array_equal(out, img):
            assert np.array_equal(out, img[:, ::-1])
            return
    pytest.fail("no flip drawn in 40 seeds")


def test_custom_canvas_keeps_the_aspect_ratio():
    canvas = custom_canvas(np.ones((100, 50), np.float32), size=224)
    assert canvas.shape == (224, 224)
    rows, cols = np.flatnonzero(canvas.any(axis=1)), np.flatnonzero(canvas.any(axis=0))
    assert len(rows) == 224 and len(cols) == 112 and cols[0] == 56


def test_mixup_mixes_labels_between_the_pair():
    rng = np.random.default_rng(0)
    x = rng.random((8, 4, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 8)]
    xm, ym = mixup(x, y, 0.4, rng)
    assert np.allclose(ym.sum(axis=1), 1) and (ym >= 0).all() and (ym <= 1).all()
    assert xm.shape == x.shape and xm.min() >= x.min() - 1e-6 and xm.max() <= x.max() + 1e-6


def orientation(image: np.ndarray) -> float:
    """Angle in degrees of the principal axis of the image's intensity, from the x axis (rows downwards)."""
    m = cv2.moments(image.astype(np.float32))
    return float(np.degrees(0.5 * np.arctan2(2 * m["mu11"], m["mu20"] - m["mu02"])))


def warp(image: np.ndarray, rotation: float, scale: float, shear: float) -> np.ndarray:
    h, w = image.shape
    return cv2.warpAffine(image, warp_matrix(h, w, rotation, scale, shear), (w, h), flags=cv2.INTER_LINEAR)


def test_the_xray_warp_rotates_zooms_and_shears_by_the_given_amounts():
    horizontal, vertical, disk = (np.zeros((101, 101), np.float32) for _ in range(3))
    horizontal[49:52, 10:91] = vertical[10:91, 49:52] = 1
    cv2.circle(disk, (50, 50), 30, 1, -1)
    assert orientation(horizontal) == pytest.approx(0, abs=1e-6)
    assert orientation(warp(horizontal, 4, 1, 0)) == pytest.approx(-4, abs=0.05)     # counter-clockwise as displayed
    assert orientation(warp(horizontal, -4, 1, 0)) == pytest.approx(4, abs=0.05)
    assert warp(disk, 0, 1.02, 0).sum() / disk.sum() == pytest.approx(1.02 ** 2, rel=1e-3)   # area scales with zoom^2
    assert warp(disk, 0, 0.98, 0).sum() / disk.sum() == pytest.approx(0.98 ** 2, rel=1e-3)
    assert 90 - orientation(warp(vertical, 0, 1, 2)) == pytest.approx(2, abs=0.05)  # a vertical line tilts by the shear
    assert orientation(warp(horizontal, 0, 1, 2)) == pytest.approx(0, abs=0.05)     # a horizontal one does not
    assert warp(horizontal, 0, 1, 2).sum() == pytest.approx(horizontal.sum(), rel=1e-3)  # shear keeps the area


def test_xray_augmentation_draws_within_the_published_ranges_and_is_seeded():
    assert XRAY_WARP == XrayWarp(rotation_deg=5.0, zoom=0.02, shear_deg=2.0)
    rng = np.random.default_rng(0)
    rotation, scale, shear = np.array([XRAY_WARP.draw(rng) for _ in range(2000)]).T
    for values, limit in ((rotation, 5.0), (scale - 1, 0.02), (shear, 2.0)):
        assert np.abs(values).max() <= limit and values.min() < -0.95 * limit and values.max() > 0.95 * limit
    img = np.random.default_rng(1).integers(0, 255, (64, 48), dtype=np.uint8)
    out = xray_augment(img, np.random.default_rng(3))
    expected = cv2.warpAffine(img, warp_matrix(64, 48, *XRAY_WARP.draw(np.random.default_rng(3))), (48, 64),
                              flags=cv2.INTER_LINEAR, borderValue=0)
    assert out.dtype == np.uint8 and np.array_equal(out, expected) and not np.array_equal(out, img)
