"""Keras model builders (tf_keras, i.e. Keras 2: its LSTMs convert to fused int8 TFLite ops).

One builder per published architecture; none downloads weights. Where pretrained weights are
wanted, pass a local file with ``weights=PATH``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tf_keras import layers


def build_encoder(input_shape: tuple[int, int, int] = (256, 256, 1),
                  filters: tuple[int, ...] = (16, 32, 64, 128)) -> keras.Model:
    """The seed design's compact CNN: four Conv2D+ReLU layers (max-pooling between them), each
    layer's output global-max-pooled, the four vectors concatenated (sum(filters) features).

    Input: a slice as float in [0, 255]. The convolutions are named ``conv1``..``conv4``. The global
    max-pool is a max-pool over the whole map: the same numbers, but TFLite's XNNPACK delegate runs
    MAX_POOL_2D and leaves REDUCE_MAX to a slow reference kernel.
    """
    inputs = keras.Input(input_shape, name="slice")
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    pooled = []
    for i, f in enumerate(filters, start=1):
        if i > 1:
            x = layers.MaxPooling2D(2)(x)
        x = layers.Conv2D(f, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        pooled.append(layers.Flatten(name=f"gmp{i}")(layers.MaxPooling2D(tuple(x.shape[1:3]))(x)))
    return keras.Model(inputs, layers.Concatenate(name="features")(pooled), name="encoder")


def predict_group(encoder: keras.Model, head: keras.Model, group: np.ndarray) -> np.ndarray:
    """Class probabilities (3,) of one (group size, H, W) uint8 group with the Keras encoder and head:
    the one way training, evaluation, explanation, conversion and the benchmark run the float model."""
    features = encoder(group[..., None].astype(np.float32), training=False)
    return head(features[None], training=False).numpy()[0]


def build_slice_classifier(encoder: keras.Model, n_classes: int = 3, dropout: float = 0.3) -> keras.Model:
    """Stage 1 of the seed's training: the encoder plus a softmax layer, trained on single slices."""
    x = layers.Dropout(dropout)(encoder.output)
    outputs = layers.Dense(n_classes, activation="softmax", name="slice_softmax")(x)
    return keras.Model(encoder.input, outputs, name="slice_classifier")


def build_head(n_slices: int = 50, feature_dim: int = 240, lstm_units: int = 64, dense_units: int = 64,
               dropout: float = 0.3, n_classes: int = 3) -> keras.Model:
    """Stage 2 of the seed design: a bidirectional LSTM over a group's slice features keeping every
    time step, flattened, a dense layer with dropout and a softmax over the classes."""
    inputs = keras.Input((n_slices, feature_dim), name="features")
    x = layers.Bidirectional(layers.LSTM(lstm_units, return_sequences=True), name="bilstm")(inputs)
    x = layers.Flatten()(x)
    x = layers.Dense(dense_units, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    return keras.Model(inputs, layers.Dense(n_classes, activation="softmax")(x), name="head")


def build_unet(input_shape: tuple[int, int, int] = (256, 256, 1), base_filters: int = 16, depth: int = 4) -> keras.Model:
    """U-Net lung segmenter (Ronneberger et al. 2015): input float in [0, 255], sigmoid mask out."""
    inputs = keras.Input(input_shape)
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    skips = []
    for d in range(depth):
        x = _double_conv(x, base_filters * 2**d)
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
    x = _double_conv(x, base_filters * 2**depth)
    for d in reversed(range(depth)):
        x = layers.Conv2DTranspose(base_filters * 2**d, 2, strides=2, padding="same")(x)
        x = _double_conv(layers.Concatenate()([x, skips[d]]), base_filters * 2**d)
    return keras.Model(inputs, layers.Conv2D(1, 1, activation="sigmoid", name="mask")(x), name="unet")


def _double_conv(x, filters: int):
    for _ in range(2):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    return x


def dice_coefficient(y_true, y_pred, smooth: float = 1.0):
    """Soft Dice overlap of masks, averaged over the batch."""
    axes = tuple(range(1, len(y_pred.shape)))
    y_true = tf.cast(y_true, y_pred.dtype)
    inter = tf.reduce_sum(y_true * y_pred, axis=axes)
    total = tf.reduce_sum(y_true, axis=axes) + tf.reduce_sum(y_pred, axis=axes)
    return tf.reduce_mean((2.0 * inter + smooth) / (total + smooth))


def dice_loss(y_true, y_pred):
    """1 - Dice, for training the U-Net."""
    return 1.0 - dice_coefficient(y_true, y_pred)


FPN_LAYERS = ("conv1_conv", "conv2_block3_1_relu", "conv3_block4_1_relu", "conv4_block6_1_relu", "post_relu")
"""ResNet50V2 outputs feeding the pyramid of ``training.archs`` (resnet50v2-fpn): strides 2, 4, 8, 16 and 32."""


def upsampling(fine, coarse) -> tuple[int, int]:
    """The factors that bring the coarse map to the fine map's size."""
    return fine.shape[1] // coarse.shape[1], fine.shape[2] // coarse.shape[2]


def build_densenet121_xray(input_shape: tuple[int, int, int] = (224, 224, 3), n_classes: int = 3,
                           weights: str | Path | None = None) -> keras.Model:
    """DenseNet121 for three-class chest X-ray (COVID-19 / pneumonia / normal): global average
    pooling and softmax on the DenseNet121 trunk (train with ``training.augment.xray_augment``)."""
    trunk = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=input_shape)
    load_local_weights(trunk, weights)
    x = layers.GlobalAveragePooling2D()(trunk.output)
    return keras.Model(trunk.input, layers.Dense(n_classes, activation="softmax")(x), name="densenet121_xray")


