"""OpenVINO's rows of ``ctedge bench``, measured in a subprocess per dispatch setting.

oneDNN (OpenVINO's CPU kernels) reads ``ONEDNN_MAX_CPU_ISA`` once, when the library loads, so the
kernels of ``--dispatch avx2`` cannot be chosen in a process that has already loaded OpenVINO: each
bench run starts ``python -m quantize.openvino_bench`` with the variable set (:data:`ISA_ENV`), on
the same units (saved as one ``.npy`` file), and reads back the probabilities, the times and the
kernel names of OpenVINO's runtime model (``jit_avx2_I8``, ``brgconv_avx512_I8``, ...). The
subprocess also times LiteRT float32, on the same XNNPACK kernels as the main process, in turn with
OpenVINO's rows: their ratios to it are measured side by side, not minutes apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge.card import load_card
from edge.errors import ModelLoadError
from edge.kinds import KINDS
from edge.runtime_openvino import OpenVinoInterpreter, unavailable
from quantize.avx2_dispatch import dispatch_avx2
from quantize.fidelity import compare

ISA_ENV = {"native": {}, "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}
"""The environment each ``--dispatch`` setting gives the OpenVINO subprocess."""


def openvino_rows(bundle: Path, units: list[np.ndarray], threads: int, repeats: int, dispatch: str,
                  runtimes: list[str], variants: list[str], operators: bool = False) -> dict:
    """``{"<runtime>_<variant>": row}`` for every runtime (``openvino-f32``, ``openvino-bf16``) and
    variant, measured in a subprocess with :data:`ISA_ENV` ``[dispatch]``; a row has ``probs``,
    ``ms_median``, ``ms_min``, ``litert_float32_ms_median`` (None for a bundle without float32),
    ``kernels`` and, with ``operators``, ``operators`` (:func:`operator_times`), or ``error``. ``{"skipped": reason}`` when OpenVINO
    is not installed or the subprocess fails."""
    reason = unavailable()
    if reason:
        return {"skipped": reason}
    with tempfile.TemporaryDirectory(prefix="ctedge-openvino-") as tmp:
        np.save(Path(tmp) / "units.npy", np.stack(units))
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, "-m", "quantize.openvino_bench", str(bundle), tmp, str(threads), str(repeats),
               ",".join(runtimes), ",".join(variants), dispatch, str(int(operators))]
        proc = subprocess.run(cmd, env={**os.environ, **ISA_ENV[dispatch]}, capture_output=True, text=True)
        if proc.returncode or not out.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return {"skipped": f"the OpenVINO subprocess failed (exit {proc.returncode}): {last}"}
        return json.loads(out.read_text())


def measure(bundle: Path, units: np.ndarray, threads: int, repeats: int, runtimes: list[str],
            variants: list[str], operators: bool = False) -> dict:
    """The rows of :func:`openvino_rows`, measured in this process, taking turns with the bundle's
    LiteRT float32 (under the same dispatch) so that each row's ``litert_float32_ms_median``, and
    the ratio to it, hold on a shared machine."""
    card = load_card(bundle)
    kind = KINDS[card.kind]
    rows: dict[str, dict] = {}
    classifiers = {}
    for runtime in runtimes:
        for variant in variants:
            try:
                classifiers[f"{runtime}_{variant}"] = kind.classifier(card, variant, threads, runtime=runtime)
            except ModelLoadError as exc:
                rows[f"{runtime}_{variant}"] = {"error": exc.problem}
    if not classifiers:
        return rows
    predictors = {name: c.predict for name, c in classifiers.items()}
    if "float32" in card.variants:
        predictors = {"litert_float32": kind.classifier(card, "float32", threads).predict, **predictors}
    results = compare(predictors, [list(units)], next(iter(predictors)), repeats, "unit")
    reference = results.get("litert_float32", {}).get("ms_per_unit_median")
    for name, classifier in classifiers.items():
        interpreter = getattr(classifier, "encoder", None) or classifier.model
        rows[name] = {"probs": [np.asarray(classifier.predict(u), float).tolist() for u in units],
                      "ms_median": results[name]["ms_per_unit_median"], "ms_min": results[name]["ms_per_unit_min"],
                      "litert_float32_ms_median": reference, "kernels": interpreter.kernels(),
                      "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "native")}
        if operators:
            rows[name]["operators"] = operator_times(classifier.predict, interpreter, units[0], repeats)
    return rows


def operator_times(predict: Callable[[np.ndarray], np.ndarray], interpreter: OpenVinoInterpreter, unit: np.ndarray,
                   repeats: int) -> dict:
    """Where OpenVINO's time for one unit goes: ``calls_per_unit`` (a group's encoder runs a batch of
    slices per call), ``ms_per_unit`` (one ``{"name", "type", "kernel", "ms"}`` per operator, its
    median per call times the calls) and their sum, ``sum_ms_per_unit``: what a unit would take if
    nothing but these operators cost time."""
    before = interpreter.calls
    predict(unit)                                    # leaves the unit's last call's input in place
    calls = interpreter.calls - before
    ops = [{**op, "ms": op["ms"] * calls} for op in interpreter.operators(repeats)]
    return {"calls_per_unit": calls, "ms_per_unit": ops, "sum_ms_per_unit": sum(op["ms"] for op in ops)}


if __name__ == "__main__":
    bundle, folder, threads, repeats, runtimes, variants, dispatch, operators = sys.argv[1:9]
    if dispatch == "avx2":
        dispatch_avx2()                              # LiteRT float32 on the kernels of the main process
    doc = measure(Path(bundle), np.load(Path(folder) / "units.npy"), int(threads), int(repeats),
                  runtimes.split(","), variants.split(","), operators == "1")
    (Path(folder) / "rows.json").write_text(json.dumps(doc))
