"""Keras (tf_keras) models -> TFLite with static shapes: float32, float16, dynamic-range and full int8.

The CNN encoder and the biLSTM head are converted separately: full-integer conversion of the
whole CNN+LSTM model crashes the converter, and a tf_keras LSTM converts to fused
UNIDIRECTIONAL_SEQUENCE_LSTM ops that quantise fully.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

import training  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import numpy as np
import tensorflow as tf
import tf_keras as keras

from edge.card import CARD_FILE, ModelCard, parse_card, write_card
from edge.errors import UserError
from edge.options import PipelineOptions
from quantize.onnx_export import export_and_validate
from training.gradcam import LAST_CONV

VARIANTS = ("float32", "float16", "dynamic", "int8")


def convert(model: tf.Module, input_shape: tuple[int, ...], variant: str,
            representative: Callable[[], Iterable[list[np.ndarray]]] | None = None,
            call: Callable[[tf.Tensor], object] | None = None, int8_input: tf.DType = tf.int8) -> bytes:
    """Convert ``model`` with a static ``input_shape`` to one TFLite variant.

    ``int8`` quantises weights and activations (per-channel weights) with ``int8_input`` (int8 or
    uint8) input and int8 output, calibrated on ``representative`` (a callable yielding ``[array]``
    of ``input_shape``). ``call`` replaces ``model(x)`` as the converted function (``model`` still
    owns the variables).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    call = call or (lambda x: model(x, training=False))
    fn = tf.function(call).get_concrete_function(tf.TensorSpec(input_shape, tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], model)
    if variant != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if variant == "int8":
        if representative is None:
            raise ValueError("int8 conversion needs a representative dataset")
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = int8_input
        converter.inference_output_type = tf.int8
    return converter.convert()


