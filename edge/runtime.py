"""TFLite interpreter loading and invocation for the edge: no TensorFlow needed.

Prefers ``ai-edge-litert`` (the maintained TFLite runtime), falls back to ``tflite_runtime`` and
then to ``tf.lite``. Int8/uint8 models get their inputs quantised and outputs dequantised from the
tensor details, so callers always pass and receive float arrays.

A model whose batch items are independent (the per-slice CNN encoder) can be loaded with a static
batch of a few slices (``load_interpreter(..., batch=1)``) and fed a whole group: ``invoke_all``
runs it a batch at a time. The XNNPACK delegate plans its activation memory from the shapes written in the
file (``resize_tensor_input`` does not shrink it), so the batch is rewritten in the file's bytes:
the float32 encoder then holds ~5 MB instead of ~260 MB for a 50-slice group, with the same
outputs bit for bit and no loss of speed (docs/benchmarks.md, "Memory").

The runtime's C++ logger prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." to the
process's stderr once, at the first interpreter (no setting turns it off: TF_CPP_MIN_LOG_LEVEL is
not read by it). The first load therefore runs with file descriptor 2 sent to a temporary file,
and every other line written there meanwhile (a real error of the runtime) is passed on to stderr.
"""

from __future__ import annotations

import importlib
import os
import struct
import sys
import tempfile
import threading
from collections.abc import Iterator
import contextlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ModelLoadError
from edge.runtime_openvino import OpenVinoInterpreter

EDGETPU_LIBRARY = "libedgetpu.so.1"
RUNTIMES = ("litert", "openvino-f32", "openvino-bf16")
"""The edge runtimes: LiteRT (XNNPACK), and OpenVINO with its precision hint (``edge.runtime_openvino``)."""
RUNTIME_NOTICES = (b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)
"""Lines of the C++ runtime on stderr that tell a user nothing; dropped at the first load."""
_first_load = threading.Lock()   # held by every load, so that fd 2 is redirected only while the first runs
_loaded_once = False


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


def load_interpreter(path: str | Path, threads: int | None = None, edgetpu: bool = False,
                     batch: int | None = None, xnnpack: bool = True, runtime: str = "litert") -> Any:
    """Create and allocate an interpreter for ``path`` with ``threads`` (default: all cores) on
    ``runtime`` (one of :data:`RUNTIMES`; OpenVINO: ``edge.runtime_openvino``, not with ``edgetpu``);
    with ``edgetpu``, load the Coral delegate. ``batch`` rewrites the model's static batch (see the
    module docstring; not with ``edgetpu``, whose compiled operator fixes the shapes). ``xnnpack=False``
    runs TFLite's own kernels: for a model of many small operators (the Grad-CAM head) they are
    faster than XNNPACK and hold far less memory."""
    path = Path(path)
    threads = threads or os.cpu_count() or 1
    if not path.is_file():
        raise ModelLoadError(path, "model file not found")
    if runtime not in RUNTIMES:
        raise ModelLoadError(path, f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    if runtime != "litert":
        if edgetpu:
            raise ModelLoadError(path, "the Edge TPU runs on LiteRT only, not on OpenVINO")
        return OpenVinoInterpreter(path, file_details(path), threads, runtime.removeprefix("openvino-"), batch)
    module = _interpreter_module()
    model = {"model_path": str(path)} if batch is None or edgetpu else {"model_content": with_batch(path, batch)}
    delegates = []
    if edgetpu:
        try:
            delegates = [module.load_delegate(EDGETPU_LIBRARY)]
        except (ValueError, OSError) as exc:
            raise ModelLoadError(path, f"the Edge TPU runtime ({EDGETPU_LIBRARY}) is not installed or no Coral "
                                       "device is attached; install libedgetpu from Coral's repository") from exc
    if not xnnpack:
        resolvers = getattr(module, "OpResolverType", None) or module.experimental.OpResolverType   # tf.lite keeps it there
        model["experimental_op_resolver_type"] = resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    global _loaded_once
    with _first_load, contextlib.nullcontext() if _loaded_once else _without_notices():
        try:
            interpreter = module.Interpreter(**model, num_threads=threads, experimental_delegates=delegates or None)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(path, f"cannot be loaded by the TFLite runtime ({exc})") from exc
        _loaded_once = True
    return interpreter


@contextmanager
def _without_notices() -> Iterator[None]:
    """Send fd 2 to a temporary file; afterwards write back to stderr every line but RUNTIME_NOTICES."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().splitlines(keepends=True) if line.strip() not in RUNTIME_NOTICES]
            if kept:
                os.write(2, b"".join(kept))


def input_shape(path: str | Path) -> tuple[int, ...]:
    """The static shape of a TFLite model's first input, read from the file (nothing is allocated)."""
    with _reading(path, bytearray(Path(path).read_bytes())) as model:
        return _input_shape(model)


def with_batch(path: str | Path, batch: int) -> bytes:
    """The bytes of the TFLite model ``path`` with its static batch (the leading dimension of its first
    input) set to ``batch`` in every tensor computed at run time that has it. Only for a model whose
    batch items are independent; one that writes its batch into a constant (a reshape target) then
    fails to load, naming the file."""
    data = bytearray(Path(path).read_bytes())
    with _reading(path, data) as model:
        old = _input_shape(model)[0]
        for g in range(model.SubgraphsLength()):
            graph = model.Subgraphs(g)
            for t in range(graph.TensorsLength()):
                tensor = graph.Tensors(t)
                buffer = model.Buffers(tensor.Buffer())
                if tensor.ShapeLength() and tensor.ShapeAsNumpy()[0] == old and not (buffer.DataLength() or buffer.Size()):
                    tensor.ShapeAsNumpy()[0] = batch              # a view into ``data``: rewritten in place
                    if tensor.ShapeSignatureLength():
                        tensor.ShapeSignatureAsNumpy()[0] = batch
    return bytes(data)


@contextmanager
def _reading(path: str | Path, data: bytearray) -> Iterator[Any]:
    """The flatbuffer reader of a TFLite model's bytes (ai-edge-litert's generated schema); a file
    that is not one, or is cut short, is a ModelLoadError naming it."""
    from ai_edge_litert import schema_py_generated as schema

    if data[4:8] != b"TFL3":
        raise ModelLoadError(path, "not a TFLite model (no TFL3 identifier)")
    try:
        yield schema.Model.GetRootAs(data)
    except (struct.error, IndexError) as exc:
        raise ModelLoadError(path, f"not a valid TFLite model, truncated or damaged ({exc})") from exc


def _input_shape(model: Any) -> tuple[int, ...]:
    graph = model.Subgraphs(0)
    return tuple(int(d) for d in graph.Tensors(graph.Inputs(0)).ShapeAsNumpy())


TFLITE_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8}
"""TFLite tensor type codes (schema ``TensorType``) -> NumPy dtypes, for the types models here take and give."""


