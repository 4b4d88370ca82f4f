"""Each builder trains on a small synthetic task where the class is visible (2 CPU cores, seconds each)."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import tf_keras as keras  # noqa: E402

from training.archs import build_slice_model  # noqa: E402
from training.models import (FPN_LAYERS, build_bit_resnet, build_densenet121_xray, build_encoder, build_head,  # noqa: E402
                             build_slice_classifier, build_unet, dice_coefficient, dice_loss)
from training.optimizers import Lamb  # noqa: E402

pytestmark = pytest.mark.train  # trains, converts or exports Keras models


def blobs(n: int, size: int, seed: int, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Noise images; class 1 has a bright Gaussian blob somewhere. Values in [0, 255]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    y = rng.integers(0, 2, n)
    x = rng.normal(60, 20, (n, size, size)).clip(0, 255)
    for i in np.flatnonzero(y):
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        x[i] += 150 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 10) ** 2))
    x = np.repeat(x.clip(0, 255)[..., None], channels, axis=-1).astype(np.float32)
    return x, y


def fit_and_score(model, x, y, xv, yv, epochs, lr=3e-3, batch_size=16):
    keras.utils.set_random_seed(0)
    model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0)
    return history.history["loss"], model.evaluate(xv, yv, verbose=0)[1]


def test_encoder_is_four_convs_max_pooled_and_concatenated():
    enc = build_encoder(filters=(16, 32, 64, 128))
    assert enc.output_shape == (None, 240)
    assert [layer.name for layer in enc.layers if layer.name.startswith("conv")] == ["conv1", "conv2", "conv3", "conv4"]
    convs = keras.Model(enc.input, [enc.get_layer(f"conv{i}").output for i in range(1, 5)])
    x = np.random.default_rng(0).integers(0, 256, (2, 256, 256, 1)).astype(np.float32)
    global_max = np.concatenate([c.max(axis=(1, 2)) for c in convs.predict(x, verbose=0)], axis=1)
    assert np.allclose(enc.predict(x, verbose=0), global_max)


def test_slice_classifier_trains_on_blobs():
    x, y = blobs(240, 64, seed=0)
    xv, yv = blobs(80, 64, seed=1)
    model = build_slice_classifier(build_encoder((64, 64, 1), filters=(8, 16, 16, 16)), n_classes=2)
    loss, acc = fit_and_score(model, x, y, xv, yv, epochs=8)
    assert loss[-1] < loss[0] and acc >= 0.85


def test_head_trains_on_sequences_and_outputs_probabilities():
    rng = np.random.default_rng(0)

    def sequences(n):
        y = rng.integers(0, 3, n)
        x = rng.normal(0, 1, (n, 10, 6)).astype(np.float32)
        x[np.arange(n), :, y] += 1.5
        return x, y

    (x, y), (xv, yv) = sequences(300), sequences(90)
    head = build_head(n_slices=10, feature_dim=6, lstm_units=8, dense_units=16)
    loss, acc = fit_and_score(head, x, y, xv, yv, epochs=10)
    assert loss[-1] < loss[0] and acc >= 0.8
    assert np.allclose(head.predict(xv[:4], verbose=0).sum(axis=1), 1.0, atol=1e-5)


def test_unet_segments_discs():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]

    def discs(n):
        c = rng.integers(10, 22, (n, 2))
        r = rng.integers(5, 9, n)
        m = ((yy - c[:, :1, None]) ** 2 + (xx - c[:, 1:, None]) ** 2 <= r[:, None, None] ** 2).astype(np.float32)
        return (m * 150 + rng.normal(50, 15, m.shape)).clip(0, 255)[..., None].astype(np.float32), m[..., None]

    (x, m), (xv, mv) = discs(160), discs(40)
    unet = build_unet((32, 32, 1), base_filters=8, depth=2)
    keras.utils.set_random_seed(0)
    unet.compile(keras.optimizers.Adam(3e-3), dice_loss, metrics=[dice_coefficient])
    unet.fit(x, m, epochs=12, batch_size=16, verbose=0)
    assert float(dice_coefficient(mv, unet.predict(xv, verbose=0))) > 0.8


def test_bit_resnet_trains_and_standardises_weights():
    x, y = blobs(160, 32, seed=2, channels=3)
    xv, yv = blobs(60, 32, seed=3, channels=3)
    model = build_bit_resnet((32, 32, 3), n_classes=2, depths=(1, 1), groups=8)
    assert any(isinstance(layer, keras.layers.GroupNormalization) for layer in model.layers)
    loss, acc = fit_and_score(model, x / 255.0, y, xv / 255.0, yv, epochs=8, lr=1e-3)
    assert loss[-1] < loss[0] and acc >= 0.8


@pytest.mark.parametrize("builder", [lambda: build_slice_model("resnet50v2-fpn", 64, 2).model,
                                     lambda: build_densenet121_xray((64, 64, 3), n_classes=2)], ids=["fpn", "densenet"])
def test_large_backbones_learn_a_batch(builder):
    """ResNet50V2+FPN (24 M parameters) and DenseNet121 (7 M) are too big to train to a held-out score
    on 2 CPU cores within a test; the loss must fall when fitting one small batch."""
    model = builder()
    x, y = blobs(16, 64, seed=4, channels=model.input_shape[-1])
    scale = 1.0 if model.input_shape[-1] == 1 else 255.0     # slice models take grey [0, 255]
    loss, _ = fit_and_score(model, x / scale, y, x / scale, y, epochs=6, lr=1e-3)
    assert loss[-1] < 0.7 * loss[0]


def test_fpn_has_five_heads_of_two_relu_units():
    built = build_slice_model("resnet50v2-fpn", 64, 3)
    heads = [layer for layer in built.model.layers if layer.name.startswith("head")]
    assert len(heads) == len(FPN_LAYERS) == 5
    assert all(h.units == 2 and h.activation.__name__ == "relu" for h in heads)
    assert built.model.get_layer("logits").input_shape == (None, 10) and built.gradcam_layer == "fpn_smooth1"


def test_local_weights_file_is_loaded_and_a_missing_one_named(tmp_path):
    trunk = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(64, 64, 3))
    path = tmp_path / "densenet.h5"
    trunk.save_weights(str(path))
    model = build_densenet121_xray((64, 64, 3), weights=path)
    assert all(np.array_equal(a, b) for a, b in zip(trunk.get_weights(), model.get_weights()))
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        build_slice_model("resnet50v2-fpn", 64, 2, weights=tmp_path / "nope.h5")


def test_lamb_step_matches_a_numpy_reference():
    w0 = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
    g = np.array([[0.1, -0.3], [0.2, 0.05]], np.float32)
    var = tf.Variable(w0)
    opt = Lamb(learning_rate=0.1, weight_decay_rate=0.01)
    opt.apply_gradients([(tf.constant(g), var)])
    m, v = 0.1 * g, 0.001 * g**2
    update = (m / 0.1) / (np.sqrt(v / 0.001) + 1e-6) + 0.01 * w0
    trust = np.linalg.norm(w0) / np.linalg.norm(update)
    assert np.allclose(var.numpy(), w0 - 0.1 * trust * update, atol=1e-5)


def test_lamb_trains_a_model():
    x, y = blobs(160, 32, seed=5)
    xv, yv = blobs(60, 32, seed=6)
    model = build_slice_classifier(build_encoder((32, 32, 1), filters=(8, 8, 8, 8)), n_classes=2)
    keras.utils.set_random_seed(0)
    model.compile(Lamb(3e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=8, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert model.evaluate(xv, yv, verbose=0)[1] >= 0.8
