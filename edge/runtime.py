"""TFLite interpreter loading and invocation for the edge: no TensorFlow needed.

Prefers ``ai-edge-litert`` (the maintained TFLite runtime), falls back to ``tflite_runtime`` and
then to ``tf.lite``. Int8/uint8 models get their inputs quantised and outputs dequantised from the
tensor details, so callers always pass and receive float arrays.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ModelLoadError

EDGETPU_LIBRARY = "libedgetpu.so.1"


def _interpreter_module() -> Any:
    for name in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    try:
        return importlib.import_module("tensorflow").lite
    except ImportError as exc:
        raise ModelLoadError("ai-edge-litert", "no TFLite interpreter installed (pip install ai-edge-litert)") from exc


def load_interpreter(path: str | Path, threads: int | None = None, edgetpu: bool = False) -> Any:
    """Create and allocate an interpreter for ``path`` with ``threads`` (default: all cores);
    with ``edgetpu``, load the Coral delegate."""
    path = Path(path)
    threads = threads or os.cpu_count() or 1
    if not path.is_file():
        raise ModelLoadError(path, "model file not found")
    module = _interpreter_module()
    delegates = []
    if edgetpu:
        try:
            delegates = [module.load_delegate(EDGETPU_LIBRARY)]
        except (ValueError, OSError) as exc:
            raise ModelLoadError(path, f"the Edge TPU runtime ({EDGETPU_LIBRARY}) is not installed or no Coral "
                                       "device is attached; install libedgetpu from Coral's repository") from exc
    try:
        interpreter = module.Interpreter(model_path=str(path), num_threads=threads, experimental_delegates=delegates or None)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(path, f"cannot be loaded by the TFLite runtime ({exc})") from exc
    return interpreter


def quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """Input -> the tensor's dtype, using its quantisation (scale, zero point) when integer; an input
    already of an integer tensor's dtype with scale 1 and zero point 0 passes unchanged."""
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.integer):
        scale, zero = detail["quantization"]
        if x.dtype == dtype and (scale, zero) == (1.0, 0):
            return x
        info = np.iinfo(dtype)
        return np.clip(np.rint(x / scale + zero), info.min, info.max).astype(dtype)
    return x.astype(dtype)


def dequantize_output(y: np.ndarray, detail: dict) -> np.ndarray:
    """Tensor output -> float32, undoing integer quantisation."""
    if np.issubdtype(detail["dtype"], np.integer):
        scale, zero = detail["quantization"]
        return (y.astype(np.float32) - zero) * scale
    return y.astype(np.float32)


def invoke_all(interpreter: Any, x: np.ndarray) -> list[np.ndarray]:
    """Run a single-input model on ``x`` (shape must match the static input); every output as float32."""
    inp = interpreter.get_input_details()[0]
    if tuple(x.shape) != tuple(inp["shape"]):
        raise ValueError(f"input shape {tuple(x.shape)} does not match the model's {tuple(inp['shape'])}")
    # TFLite's LSTM kernels keep their state in variable tensors between calls: start every call from zero.
    interpreter.reset_all_variables()
    interpreter.set_tensor(inp["index"], quantize_input(x, inp))
    interpreter.invoke()
    return [dequantize_output(interpreter.get_tensor(out["index"]), out) for out in interpreter.get_output_details()]


def invoke(interpreter: Any, x: np.ndarray) -> np.ndarray:
    """Run a single-input, single-output model on float ``x``."""
    return invoke_all(interpreter, x)[0]