class StandardizedConv2D(layers.Conv2D):
    """Conv2D with weight standardisation (Qiao et al. 2019), as in BiT: each output channel's
    kernel is shifted to zero mean and scaled to unit variance before the convolution."""

    def convolution_op(self, inputs, kernel):
        mean, var = tf.nn.moments(kernel, axes=[0, 1, 2], keepdims=True)
        return super().convolution_op(inputs, (kernel - mean) / tf.sqrt(var + 1e-10))


def build_bit_resnet(input_shape: tuple[int, int, int] = (128, 128, 3), n_classes: int = 3,
                     depths: tuple[int, ...] = (2, 2, 2, 2), width: int = 1, groups: int = 32) -> keras.Model:
    """BiT-style ResNet-v2 (Kolesnikov et al. 2020, Big Transfer): pre-activation bottleneck blocks
    with group normalisation and weight-standardised convolutions. BiT-M R50x1 is depths (3, 4, 6, 3)."""
    inputs = keras.Input(input_shape)
    x = layers.GlobalAveragePooling2D()(bit_trunk(inputs, depths, width, groups))
    return keras.Model(inputs, layers.Dense(n_classes, activation="softmax")(x), name="bit_resnet")


def bit_trunk(x, depths: tuple[int, ...] = (3, 4, 6, 3), width: int = 1, groups: int = 32):
    """The BiT ResNet-v2 trunk on tensor ``x``: its last feature map, after the final GroupNorm and
    the ReLU named ``bit_post_relu``."""
    x = StandardizedConv2D(64 * width, 7, strides=2, padding="same", use_bias=False, name="root_conv")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    for stage, blocks in enumerate(depths):
        for block in range(blocks):
            x = _bit_block(x, 64 * width * 2**stage, 2 if block == 0 and stage > 0 else 1, groups)
    return layers.ReLU(name="bit_post_relu")(layers.GroupNormalization(groups)(x))


def _bit_block(x, mid: int, stride: int, groups: int):
    out = 4 * mid
    pre = layers.ReLU()(layers.GroupNormalization(groups)(x))
    shortcut = x if x.shape[-1] == out and stride == 1 else StandardizedConv2D(out, 1, strides=stride, use_bias=False)(pre)
    y = StandardizedConv2D(mid, 1, use_bias=False)(pre)
    y = StandardizedConv2D(mid, 3, strides=stride, padding="same", use_bias=False)(layers.ReLU()(layers.GroupNormalization(groups)(y)))
    y = StandardizedConv2D(out, 1, use_bias=False)(layers.ReLU()(layers.GroupNormalization(groups)(y)))
    return layers.Add()([shortcut, y])


def load_local_weights(model: keras.Model, weights: str | Path | None) -> None:
    """Load a local weights file into ``model``: Keras weights (``.h5`` by layer name), or a uint8 TFLite
    MobileNetV2 (``.tflite``, dequantised by :func:`training.trunk.load_tflite_weights`)."""
    if weights is None:
        return
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pretrained weights file not found (weights are never downloaded)")
    if path.suffix == ".tflite":
        from training.trunk import load_tflite_weights
        load_tflite_weights(model, path)
        return
    model.load_weights(str(path), by_name=path.suffix == ".h5", skip_mismatch=path.suffix == ".h5")
