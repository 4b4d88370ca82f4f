"""Slice classifiers by architecture name (``ctedge train --arch``) and the training recipes of the seeds.

Every slice model has the same outside: input one grey slice (size, size, 1) as float in
[0, 255] (the edge feeds its uint8 model input unchanged), copied to three channels and
normalised inside the model, a trunk of the named architecture, global average pooling, dropout,
a linear ``logits`` layer and a ``probabilities`` softmax. ``gradcam_layer`` names the layer whose
activations Grad-CAM weighs (the trunk's last feature map). Nothing is downloaded: pretrained
trunk weights come only from a local file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tf_keras as keras
from tf_keras import layers

from training.models import FPN_LAYERS, bit_trunk, load_local_weights, upsampling
from training.optimizers import Lamb
from training.recipes import ARCH_INFO, Recipe

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class Arch:
    """A named trunk: ``build(rgb tensor, weights) -> (feature map tensor, Grad-CAM layer name, trunk
    model)`` (the trunk's layers are what ``--freeze-epochs`` freezes), and how its RGB input is
    scaled (``imagenet``: mean/std of ImageNet on [0, 1]; ``symmetric``: [-1, 1], as MobileNetV2 was trained;
    ``raw``: [0, 255], the trunk normalises itself)."""

    build: Callable[[object, Path | None], tuple[object, str, keras.Model]]
    scaling: str = "imagenet"


def _application(name: str) -> Callable[[object, Path | None], tuple[object, str, keras.Model]]:
    def build(x, weights: Path | None) -> tuple[object, str, keras.Model]:
        trunk = getattr(keras.applications, name)(include_top=False, weights=None, input_tensor=x)
        load_local_weights(trunk, weights)
        return trunk.output, trunk.layers[-1].name, trunk
    return build


def _resnet50v2_fpn(x, weights: Path | None, pyramid_channels: int = 64) -> tuple[object, str, keras.Model]:
    """Rahimzadeh et al. 2021: ResNet50V2 with a concatenating feature pyramid; each of the five
    levels pooled into its own head of 2 ReLU units, the five concatenated (10 features)."""
    backbone = keras.applications.ResNet50V2(include_top=False, weights=None, input_tensor=x)
    load_local_weights(backbone, weights)
    levels = [backbone.get_layer(name).output for name in FPN_LAYERS]
    top = layers.Conv2D(pyramid_channels, 1, name="fpn_lateral5")(levels[-1])
    pyramid = [top]
    for i in range(len(levels) - 2, -1, -1):
        up = layers.UpSampling2D(size=upsampling(levels[i], top), name=f"fpn_up{i + 1}")(top)
        lateral = layers.Conv2D(pyramid_channels, 1, name=f"fpn_lateral{i + 1}")(levels[i])
        top = layers.Concatenate(name=f"fpn_concat{i + 1}")([up, lateral])
        top = layers.Conv2D(pyramid_channels, 3, padding="same", activation="relu", name=f"fpn_smooth{i + 1}")(top)
        pyramid.append(top)
    heads = [layers.Dense(2, activation="relu", name=f"head{i + 1}")(layers.GlobalAveragePooling2D()(p))
             for i, p in enumerate(pyramid)]
    features = layers.Reshape((1, 1, 2 * len(heads)), name="fpn_heads")(layers.Concatenate()(heads))  # pooled: 1 x 1
    return features, "fpn_smooth1", backbone


def _bit_r50x1(x, weights: Path | None) -> tuple[object, str, keras.Model]:
    """BiT-M R50x1 (Kolesnikov et al. 2020): ResNet-v2 with group normalisation and weight standardisation."""
    y = bit_trunk(x, depths=(3, 4, 6, 3))
    trunk = keras.Model(x, y, name="bit_r50x1")
    load_local_weights(trunk, weights)
    return y, "bit_post_relu", trunk


def _small_cnn(x, weights: Path | None, filters: tuple[int, ...] = (16, 32, 64, 128)) -> tuple[object, str, keras.Model]:
    """A compact CNN (the seed design's four Conv2D+ReLU layers with max-pooling between them)."""
    y = x
    for i, f in enumerate(filters, start=1):
        if i > 1:
            y = layers.MaxPooling2D(2)(y)
        y = layers.Conv2D(f, 3, padding="same", activation="relu", name=f"conv{i}")(y)
    trunk = keras.Model(x, y, name="small_cnn")
    load_local_weights(trunk, weights)
    return y, f"conv{len(filters)}", trunk


ARCHS: dict[str, Arch] = {
    "resnet50v2-fpn": Arch(_resnet50v2_fpn), "densenet121": Arch(_application("DenseNet121")),
    "bit-r50x1": Arch(_bit_r50x1), "small-cnn": Arch(_small_cnn),
} | {name.lower(): Arch(_application(name), {"EfficientNetB0": "raw", "MobileNetV2": "symmetric"}.get(name, "imagenet")) for name in (
    "ResNet50V2", "ResNet101V2", "DenseNet169", "DenseNet201", "Xception", "InceptionV3", "MobileNetV2", "EfficientNetB0")}
assert set(ARCHS) == set(ARCH_INFO), "every architecture has its canvas and source in training.recipes"


@dataclass
class SliceModel:
    model: keras.Model
    gradcam_layer: str
    trunk_layers: frozenset[str]      # what --freeze-epochs freezes for the first epochs
    trunk_order: tuple[str, ...] = ()  # the trunk's layer names, input to output
    norm_layers: frozenset[str] = frozenset()   # the trunk's BatchNormalization layers

    def frozen_for_fine_tuning(self, start: str | None) -> frozenset[str]:
        """The trunk layers that stay frozen when fine-tuning from layer ``start`` on: every one before
        it, and every BatchNormalization (kept in inference mode, as for small data); none when None."""
        if start is None:
            return frozenset()
        if start not in self.trunk_order:
            raise ValueError(f"--fine-tune-from: no trunk layer named {start!r} (e.g. {', '.join(self.trunk_order[-40::8])})")
        before = self.trunk_order[:self.trunk_order.index(start)]
        return frozenset(before) | self.norm_layers


def build_slice_model(arch: str, input_size: int, n_classes: int, weights: Path | None = None,
                      dropout: float = 0.3) -> SliceModel:
    """The slice classifier ``arch`` for (input_size, input_size, 1) slices; see the module docstring."""
    spec = ARCHS[arch]
    inputs = keras.Input((input_size, input_size, 1), name="slice")
    x = layers.Concatenate(name="grey_to_rgb")([inputs] * 3)
    if spec.scaling == "imagenet":
        x = layers.Rescaling(1.0 / 255.0)(x)
        x = layers.Normalization(mean=IMAGENET_MEAN, variance=IMAGENET_STD**2, name="imagenet_normalisation")(x)
    elif spec.scaling == "symmetric":
        x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="symmetric_scaling")(x)
    features, gradcam_layer, trunk = spec.build(x, weights)
    y = layers.GlobalAveragePooling2D(name="pool")(features)
    y = layers.Dropout(dropout, name="dropout")(y)
    logits = layers.Dense(n_classes, name="logits")(y)
    model = keras.Model(inputs, layers.Activation("softmax", name="probabilities")(logits), name=arch)
    weighted = [layer.name for layer in trunk.layers if layer.trainable_weights]
    norms = frozenset(layer.name for layer in trunk.layers if isinstance(layer, layers.BatchNormalization))
    return SliceModel(model, gradcam_layer, frozenset(weighted), tuple(weighted), norms & frozenset(weighted))


def make_optimizer(recipe: Recipe) -> keras.optimizers.Optimizer:
    """The recipe's optimiser at its base learning rate (the schedule is a callback, see ``learning_rate``)."""
    if recipe.optimizer == "lamb":
        return Lamb(recipe.learning_rate, weight_decay_rate=recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return keras.optimizers.SGD(recipe.learning_rate, momentum=0.9)
    return {"adam": keras.optimizers.Adam, "nadam": keras.optimizers.Nadam}[recipe.optimizer](recipe.learning_rate)
