"""ImageNet MobileNetV2 1.0 224 weights from Coral's uint8 TFLite file, dequantised into tf_keras'
MobileNetV2 (nothing downloads: ``weights='imagenet'`` is never used).

The TFLite converter folded each batch normalisation into the convolution before it (kernel scaled,
the BN shift become the convolution's bias). Keras' MobileNetV2 has bias-free convolutions each
followed by a BatchNormalization, so each convolution gets the dequantised folded kernel and its
BN becomes identity plus the folded bias (gamma 1, beta bias, mean 0, variance 1 - epsilon). The
file's last convolution is the 1001-class ImageNet classifier (class 0 is ``background``) on the
pooled 1280 features: :func:`mobilenet_v2` with ``include_top=True`` adds it as a ``logits`` layer.
Input: RGB scaled to [-1, 1], as MobileNetV2 was trained.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter
from tf_keras import layers

PRETRAINED = Path(__file__).resolve().parent / "pretrained"
CORAL_MOBILENET_V2 = PRETRAINED / "mobilenet_v2_1.0_224_quant.tflite"
IMAGENET_LABELS = PRETRAINED / "imagenet_labels.txt"     # 1001 lines, line 0 ``background``
KNOWN_WEIGHTS = {
    "7aad0c74c5e3c06e5eb3c827e13304fdd68a83da6087d92ee169c24ff9fd4776": {
        "licence": "Apache-2.0", "source": "github.com/google-coral/test_data mobilenet_v2_1.0_224_quant.tflite"},
}
"""Licence and source of the pretrained weight files this package knows, by sha256 (see training/pretrained/NOTICE)."""

_CONVS = ("CONV_2D", "DEPTHWISE_CONV_2D")
_BN_OF = {"Conv1": "bn_Conv1", "Conv_1": "Conv_1_bn"}    # every other convolution X is followed by X_BN


def sha256_of(path: str | Path) -> str:
    """The hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_provenance(path: str | Path) -> dict[str, str]:
    """What a run records about its pretrained weights file: name, sha256, and licence and source
    where the file is one this package knows (``unknown`` otherwise)."""
    sha = sha256_of(path)
    known = KNOWN_WEIGHTS.get(sha, {"licence": "unknown", "source": "unknown"})
    return {"file": Path(path).name, "sha256": sha} | known


def _dequantised_convolutions(path: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(op name, float kernel in Keras layout, float bias) of every convolution of the TFLite file, in
    graph order. Kernels go from TFLite [out, kh, kw, in] (depthwise [1, kh, kw, C]) to Keras
    [kh, kw, in, out] (depthwise [kh, kw, C, 1]); per-tensor and per-channel quantisation both read."""
    interpreter = Interpreter(str(path))
    interpreter.allocate_tensors()
    details = {t["index"]: t for t in interpreter.get_tensor_details()}

    def dequantise(index: int) -> np.ndarray:
        q = details[index]["quantization_parameters"]
        values = interpreter.get_tensor(index).astype(np.float64)
        if not len(q["scales"]):
            return values.astype(np.float32)
        shape = [1] * values.ndim
        if len(q["scales"]) > 1:
            shape[q["quantized_dimension"]] = -1
        return ((values - q["zero_points"].reshape(shape)) * q["scales"].reshape(shape)).astype(np.float32)

    out = []
    for op in interpreter._get_ops_details():
        if op["op_name"] not in _CONVS:
            continue
        kernel, bias = dequantise(op["inputs"][1]), dequantise(op["inputs"][2])
        kernel = kernel[0][..., None] if op["op_name"] == "DEPTHWISE_CONV_2D" else np.transpose(kernel, (1, 2, 3, 0))
        out.append((op["op_name"], kernel, bias))
    return out


def load_tflite_weights(model: keras.Model, path: str | Path) -> np.ndarray | None:
    """Set the convolutions and batch normalisations of a tf_keras MobileNetV2 trunk (``include_top=False``,
    also one built on an ``input_tensor``) from the uint8 TFLite MobileNetV2 at ``path``. Returns the
    file's remaining classifier convolution as (kernel (1280, classes), bias) stacked, or None if it has
    none. ValueError names the file when its convolutions do not match the model's."""
    path = Path(path)
    convs = [layer for layer in model.layers if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D))]
    found = _dequantised_convolutions(path)
    if len(found) not in (len(convs), len(convs) + 1):
        raise ValueError(f"{path}: {len(found)} convolutions, the model has {len(convs)}: not a MobileNetV2 1.0 file "
                         f"for this model")
    for layer, (_, kernel, bias) in zip(convs, found):
        expected = layer.weights[0].shape
        if kernel.shape != expected:
            raise ValueError(f"{path}: convolution for {layer.name} has shape {kernel.shape}, the model expects "
                             f"{tuple(expected)} (a MobileNetV2 1.0 224 file is needed)")
        layer.set_weights([kernel])
        bn = model.get_layer(_BN_OF.get(layer.name, f"{layer.name}_BN"))
        bn.set_weights([np.ones_like(bias), bias, np.zeros_like(bias), np.full_like(bias, 1.0 - bn.epsilon)])
    if len(found) == len(convs):
        return None
    _, kernel, bias = found[-1]          # the classifier: [1, 1, 1280, classes] in Keras layout
    return np.concatenate([kernel[0, 0], bias[None]])


def mobilenet_v2(path: str | Path = CORAL_MOBILENET_V2, include_top: bool = False) -> keras.Model:
    """tf_keras MobileNetV2 1.0 on (224, 224, 3) RGB in [-1, 1] with the TFLite file's weights.
    ``include_top``: pooled features, then the file's classifier as the linear ``logits`` layer
    (1001 ImageNet classes, names in :data:`IMAGENET_LABELS`)."""
    trunk = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(224, 224, 3))
    top = load_tflite_weights(trunk, path)
    if not include_top:
        return trunk
    if top is None:
        raise ValueError(f"{path}: the file has no classifier convolution after the trunk")
    pooled = layers.GlobalAveragePooling2D(name="pool")(trunk.output)
    logits = layers.Dense(top.shape[1], name="logits")
    model = keras.Model(trunk.input, logits(pooled), name="mobilenet_v2_imagenet")
    logits.set_weights([top[:-1], top[-1]])
    return model
