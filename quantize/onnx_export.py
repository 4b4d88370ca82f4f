"""ONNX export of the CNN encoder for TensorRT on a Jetson, validated with onnxruntime against Keras.

The encoder is converted by tf2onnx with a static input (group_size, 256, 256, 1) float32, NHWC like
the TFLite encoder, values 0-255 (the preprocessed uint8 slices). Opset 13 is the newest that the
TensorRT 8.2 ONNX parser of JetPack 4.6 (the last JetPack for the Jetson Nano) supports. The biLSTM
head stays on TFLite/Keras; only the encoder, where the compute is, goes to the GPU. The encoder's
whole-map max-pools become MaxPool nodes with windows up to 256x256; TensorRT rejects pooling windows
of 100,000 elements or more, which the export checks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import training  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import numpy as np
import tensorflow as tf

OPSET = 13
ONNX_FILE = "encoder.onnx"
INPUT_NAME = "slices"
TRTEXEC = f"trtexec --onnx={ONNX_FILE} --fp16 --saveEngine=encoder.plan"
TENSORRT_MAX_POOL_WINDOW = 100_000  # TensorRT: pooling window volume must be below this


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as e:
        raise RuntimeError(f"the ONNX export needs {module!r}: install ctedge with the [train] extra") from e


def export_encoder_onnx(encoder: tf.keras.Model, path: Path, group_size: int, opset: int = OPSET) -> list[str]:
    """Write ``encoder`` to ``path`` as ONNX with the static input ``(group_size, 256, 256, 1)`` float32.

    Returns the graph's operator types (sorted). The model is checked with ``onnx.checker`` and for
    pooling windows that TensorRT would reject (a ``ValueError`` names the node).
    """
    _require("tf2onnx")
    import onnx
    import tf2onnx

    spec = (tf.TensorSpec((group_size,) + tuple(encoder.input_shape[1:]), tf.float32, name=INPUT_NAME),)
    model, _ = tf2onnx.convert.from_keras(encoder, input_signature=spec, opset=opset)
    onnx.checker.check_model(model)
    for node in model.graph.node:
        window = [list(a.ints) for a in node.attribute if a.name == "kernel_shape"]
        if node.op_type in ("MaxPool", "AveragePool") and math.prod(window[0]) >= TENSORRT_MAX_POOL_WINDOW:
            raise ValueError(f"ONNX node {node.name!r}: {node.op_type} window {window[0]} has {math.prod(window[0])} "
                             f"elements; TensorRT accepts fewer than {TENSORRT_MAX_POOL_WINDOW}")
    path.write_bytes(model.SerializeToString())
    return sorted({node.op_type for node in model.graph.node})


class OnnxEncoder:
    """The exported encoder run by onnxruntime on the CPU: uint8 groups in, features out."""

    def __init__(self, path: Path, threads: int | None = None):
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]

    def features(self, group: np.ndarray) -> np.ndarray:
        """(group_size, 256, 256) uint8 group -> (group_size, n_features) float32."""
        x = np.asarray(group, np.float32).reshape(self.input.shape)
        return self.session.run(None, {self.input.name: x})[0]


def validate_encoder_onnx(path: Path, encoder: tf.keras.Model, head: tf.keras.Model, groups: Sequence[np.ndarray],
                          keras_features: Sequence[np.ndarray] | None = None) -> dict[str, float | int]:
    """Compare the ONNX encoder (onnxruntime) with the Keras encoder on ``groups``.

    Returns the number of groups, the max absolute feature difference, the feature scale (max |Keras
    feature|) and, with both feature sets put through the Keras ``head``, the top-1 agreement of the
    group labels and the mean and max absolute probability difference. ``keras_features`` (one
    (group_size, n_features) array per group), when given, saves running the Keras encoder again.
    """
    onnx_encoder = OnnxEncoder(path)
    feature_diff = feature_scale = 0.0
    p_keras, p_onnx = [], []
    for i, g in enumerate(groups):
        ref = (np.asarray(keras_features[i]) if keras_features is not None
               else encoder(np.asarray(g, np.float32)[..., None], training=False).numpy())
        got = onnx_encoder.features(g)
        feature_diff = max(feature_diff, float(np.abs(got - ref).max()))
        feature_scale = max(feature_scale, float(np.abs(ref).max()))
        p_keras.append(head(ref[None], training=False).numpy()[0])
        p_onnx.append(head(got[None], training=False).numpy()[0])
    p_keras, p_onnx = np.stack(p_keras), np.stack(p_onnx)  # type: ignore[assignment]
    prob_diff = np.abs(p_onnx - p_keras)  # type: ignore[operator]
    return {"groups": len(groups), "max_abs_feature_diff": feature_diff, "feature_scale": feature_scale,
            "top1_agreement": float((p_onnx.argmax(1) == p_keras.argmax(1)).mean()),  # type: ignore[attr-defined]
            "mean_abs_prob_diff": float(prob_diff.mean()), "max_abs_prob_diff": float(prob_diff.max())}


def export_and_validate(encoder: tf.keras.Model, head: tf.keras.Model, out_dir: Path, groups: Sequence[np.ndarray],
                        keras_features: Sequence[np.ndarray] | None = None) -> dict:
    """Write ``out_dir/encoder.onnx`` and return its ``model.json`` entry: file, opset, input/output,
    operators, the TensorRT command and the validation figures on ``groups`` (see ``validate_encoder_onnx``)."""
    group_size = groups[0].shape[0]
    ops = export_encoder_onnx(encoder, out_dir / ONNX_FILE, group_size)
    shape = [group_size] + list(encoder.input_shape[1:])
    return {"file": ONNX_FILE, "opset": OPSET,
            "input": {"name": INPUT_NAME, "shape": shape, "dtype": "float32", "layout": "NHWC",
                      "values": "preprocessed slices, 0-255"},
            "output": {"shape": [group_size, int(encoder.output_shape[-1])],
                       "feeds": "the head (1, group_size, n_features)"},
            "ops": ops, "trtexec": TRTEXEC,
            "validation": {"runtime": "onnxruntime (CPU) vs Keras float32, Keras head",
                           **validate_encoder_onnx(out_dir / ONNX_FILE, encoder, head, groups, keras_features)}}
