"""Pretrained trunk weights from a quantised TFLite classifier (``--weights FILE.tflite``), offline.

Coral's ``mobilenet_v2_1.0_224_quant.tflite`` (ImageNet MobileNetV2, uint8, batch norm folded into
the convolutions) is dequantised into the Keras MobileNetV2: the file's convolutions are taken in
graph order, one for each Keras convolution (the last one, the ImageNet logits, is left out); each
kernel is dequantised (per tensor or per channel) and transposed to the Keras layout, and the batch
normalisation after it becomes the identity plus the folded bias. The file's input is uint8 read as
(x - 128) / 128, the Keras trunk's input [-1, 1] (``training.archs``, scaling ``symmetric``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tf_keras as keras

CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")


def _dequantised(interpreter, details: dict, index: int) -> np.ndarray:
    t = details[index]
    q = interpreter.get_tensor(index).astype(np.float64)
    params = t["quantization_parameters"]
    scales, zeros = params["scales"], params["zero_points"]
    if len(scales) <= 1:
        scale, zero = t["quantization"]
        return ((q - zero) * scale).astype(np.float32)
    shape = [1] * q.ndim
    shape[params["quantized_dimension"]] = -1
    return ((q - zeros.reshape(shape)) * scales.reshape(shape)).astype(np.float32)


def load_tflite_weights(trunk: keras.Model, path: str | Path) -> None:
    """Set ``trunk``'s convolutions and batch normalisations from the TFLite classifier at ``path``;
    ValueError when its convolutions do not match the trunk's one for one."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(path), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = [o for o in interpreter._get_ops_details() if o["op_name"] in CONV_OPS][:-1]   # the last: ImageNet logits
    convs = [layer for layer in trunk.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    if len(ops) != len(convs):
        raise ValueError(f"{path}: {len(ops)} convolutions before the logits, the {trunk.name} trunk has {len(convs)}")
    following = _batch_norm_after(trunk)
    for layer, op in zip(convs, ops):
        kernel = _dequantised(interpreter, details, op["inputs"][1])
        bias = _dequantised(interpreter, details, op["inputs"][2])
        kernel = kernel[0][..., None] if op["op_name"] == "DEPTHWISE_CONV_2D" else np.transpose(kernel, (1, 2, 3, 0))
        expected = layer.get_weights()[0].shape
        if kernel.shape != expected:
            raise ValueError(f"{path}: kernel {kernel.shape} does not fit layer {layer.name} {expected}")
        layer.set_weights([kernel])
        bn = following[layer.name]
        bn.set_weights([np.ones_like(bias), bias, np.zeros_like(bias), np.full_like(bias, 1.0 - bn.epsilon)])


def _batch_norm_after(trunk: keras.Model) -> dict[str, keras.layers.BatchNormalization]:
    """The batch normalisation that reads each convolution's output, by convolution name."""
    out = {}
    for layer in trunk.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            inbound = layer._inbound_nodes[0].inbound_layers
            out[(inbound[0] if isinstance(inbound, list) else inbound).name] = layer
    return out
