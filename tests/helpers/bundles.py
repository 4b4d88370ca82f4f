"""A model bundle whose answer is known by construction, for tests of what surrounds the model.

Its head ignores the slices: a zero kernel and the bias ``log(p)`` give every group the softmax
``p`` (default covid 0.1, other_pneumonia 0.8, healthy 0.1), so every study's verdict is
``other_pneumonia`` with exactly those probabilities, whatever the bundled demonstration model
would say. Only a float32 variant; no explain models (no heatmaps).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge import CLASSES
from edge.options import PipelineOptions

KNOWN_PROBABILITIES = (0.1, 0.8, 0.1)
KNOWN_LABEL = CLASSES[int(np.argmax(KNOWN_PROBABILITIES))]


def make_constant_bundle(out: Path, probabilities: tuple[float, ...] = KNOWN_PROBABILITIES) -> Path:
    """Write the bundle to ``out`` (needs TensorFlow, as the tests have) and return ``out``."""
    import training  # noqa: F401  (tf_keras set-up)
    import tf_keras as keras

    from quantize.convert import convert

    options = PipelineOptions()
    size, n = options.input_size, options.group_size
    slices = keras.Input((size, size, 1))
    encoder = keras.Model(slices, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(slices)))
    features = keras.Input((n, 4))
    dense = keras.layers.Dense(len(CLASSES), activation="softmax", kernel_initializer="zeros",
                               bias_initializer=keras.initializers.Constant(np.log(probabilities)))
    head = keras.Model(features, dense(keras.layers.Flatten()(features)))
    out.mkdir(parents=True, exist_ok=True)
    (out / "encoder_float32.tflite").write_bytes(convert(encoder, (n, size, size, 1), "float32"))
    (out / "head_float32.tflite").write_bytes(convert(head, (1, n, 4), "float32"))
    card = {"name": "constant-test-model", "version": "1", "classes": list(CLASSES), "demonstration": True,
            "placeholder": False, "note": "Test fixture: answers other_pneumonia 0.8 for every study. Not a model.",
            "preprocessing": options.model_input() | {"override": options.override}, "training_range": {},
            "variants": {"float32": {"encoder": "encoder_float32.tflite", "head": "head_float32.tflite"}}}
    (out / "model.json").write_text(json.dumps(card, indent=2))
    return out


SLICE_WEIGHT, SLICE_BIAS = 0.08, (-3.0, -6.0, 0.0)


def slice_probabilities(image_means: np.ndarray, classes: tuple[str, ...] = CLASSES,
                        weight: float = SLICE_WEIGHT) -> np.ndarray:
    """What the slice fixture answers for slices of the given mean grey value: the softmax of
    ``weight * mean + SLICE_BIAS`` (the first class's score grows with the mean; two classes
    take the first and last bias)."""
    bias = np.array(SLICE_BIAS if len(classes) == 3 else (SLICE_BIAS[0], SLICE_BIAS[-1]))
    logits = np.zeros((len(image_means), len(classes)))
    logits[:, 0] = weight * np.asarray(image_means, float)
    logits += bias
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def make_slice_bundle(out: Path, classes: tuple[str, ...] = CLASSES, rule: dict | None = None) -> Path:
    """A ``slice`` bundle whose answer is known by construction (:func:`slice_probabilities` of each
    slice's mean model-input grey value): a global average pool and a fixed dense layer. Only a
    float32 variant; no explain model."""
    import training  # noqa: F401  (tf_keras set-up)
    import tf_keras as keras

    from quantize.convert import convert

    options = PipelineOptions()
    size = options.input_size
    image = keras.Input((size, size, 1))
    kernel = np.zeros((1, len(classes)), np.float32)
    kernel[0, 0] = SLICE_WEIGHT
    bias = slice_probabilities(np.zeros(1), classes)[0]
    dense = keras.layers.Dense(len(classes), activation="softmax", kernel_initializer=keras.initializers.Constant(kernel),
                               bias_initializer=keras.initializers.Constant(np.log(bias)))
    model = keras.Model(image, dense(keras.layers.GlobalAveragePooling2D()(image)))
    out.mkdir(parents=True, exist_ok=True)
    (out / "slice_float32.tflite").write_bytes(convert(model, (1, size, size, 1), "float32"))
    card = {"name": "slice-test-model", "version": "1", "kind": "slice", "classes": list(classes),
            "patient_rule": rule or {"name": "fraction", "threshold": 0.1}, "demonstration": True,
            "placeholder": False, "note": "Test fixture: a fixed function of each slice's mean grey value. Not a model.",
            "preprocessing": options.model_input() | {"override": options.override}, "training_range": {},
            "variants": {"float32": {"model": "slice_float32.tflite"}}}
    (out / "model.json").write_text(json.dumps(card, indent=2))
    return out


IMAGE_WEIGHT, IMAGE_SIZE = 0.02, 64


def make_image_bundle(out: Path) -> Path:
    """An UNTRAINED ``image`` (chest X-ray) bundle flagged ``placeholder``, whose answer is known by
    construction: ``slice_probabilities(mean, weight=IMAGE_WEIGHT)`` of the radiograph's mean model-input
    grey value. An identity 1x1 convolution (``conv``) feeds the pool, so its float32 Grad-CAM model
    gives the model input itself (scaled to a maximum of 1) as the heatmap of the first class, and
    zeros for the others."""
    import training  # noqa: F401  (tf_keras set-up)
    import tf_keras as keras

    from quantize.convert import convert, export_slice_explain

    options = PipelineOptions(input_size=IMAGE_SIZE)
    image = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1))
    maps = keras.layers.Conv2D(1, 1, name="conv", kernel_initializer="ones", bias_initializer="zeros")(image)
    kernel = np.zeros((1, len(CLASSES)), np.float32)
    kernel[0, 0] = IMAGE_WEIGHT
    logits = keras.layers.Dense(len(CLASSES), name="logits", kernel_initializer=keras.initializers.Constant(kernel),
                                bias_initializer=keras.initializers.Constant(np.array(SLICE_BIAS, np.float32)))(
        keras.layers.GlobalAveragePooling2D()(maps))
    model = keras.Model(image, keras.layers.Softmax()(logits))
    out.mkdir(parents=True, exist_ok=True)
    shape = (1, IMAGE_SIZE, IMAGE_SIZE, 1)
    (out / "image_float32.tflite").write_bytes(convert(model, shape, "float32"))
    card = {"name": "xray-test-placeholder", "version": "0", "kind": "image", "modality": "xray",
            "classes": list(CLASSES), "demonstration": True, "placeholder": True,
            "note": "Test fixture, untrained: a fixed function of the radiograph's mean grey value. Not a model.",
            "preprocessing": options.model_input() | {"override": options.override}, "training_range": {},
            "variants": {"float32": {"model": "image_float32.tflite"}},
            "explain": export_slice_explain(model, "conv", out, shape)}
    (out / "model.json").write_text(json.dumps(card, indent=2))
    return out