def file_details(path: str | Path) -> tuple[list[dict], list[dict]]:
    """The input and output details of a TFLite model's main graph as the interpreter reports them
    (``index``, ``shape``, ``dtype``, ``quantization`` (scale, zero point)), read from the file: what
    another runtime reading the same file (``edge.runtime_openvino``) needs to quantise and dequantise."""
    with _reading(path, bytearray(Path(path).read_bytes())) as model:
        graph = model.Subgraphs(0)

        def details(index: int) -> dict:
            tensor = graph.Tensors(index)
            q = tensor.Quantization()
            scale = float(q.Scale(0)) if q is not None and q.ScaleLength() else 0.0
            zero = int(q.ZeroPoint(0)) if q is not None and q.ZeroPointLength() else 0
            if tensor.Type() not in TFLITE_DTYPES:
                raise ModelLoadError(path, f"tensor type {tensor.Type()} of an input or output is not supported")
            return {"index": index, "shape": np.array(tensor.ShapeAsNumpy(), np.int32),
                    "dtype": TFLITE_DTYPES[tensor.Type()], "quantization": (scale, zero)}

        return ([details(graph.Inputs(i)) for i in range(graph.InputsLength())],
                [details(graph.Outputs(i)) for i in range(graph.OutputsLength())])


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
    """Run a single-input model on ``x``; every output as float32. ``x`` has the input's static shape,
    or stacks several static batches along the first axis (a model loaded with ``batch``, whose
    outputs have one item per input item): they run one after the other, their outputs stacked."""
    inp = interpreter.get_input_details()[0]
    shape = tuple(int(d) for d in inp["shape"])
    if tuple(x.shape[1:]) != shape[1:] or not len(x) or len(x) % shape[0]:
        raise ValueError(f"input shape {tuple(x.shape)} does not match the model's {shape}")
    n = shape[0]
    first = _invoke_once(interpreter, inp, x[:n])
    if len(x) == n:
        return first
    outputs = [np.empty((len(x), *o.shape[1:]), np.float32) for o in first]
    for i in range(0, len(x), n):
        for out, part in zip(outputs, first if i == 0 else _invoke_once(interpreter, inp, x[i:i + n])):
            out[i:i + n] = part
    return outputs


def _invoke_once(interpreter: Any, inp: dict, x: np.ndarray) -> list[np.ndarray]:
    # TFLite's LSTM kernels keep their state in variable tensors between calls: start every call from zero.
    interpreter.reset_all_variables()
    interpreter.set_tensor(inp["index"], quantize_input(x, inp))
    interpreter.invoke()
    return [dequantize_output(interpreter.get_tensor(out["index"]), out) for out in interpreter.get_output_details()]


def invoke(interpreter: Any, x: np.ndarray) -> np.ndarray:
    """Run a single-input, single-output model on float ``x``."""
    return invoke_all(interpreter, x)[0]
