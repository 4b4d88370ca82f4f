import numpy as np
import pytest

from training.augment import augment_group, custom_canvas, mixup, random_augment, xray_augment


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


def test_xray_augmentation_is_light():
    img = np.zeros((100, 100), np.uint8)
    img[40:60, 40:60] = 255
    out = xray_augment(img, np.random.default_rng(1))
    assert out.shape == img.shape
    assert abs(int(out.astype(bool).sum()) - 400) < 80, "at most 2% zoom and small rotation/shear"
