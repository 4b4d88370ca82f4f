"""Grad-CAM points at the evidence, and the consistency check follows a moved image."""

import numpy as np
import pytest

pytest.importorskip("tensorflow")
import tf_keras as keras  # noqa: E402

from training.gradcam import consistency, gradcam_group, gradcam_slices  # noqa: E402
from training.models import build_encoder, build_head, build_slice_classifier  # noqa: E402

pytestmark = pytest.mark.train  # trains, converts or exports Keras models


@pytest.fixture(scope="module")
def trained():
    """A small encoder trained to find a bright blob; returns (encoder, softmax layer, blob image)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]

    def sample(with_blob, cy=32, cx=32):
        img = rng.normal(50, 10, (64, 64))
        if with_blob:
            img += 180 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 40.0)
        return img.clip(0, 255)

    x = np.stack([sample(i % 2, *rng.integers(16, 48, 2)) for i in range(200)])[..., None].astype(np.float32)
    y = np.arange(200) % 2
    encoder = build_encoder((64, 64, 1), filters=(8, 16, 16, 16))
    model = build_slice_classifier(encoder, n_classes=2, dropout=0.0)
    keras.utils.set_random_seed(0)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=8, batch_size=16, verbose=0)
    return encoder, model.get_layer("slice_softmax"), sample(True, 20, 40).astype(np.uint8)


def test_heatmap_peaks_on_the_blob(trained):
    encoder, softmax, image = trained
    heat = gradcam_slices(encoder, softmax, image[None], class_index=1)[0]
    assert heat.shape == image.shape and 0 <= heat.min() and heat.max() == pytest.approx(1.0)
    near = (np.mgrid[0:64, 0:64] - np.array([20, 40])[:, None, None]) ** 2
    near = near.sum(axis=0) <= 12**2
    assert heat[near].mean() > 3 * heat[~near].mean(), "the heat must sit on the blob"


def test_consistency_is_high_for_a_model_that_tracks_the_blob(trained):
    encoder, softmax, image = trained
    result = consistency(encoder, softmax, image, class_index=1)
    assert set(result["similarities"]) == {"rotate clockwise", "rotate counter-clockwise",
                                           "translate (30, -15)", "translate (-20, 15)"}
    assert result["mean"] > 0.6


def test_group_gradcam_ranks_the_slice_with_evidence(trained):
    encoder, _, image = trained
    rng = np.random.default_rng(1)
    blank = np.full((64, 64), 50, np.uint8)

    def group(position):
        g = np.stack([blank] * 10)
        if position is not None:
            g[position] = image
        return g

    groups = [group(rng.integers(10) if i % 2 else None) for i in range(80)]
    feats = np.stack([encoder(g[..., None].astype(np.float32)).numpy() for g in groups])
    head = build_head(n_slices=10, feature_dim=feats.shape[2], lstm_units=16, dense_units=16, n_classes=2)
    keras.utils.set_random_seed(0)
    head.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = head.fit(feats, np.arange(80) % 2, epochs=40, verbose=0)
    assert history.history["accuracy"][-1] >= 0.9, "the head must have learnt the task for its Grad-CAM to mean anything"
    heat, share = gradcam_group(encoder, head, group(6), class_index=1)
    assert heat.shape == (10, 64, 64)
    assert share.sum() == pytest.approx(1.0) and int(np.argmax(share)) == 6
