"""OpenVINO as a second edge runtime on x86-64: it reads the bundle's own ``.tflite`` files.

``OpenVinoInterpreter`` answers the calls ``edge.runtime.invoke_all`` makes of a LiteRT interpreter
(details, set/get tensor, invoke), so a classifier runs on either runtime unchanged; quantisation is
read from the file (``edge.runtime.file_details``, given by ``edge.runtime.load_interpreter``) and
applied as for LiteRT. OpenVINO's TFLite
reader cannot read the fused LSTM operator of a group model's head, so only the encoder (and the
2-D slice models) run on it. The precision hint is always explicit: ``f32`` computes as written,
``bf16`` only as a candidate that ``ctedge tune`` measures and checks. oneDNN picks its kernels
when the library loads: ``ONEDNN_MAX_CPU_ISA`` (e.g. ``AVX2``) must be in the environment before
OpenVINO is imported, which is why ``ctedge bench`` runs it in a subprocess per dispatch setting.
OpenVINO is an extra (``pip install 'ctedge[openvino]'``): without it, its candidates are skipped
with :func:`unavailable`'s reason. It is always imported through :func:`_openvino`, which keeps
its usage telemetry off (see there).
"""

from __future__ import annotations

import importlib
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edge.errors import ModelLoadError

PRECISIONS = ("f32", "bf16")


def _openvino() -> ModuleType:
    """The ``openvino`` module, imported without its telemetry. ``import openvino`` sends a usage
    event to Google Analytics and writes a client id under ``~/intel`` unless the user opted out
    (measured with openvino 2026.4: no consent file counts as consent); a device in a hospital must
    not call out, so the ``openvino_telemetry`` package is hidden from this process and OpenVINO
    takes its own no-op stub."""
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]  # None: its import fails
    return importlib.import_module("openvino")


def unavailable() -> str:
    """'' when OpenVINO can be imported, else the one-line reason its candidates are skipped."""
    try:
        _openvino()
    except ImportError:
        return "openvino is not installed (pip install 'ctedge[openvino]'; x86-64 offline bundles include it)"
    return ""


class OpenVinoInterpreter:
    """One ``.tflite`` file compiled by OpenVINO for the CPU with ``threads`` and the precision hint
    ``precision`` (``f32`` or ``bf16``); ``batch`` sets the first input's leading dimension (a
    group's encoder then runs a batch at a time, as on LiteRT). ``details``: the file's input and
    output details (``edge.runtime.file_details``), whose quantisation callers apply."""

    def __init__(self, path: str | Path, details: tuple[list[dict], list[dict]], threads: int, precision: str = "f32",
                 batch: int | None = None):
        if precision not in PRECISIONS:
            raise ModelLoadError(path, f"OpenVINO precision hint {precision!r} is not one of {', '.join(PRECISIONS)}")
        reason = unavailable()
        if reason:
            raise ModelLoadError(path, reason)
        openvino = _openvino()
        self.inputs, self.outputs = details
        try:
            core = openvino.Core()
            model = core.read_model(str(path))
            if batch is not None:
                shape = [batch, *(int(d) for d in self.inputs[0]["shape"][1:])]
                model.reshape({model.inputs[0]: shape})
                self.inputs[0]["shape"] = np.array(shape, np.int32)
            self._config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads,
                            "PERFORMANCE_HINT": "LATENCY"}
            self.compiled = core.compile_model(model, "CPU", self._config)
        except RuntimeError as exc:
            raise ModelLoadError(path, f"cannot be loaded by OpenVINO ({str(exc).strip().splitlines()[-1][:200]})") from exc
        if len(self.compiled.outputs) != len(self.outputs):
            raise ModelLoadError(path, f"OpenVINO reads {len(self.compiled.outputs)} outputs, the file has {len(self.outputs)}")
        self._core, self._model = core, model
        self.request = self.compiled.create_infer_request()
        self.calls = 0
        self._position = {d["index"]: i for i, d in enumerate(self.inputs)}
        self._feed: dict[int, np.ndarray] = {}
        self._results: dict[int, np.ndarray] = {}

    def get_input_details(self) -> list[dict]:
        return self.inputs

    def get_output_details(self) -> list[dict]:
        return self.outputs

    def set_tensor(self, index: int, value: np.ndarray) -> None:
        self._feed[self._position[index]] = value

    def invoke(self) -> None:
        self.calls += 1
        results = self.request.infer(self._feed)
        self._results = {d["index"]: np.asarray(results[out]).astype(d["dtype"], copy=False)
                         for d, out in zip(self.outputs, self.compiled.outputs)}

    def get_tensor(self, index: int) -> np.ndarray:
        return self._results[index]

    def reset_all_variables(self) -> None:
        """Nothing to reset: models read by OpenVINO here keep no state between calls."""

    def kernels(self) -> dict[str, int]:
        """How many operators of each type of the compiled model run each kernel (``Convolution
        jit_avx2_I8``, ``Convolution brgconv_avx512_I8``, ...), from its runtime model; operators
        without a named kernel are left out. OpenVINO's own kernels (e.g. ``Reduce``) do not obey
        ``ONEDNN_MAX_CPU_ISA``; oneDNN's (convolutions) do."""
        return dict(Counter(f"{_rt(op, 'layerType')} {_rt(op, 'primitiveType')}"
                            for op in self.compiled.get_runtime_model().get_ordered_ops()
                            if not _rt(op, "primitiveType").startswith("unknown")))


    def operators(self, repeats: int) -> list[dict]:
        """Where the time of one call goes: the last input fed, run ``repeats`` times by a copy of the
        model compiled with OpenVINO's per-operator counters (``PERF_COUNT``, kept out of the timed
        model); ``{"name", "type", "kernel", "ms"}`` per operator that took time, in execution order,
        ``ms`` the median over the runs."""
        request = self._core.compile_model(self._model, "CPU", {**self._config, "PERF_COUNT": True}).create_infer_request()
        request.infer(self._feed)                        # warm-up
        runs = []
        for _ in range(repeats):
            request.infer(self._feed)
            runs.append([(p.node_name, p.node_type, p.exec_type, p.real_time.total_seconds() * 1e3)
                         for p in request.profiling_info])
        return [{"name": name, "type": kind, "kernel": kernel, "ms": float(np.median([run[i][3] for run in runs]))}
                for i, (name, kind, kernel, _) in enumerate(runs[0]) if max(run[i][3] for run in runs) > 0]


def _rt(op: Any, key: str) -> str:
    return str(op.get_rt_info()[key].astype(str))
