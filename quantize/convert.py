"""Keras (tf_keras) models -> TFLite with static shapes: float32, float16, dynamic-range and full int8.

The CNN encoder and the biLSTM head are converted separately: full-integer conversion of the
whole CNN+LSTM model crashes the converter, and a tf_keras LSTM converts to fused
UNIDIRECTIONAL_SEQUENCE_LSTM ops that quantise fully.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

import training  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import numpy as np
import tensorflow as tf

VARIANTS = ("float32", "float16", "dynamic", "int8")


def convert(model: tf.Module, input_shape: tuple[int, ...], variant: str,
            representative: Callable[[], Iterable[list[np.ndarray]]] | None = None) -> bytes:
    """Convert ``model`` with a static ``input_shape`` to one TFLite variant.

    ``int8`` quantises weights and activations (per-channel weights) with int8 input and output,
    calibrated on ``representative`` (a callable yielding ``[array]`` of ``input_shape``).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(tf.TensorSpec(input_shape, tf.float32))
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
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def export_bundle(encoder: tf.Module, head: tf.Module, out_dir: Path, card: dict,
                  calibration_groups: list[np.ndarray], variants: Iterable[str] = VARIANTS) -> Path:
    """Write ``encoder_<variant>.tflite``, ``head_<variant>.tflite`` and ``model.json`` to ``out_dir``.

    ``calibration_groups`` are real preprocessed (group_size, 256, 256) uint8 groups; the head is
    calibrated on the Keras encoder's features of the same groups. ``card`` holds name, version,
    demonstration flag, note and provenance; the file names are added to it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    group_size = calibration_groups[0].shape[0]
    enc_shape = (group_size, 256, 256, 1)
    groups = [g[..., None].astype(np.float32) for g in calibration_groups]
    features = [encoder(g, training=False).numpy()[None] for g in groups]
    files = {}
    for variant in variants:
        enc = convert(encoder, enc_shape, variant, lambda: ([g] for g in groups))
        hd = convert(head, (1,) + features[0].shape[1:], variant, lambda: ([f] for f in features))
        files[variant] = {"encoder": f"encoder_{variant}.tflite", "head": f"head_{variant}.tflite"}
        (out_dir / files[variant]["encoder"]).write_bytes(enc)
        (out_dir / files[variant]["head"]).write_bytes(hd)
    card = dict(card, group_size=group_size, input_size=256, variants=files)
    if "int8" in files:
        card["edgetpu"] = compile_for_edgetpu(out_dir, files)
    (out_dir / "model.json").write_text(json.dumps(card, indent=2))
    return out_dir


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