def export_bundle(encoder: tf.Module, head: tf.Module, out_dir: Path, card: dict,
                  calibration_groups: list[np.ndarray], variants: Iterable[str] = VARIANTS) -> ModelCard:
    """Write ``encoder_<variant>.tflite``, ``head_<variant>.tflite``, ``encoder.onnx`` (for TensorRT,
    validated with onnxruntime, see ``quantize.onnx_export``) and ``model.json`` to ``out_dir``.

    ``calibration_groups`` are real preprocessed (group_size, size, size) uint8 groups; the head is
    calibrated on the Keras encoder's features of the same groups. ``card`` holds name, version,
    demonstration flag, note, preprocessing, training range and provenance; the files are added to it.
    The groups must have the card's group size and input size.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    options = PipelineOptions(**card["preprocessing"])
    card = dict(card, preprocessing=options.model_input() | {"override": options.override})
    enc_shape = (options.group_size, options.input_size, options.input_size, 1)
    if calibration_groups[0].shape != enc_shape[:3] or tuple(encoder.input_shape[1:]) != enc_shape[1:]:
        raise UserError(out_dir, f"calibration groups {calibration_groups[0].shape} and encoder input "
                                 f"{tuple(encoder.input_shape[1:])} do not match the card's preprocessing {enc_shape}")
    groups = [g[..., None].astype(np.float32) for g in calibration_groups]
    features = [encoder(g, training=False).numpy()[None] for g in groups]
    files = {}
    for variant in variants:
        enc = convert(encoder, enc_shape, variant, lambda: ([g] for g in groups + [_full_range(groups[0])]),
                      int8_input=tf.uint8)
        hd = convert(head, (1,) + features[0].shape[1:], variant, lambda: ([f] for f in features))
        files[variant] = {"encoder": f"encoder_{variant}.tflite", "head": f"head_{variant}.tflite"}
        (out_dir / files[variant]["encoder"]).write_bytes(enc)
        (out_dir / files[variant]["head"]).write_bytes(hd)
    card = dict(card, variants=files,
                explain=export_explain_models(encoder, head, out_dir, enc_shape, (1,) + features[0].shape[1:]))
    if "int8" in files:
        card["edgetpu"] = compile_for_edgetpu(out_dir, files)
    card["onnx"] = export_and_validate(encoder, head, out_dir, calibration_groups, [f[0] for f in features])
    parsed = parse_card(card, out_dir / CARD_FILE)
    write_card(parsed)
    return parsed


def _full_range(group: np.ndarray) -> np.ndarray:
    """A calibration group whose first slice spans 0..255: the int8 encoder's uint8 input then gets
    scale 1 and zero point 0, so the edge passes its uint8 slices unchanged."""
    group = group.copy()
    group[0, 0, 0], group[0, 0, 1] = 0, 255
    return group


def export_explain_models(encoder: keras.Model, head: keras.Model, out_dir: Path,
                          encoder_shape: tuple[int, ...], head_shape: tuple[int, ...], layer: str = LAST_CONV) -> dict:
    """Write the float32 models of edge Grad-CAM (see ``edge.explain``): the encoder with its
    features and last-convolution maps, and the head with its class scores and their gradients."""
    maps = keras.Model(encoder.inputs, [encoder.output, encoder.get_layer(layer).output])
    scores = gradient_friendly_clone(head)

    def scores_and_gradients(x: tf.Tensor) -> list[tf.Tensor]:
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            logits = scores(x, training=False)
            per_class = [logits[:, c] for c in range(logits.shape[-1])]
        return [logits, tf.stack([tape.gradient(s, x)[0] for s in per_class])]

    files = {"encoder": "explain_encoder_float32.tflite", "head": "explain_head_float32.tflite", "layer": layer}
    (out_dir / files["encoder"]).write_bytes(convert(maps, encoder_shape, "float32"))
    (out_dir / files["head"]).write_bytes(convert(scores, head_shape, "float32", call=scores_and_gradients))
    return files


def gradient_friendly_clone(head: keras.Model) -> keras.Model:
    """The head with the same weights, returning pre-softmax scores, with unrolled LSTMs and a ReLU
    whose gradient is plain arithmetic, so that its backward graph converts to TFLite builtins
    (TensorFlow's ReluGrad has no TFLite kernel)."""
    last = head.layers[-1].name

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if isinstance(layer, keras.layers.Bidirectional):
            config["layer"]["config"]["unroll"] = True
            config.pop("backward_layer", None)
        elif isinstance(layer, keras.layers.Dense):
            config["activation"] = "linear" if layer.name == last else _relu if config["activation"] == "relu" \
                else config["activation"]
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(head, clone_function=clone)
    copy.set_weights(head.get_weights())
    return copy


@tf.custom_gradient
def _relu(x: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
    y = tf.nn.relu(x)
    return y, lambda dy: dy * tf.cast(y > 0, dy.dtype)


def compile_for_edgetpu(out_dir: Path, files: dict[str, dict[str, str]]) -> dict:
    """Compile the int8 encoder for the Coral Edge TPU when ``edgetpu_compiler`` is installed and add
    an ``edgetpu`` variant (encoder on the TPU, int8 head on the CPU); otherwise return the command."""
    command = ["edgetpu_compiler", "--show_operations", "--out_dir", str(out_dir), str(out_dir / files["int8"]["encoder"])]
    if shutil.which(command[0]) is None:
        return {"compiled": False, "command": shlex.join(command),
                "reason": "edgetpu_compiler is not installed here (it comes from Coral's own package repository)"}
    subprocess.run(command, check=True, capture_output=True)
    files["edgetpu"] = {"encoder": files["int8"]["encoder"].replace(".tflite", "_edgetpu.tflite"),
                        "head": files["int8"]["head"]}
    return {"compiled": True, "command": shlex.join(command)}


def export_slice_explain(model: keras.Model, layer: str, out_dir: Path, input_shape: tuple[int, ...]) -> dict:
    """Write the float32 Grad-CAM model of a slice classifier (see ``edge.explain.SliceGradCam``):
    input one slice, outputs the activations of ``layer`` (1, h, w, K) and the channel weights (C, K),
    each class's pre-softmax ``logits`` gradient with respect to those activations, averaged over h, w.
    The backward graph converts to TFLite builtins: ReLUs after ``layer`` get an arithmetic gradient."""
    both = keras.Model(model.inputs, [model.get_layer(layer).output, model.get_layer("logits").output])

    def maps_and_weights(x: tf.Tensor) -> list[tf.Tensor]:
        with tf.GradientTape(persistent=True) as tape:
            maps, logits = both(x, training=False)
            per_class = [logits[:, c] for c in range(logits.shape[-1])]
        return [maps, tf.stack([tf.reduce_mean(tape.gradient(s, maps)[0], axis=(0, 1)) for s in per_class])]

    relu_layers = [lyr for lyr in both.layers if getattr(lyr, "activation", None) is keras.activations.relu]
    for lyr in relu_layers:
        lyr.activation = _relu
    try:
        files = {"model": "explain_slice_float32.tflite", "layer": layer}
        (out_dir / files["model"]).write_bytes(convert(both, input_shape, "float32", call=maps_and_weights))
    finally:
        for lyr in relu_layers:
            lyr.activation = keras.activations.relu
    return files
