"""``ctedge bench``: Keras float vs TFLite float32 vs TFLite int8 on the same real units (50-slice
groups of a group model, kept slices of a slice model), on every edge runtime: LiteRT in this
process, OpenVINO (f32 hint; bf16 where the CPU computes it) in a subprocess that gets the same
``--dispatch`` (``quantize.openvino_bench``); a bundle without one of the two TFLite variants runs
the other (the int8 vs float32 figures are then null). Each runtime's kernels are named (LiteRT:
XNNPACK's dispatch; OpenVINO: the oneDNN kernels of its runtime model) and every row's speed is
given as a ratio to LiteRT float32 timed in turn with it (in this process for LiteRT's rows, in the
subprocess for OpenVINO's), with the load average before and after.

Every figure printed comes from this run: per-unit latency (min and median over repeats),
agreement with Keras, the per-patient time by stage, peak memory, parameters, FLOPs per unit and
the fraction of this CPU's measured float32 matrix-multiply peak that each variant reaches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

from edge.card import KIND_MODALITY, load_card
from edge.errors import UserError
from edge.ingest.parallel import decode_series
from edge.ingest.pydicom_adapter import first_plugin
from edge.ingest.sources import study_files
from edge.kinds import KINDS
from edge.pipeline import PREPARE, run_study
from edge.tune import BF16_FLAGS, cpu_identity, tune
from quantize.fidelity import bundle_sizes, compare
from quantize.openvino_bench import openvino_rows


def measure_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 GEMM throughput (GFLOP/s) of NumPy's BLAS on this machine, all threads."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), np.float32), rng.random((n, n), np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def keras_flops(model) -> int:
    """2 x multiply-adds of the convolution (plain, depthwise, separable), Dense and bidirectional
    LSTM layers for one sample."""
    import tf_keras as keras

    flops = 0
    for layer in model.layers:
        if isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)):
            _, h, w, c_out = layer.output_shape
            kh, kw, c_in, multiplier = layer.depthwise_kernel.shape
            flops += 2 * h * w * kh * kw * c_in * multiplier
            if isinstance(layer, keras.layers.SeparableConv2D):
                flops += 2 * h * w * c_in * multiplier * c_out
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output_shape
            kh, kw, c_in, _ = layer.kernel.shape
            flops += 2 * h * w * kh * kw * c_in * c_out
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
        elif isinstance(layer, keras.layers.Bidirectional):
            steps, n_in = layer.input_shape[1:]
            units = layer.forward_layer.units
            flops += 2 * 2 * steps * 4 * (n_in + units) * units
    return int(flops)


class KerasClassifier:
    """The float Keras model of a run folder (encoder + head, or a slice model), called like the
    TFLite classifier of its kind; ``flops`` and ``parameters`` per unit."""

    def __init__(self, run: Path):
        from training.slice_train import is_slice_run, load_slice_run
        from training.train import load_run_models

        if is_slice_run(run):
            self.model = load_slice_run(run)[0]
            self.flops, self.parameters = keras_flops(self.model), self.model.count_params()
        else:
            self.encoder, self.head = load_run_models(run)
            self.model = None
            self.flops = self.head.input_shape[1] * keras_flops(self.encoder) + keras_flops(self.head)
            self.parameters = self.encoder.count_params() + self.head.count_params()

    def predict(self, unit: np.ndarray) -> np.ndarray:
        from training.models import predict_group

        if self.model is not None:
            return self.model(unit[None, ..., None].astype(np.float32), training=False).numpy()[0]
        return predict_group(self.encoder, self.head, unit)


def decode_modes(study: Path, repeats: int = 2) -> dict | None:
    """Seconds (and ms per slice) to decode every file of ``study`` serially, with threads and with
    processes (best of ``repeats``, same run), the speed-ups over serial (whether the decoder
    releases the GIL) and the pydicom plugin tried first for the study's transfer syntax.
    None for a study without DICOM files (e.g. one PNG radiograph)."""
    with study_files(study) as files:
        paths = sorted(f for f in files if f.suffix.lower() in ("", ".dcm"))
        if not paths:
            return None
        import pydicom

        first = pydicom.dcmread(paths[0], stop_before_pixels=True)
        shape = (int(first.Rows), int(first.Columns))
        seconds = {mode: min(_decode_seconds(paths, shape, mode) for _ in range(repeats))
                   for mode in ("serial", "threads", "processes")}
    syntax = str(first.file_meta.get("TransferSyntaxUID"))
    return {"n_slices": len(paths), "transfer_syntax": syntax, "decoder": first_plugin(syntax),
            "seconds": {m: round(s, 3) for m, s in seconds.items()},
            "ms_per_slice": {m: round(s * 1000 / len(paths), 2) for m, s in seconds.items()},
            "speedup_threads": round(seconds["serial"] / seconds["threads"], 2),
            "speedup_processes": round(seconds["serial"] / seconds["processes"], 2)}


def _tune_rows(card, group: np.ndarray, threads: int, repeats: int) -> dict:
    """Every variant that passes the fidelity thresholds with 1..``threads`` threads (what ``ctedge
    tune`` measures; nothing is recorded here)."""
    choice, rows = tune(card, group, threads, repeats)
    return {"rows": rows, "fastest": {"runtime": choice.runtime, "variant": choice.variant, "threads": choice.threads}}


def _decode_seconds(paths: list[Path], shape: tuple[int, int], mode: str) -> float:
    start = time.perf_counter()
    decode_series(paths, shape, mode=mode)  # type: ignore[arg-type]
    return time.perf_counter() - start


BENCH_VARIANTS = ("float32", "int8")
"""The TFLite variants compared with Keras, those of them that the bundle has."""


def bench(study: Path, bundle: Path, keras_run: Path | None, repeats: int, threads: int | None,
          layers: bool = False, dispatch: str = "native") -> dict:
    """Run the bundle's float32 and int8 variants (those it has) on every runtime, and Keras, on the
    units (groups, slices or the radiograph, by the bundle's kind) of ``study`` and return the
    benchmark document; the int8 vs float32 figures are None unless the bundle has both. ``dispatch``
    (set in this process by the caller) is passed on to OpenVINO's subprocess."""
    load_before = os.getloadavg()
    threads = threads or os.cpu_count() or 1
    card = load_card(bundle)
    kind = KINDS[card.kind]
    unit = kind.unit
    present = [v for v in BENCH_VARIANTS if v in card.variants]
    if not present:
        raise UserError(card.path, f"no {' or '.join(BENCH_VARIANTS)} variant to benchmark; "
                                   f"available: {', '.join(card.variants)}")
    classifiers = {v: kind.classifier(card, v, threads) for v in present}
    predictors = {f"tflite_{v}": c.predict for v, c in classifiers.items()}
    errors, flops, parameters = {}, None, None
    try:
        if keras_run is None:
            raise FileNotFoundError("no --keras run folder given")
        keras = KerasClassifier(keras_run)
        predictors = {"keras": keras.predict, **predictors}
        flops, parameters = keras.flops, keras.parameters
    except ImportError:
        errors["keras"] = "TensorFlow is not installed (pip install 'ctedge[train]')"
    except (FileNotFoundError, OSError) as exc:
        errors["keras"] = str(exc)
    units = kind.units(PREPARE[KIND_MODALITY[card.kind]](study, card.preprocessing))
    reference = next(iter(predictors))               # Keras, else float32, else int8
    results = compare(predictors, [units], reference, repeats, unit)
    sizes = bundle_sizes(card)
    variants = {name: {f"ms_per_{unit}_median": r[f"ms_per_{unit}_median"], f"ms_per_{unit}_min": r[f"ms_per_{unit}_min"],
                       "size_bytes": sizes.get(name.removeprefix("tflite_")),
                       f"agreement_with_{reference}": None if name == reference else r["top1_agreement"],
                       "max_prob_diff": None if name == reference else r["max_abs_prob_diff"]}
                for name, r in results.items()}
    variants.update({name: {"error": why} for name, why in errors.items()})
    cpu = cpu_identity()
    median = {n: r[f"ms_per_{unit}_median"] for n, r in results.items()}
    runtimes: dict[str, dict] = {"litert": {"kernels": "XNNPACK, " + ("AVX2 + FMA (wider flags hidden)"
                                                                      if dispatch == "avx2" else "native dispatch")}}
    ov_runtimes = ["openvino-f32"] + (["openvino-bf16"] if set(BF16_FLAGS) & set(cpu["flags"]) else [])
    alongside: dict[str, float | None] = {}         # OpenVINO rows: LiteRT float32 timed in turn with them
    ov = openvino_rows(card.bundle, units, threads, repeats, dispatch, ov_runtimes, present, operators=layers)
    if "skipped" in ov:
        runtimes["openvino"] = {"skipped": ov["skipped"]}
    else:
        reference_probs = np.stack([predictors[reference](u) for u in units])
        for name, row in ov.items():
            runtimes[name.rpartition("_")[0]] = {"onednn_max_cpu_isa": row.get("onednn_max_cpu_isa")}
            if "error" in row:
                variants[name] = {"error": row["error"]}
                continue
            probs = np.asarray(row["probs"])
            variants[name] = {f"ms_per_{unit}_median": row["ms_median"], f"ms_per_{unit}_min": row["ms_min"],
                              "size_bytes": sizes.get(name.rpartition("_")[2]),
                              f"agreement_with_{reference}": float((probs.argmax(1) == reference_probs.argmax(1)).mean()),
                              "max_prob_diff": float(np.abs(probs - reference_probs).max()), "kernels": row["kernels"],
                              **({"operators": row["operators"]} if "operators" in row else {})}
            median[name] = row["ms_median"]
            alongside[name] = row["litert_float32_ms_median"]
    peak = measure_peak_gflops()
    both = len(present) == len(BENCH_VARIANTS)
    end_to_end = present[-1]                         # int8 where the bundle has it
    base = median.get("tflite_float32")
    return {
        "model": {"name": card.name, "kind": card.kind, "banner": card.banner, "input_size": card.preprocessing.input_size},
        "unit": unit, "study_units": len(units), "repeats": repeats, "threads": threads,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "cpu_flags": cpu["flags"], "cpu_model": cpu["model"],
        "variants": variants, "runtimes": runtimes, "dispatch_kernels": dispatch,
        "ratio_vs_litert_float32": {n: round((alongside.get(n) or base) / ms, 2) for n, ms in median.items()}
                                   if base else None,
        "speedup_int8_vs_float32": round(median["tflite_float32"] / median["tflite_int8"], 2) if both else None,
        "speedup_int8_vs_keras": round(median["keras"] / median["tflite_int8"], 2)
                                 if "keras" in median and "tflite_int8" in median else None,
        "size_ratio_float32_vs_int8": round(sizes["float32"] / sizes["int8"], 2) if both else None,
        "parameters": parameters, f"flops_per_{unit}": flops, "cpu_peak_gflops_float32_gemm": round(peak, 1),
        "fraction_of_peak": {n: round(flops / (ms / 1000) / 1e9 / peak, 3) for n, ms in median.items()} if flops else None,
        "end_to_end_variant": end_to_end,
        "end_to_end_ms_by_stage": run_study(study, classifiers[end_to_end], card.preprocessing,
                                            release_full_resolution=True).to_dict()["timings_ms"],
        "decode": decode_modes(study),
        "variants_by_threads": _tune_rows(card, units[0], threads, repeats),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "layers": _layers(card, units[0], threads, repeats) if layers and card.kind == "group" else None,
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
    }


def _layers(card, group: np.ndarray, threads: int, repeats: int) -> dict:
    import tempfile

    from quantize.layer_profile import layer_profile

    with tempfile.TemporaryDirectory() as tmp:
        return layer_profile(card, group, threads, repeats, Path(tmp))


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark Keras vs TFLite float32 vs TFLite int8 on every runtime on one study",
                       description="Runs Keras (--keras) and the bundle's float32 and int8 variants (those it has) on "
                                   "LiteRT in this process and on OpenVINO (when installed) in a subprocess, on the same real units (50-slice groups of "
                                   "a group model, kept slices of a slice model) and prints latency per unit, "
                                   "agreement, speed-ups and ratios to LiteRT float32, each runtime's kernels, "
                                   "parameters, FLOPs, the fraction of the CPU's measured peak, "
                                   "time per stage, peak memory and the load average.")
    p.add_argument("study", type=Path, help="a CT study (folder, zip)")
    p.add_argument("--model", type=Path, required=True, help="TFLite bundle folder (model.json)")
    p.add_argument("--keras", type=Path, default=None,
                   help="run folder with encoder.keras/head.keras or slice_model.keras (needs [train])")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--layers", action="store_true",
                   help="also time the encoder stage by stage in each quantization layout (needs TensorFlow) "
                        "and list OpenVINO's per-operator times (its PERF_COUNT counters) for each of its rows")
    p.add_argument("--dispatch", choices=("native", "avx2"), default="native",
                   help="avx2: run XNNPACK's AVX2 + FMA kernels even on a CPU with AVX-512/VNNI/AMX (its flags hidden "
                        "from the runtime's CPU detection) and OpenVINO's with ONEDNN_MAX_CPU_ISA=AVX2, to predict an "
                        "AVX2-only box; ratios hold, times are this CPU's")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)


def _dispatch(choice: str) -> dict:
    """Set the kernels XNNPACK (and oneDNN, for Keras) may use in this process, before any model loads."""
    if choice == "native":
        return {"kernels": "native"}
    from quantize.avx2_dispatch import DispatchError, dispatch_avx2

    try:
        hidden = dispatch_avx2()
    except DispatchError as exc:
        raise UserError("--dispatch avx2", str(exc)) from exc
    os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    return {"kernels": "avx2", "hidden_flags": hidden,
            "note": "XNNPACK's AVX2 + FMA kernels on this CPU (flags hidden from the runtime's CPU detection): "
                    "ratios predict an AVX2-only CPU, absolute times are this CPU's; decoding and the NumPy GEMM peak "
                    "are not affected"}


def cmd_bench(args: argparse.Namespace) -> int:
    dispatch = _dispatch(args.dispatch)
    doc = {**bench(args.study, args.model, args.keras, args.repeats, args.threads, args.layers, args.dispatch),
           "dispatch": dispatch}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    unit = doc["unit"]
    if dispatch["kernels"] != "native":
        print(f"*** AVX2 KERNELS: {dispatch['note']}; hidden flags: "
              f"{' '.join(dispatch['hidden_flags']) or 'none (AVX2-only CPU)'} ***")
    if doc["model"]["banner"]:
        print(f"*** {doc['model']['banner']} *** (timings are valid; its verdicts are not)")
    print(f"{doc['model']['name']} ({doc['model']['kind']} model, {doc['model']['input_size']} px): "
          f"{doc['study_units']} {unit}s of {args.study}")
    ratios = doc["ratio_vs_litert_float32"] or {}
    print(f"{'variant':<22}{f'median ms/{unit}':>17}{f'min ms/{unit}':>14}{'KiB':>8}{'agree':>8}{'max |dp|':>10}"
          f"{'vs LiteRT f32':>15}")
    for name, r in doc["variants"].items():
        if "error" in r:
            print(f"{name:<22} not run: {r['error']}")
            continue
        agree = next(v for k, v in r.items() if k.startswith("agreement_with_"))
        size = f"{r['size_bytes'] / 1024:.0f}" if r["size_bytes"] else "-"
        agree, diff = ("ref", "-") if agree is None else (f"{agree:.1%}", f"{r['max_prob_diff']:.4f}")
        ratio = f"{ratios[name]}x" if name in ratios else "-"
        print(f"{name:<22}{r[f'ms_per_{unit}_median']:>17.1f}{r[f'ms_per_{unit}_min']:>14.1f}"
              f"{size:>8}{agree:>8}{diff:>10}{ratio:>15}")
    for runtime, r in doc["runtimes"].items():
        print(f"kernels of {runtime}: {r['kernels']}" if "kernels" in r else
              f"{runtime}: skipped: {r['skipped']}" if "skipped" in r else
              f"kernels of {runtime} (ONEDNN_MAX_CPU_ISA={r['onednn_max_cpu_isa']}): "
              + "; ".join(f"{n}: {_kernels(v['kernels'])}" for n, v in doc["variants"].items()
                          if n.startswith(runtime + "_") and "kernels" in v))
    if doc["speedup_int8_vs_float32"] is None:
        print("speed-up int8 vs float32, float32/int8 size: not in this bundle (it has "
              f"{', '.join(n.removeprefix('tflite_') for n in doc['variants'] if n.startswith('tflite_'))})")
    else:
        print(f"speed-up int8 vs float32: {doc['speedup_int8_vs_float32']}x; "
              f"float32/int8 size: {doc['size_ratio_float32_vs_int8']}x")
    if doc["speedup_int8_vs_keras"] is not None:
        print(f"speed-up int8 vs Keras: {doc['speedup_int8_vs_keras']}x")
    if doc[f"flops_per_{unit}"]:
        print(f"parameters: {doc['parameters']:,}; FLOPs per {unit}: {doc[f'flops_per_{unit}'] / 1e9:.2f} G; CPU float32 GEMM peak "
              f"{doc['cpu_peak_gflops_float32_gemm']} GFLOP/s (NumPy); fraction of that peak reached: "
              f"{doc['fraction_of_peak']} (int8 counts the same operations against the float32 peak; "
              "8-bit SIMD arithmetic has up to 4x its throughput, so int8 can pass 1)")
    print(f"end to end with {doc['end_to_end_variant']}, ms: "
          + ", ".join(f"{k} {v:.0f}" for k, v in doc["end_to_end_ms_by_stage"].items()))
    for r in doc["variants_by_threads"]["rows"]:
        if "skipped" in r:
            print(f"  {r['runtime']:<14} {r['variant']:<8} skipped: {r['skipped']}")
            continue
        runoff = f", run-off {r['runoff_ms_per_group_median']:.1f}" if "runoff_ms_per_group_median" in r else ""
        print(f"  {r['runtime']:<14} {r['variant']:<8} {r['threads']} thread(s): {r['ms_per_group_median']:.1f} ms/group"
              f"{runoff} (max |dp| vs first row {r['max_prob_diff_vs_first']:.4f})")
    print(f"fastest here: {doc['variants_by_threads']['fastest']}")
    if doc["layers"]:
        stages = doc["layers"]["stage_ms"]
        names = list(next(iter(stages.values())))
        print(f"{'encoder stage, ms/group':<28}" + "".join(f"{layout[:14]:>16}" for layout in stages))
        for name in names:
            print(f"{name:<28}" + "".join(f"{stages[layout][name]:>16.1f}" for layout in stages))
        print("operators outside XNNPACK: " + "; ".join(f"{f}: {', '.join(ops) or 'none'}"
                                                       for f, ops in doc["layers"]["undelegated_ops"].items()))
    for name, r in doc["variants"].items():
        if "operators" in r:
            print(_operator_line(name, r, unit, ratios.get(name), r[f"ms_per_{unit}_median"]))
    d = doc["decode"]
    if d:
        print(f"decode {d['n_slices']} slices ({d['transfer_syntax']}) with {d['decoder']}, ms/slice: "
              + ", ".join(f"{k} {v}" for k, v in d["ms_per_slice"].items())
              + f"; speed-up threads {d['speedup_threads']}x, processes {d['speedup_processes']}x")
    print(f"peak RSS {doc['peak_rss_mb']} MB; {doc['threads']} threads on {doc['cpu_count']} CPUs ({doc['cpu_model']}; "
          f"flags: {' '.join(doc['cpu_flags'])}); load average before {doc['load_average']['before']}, "
          f"after {doc['load_average']['after']}")
    return 0


def _operator_line(name: str, row: dict, unit: str, ratio: float | None, median: float) -> str:
    """OpenVINO's per-operator counters of one row: the operators in execution order (those over 1%
    of the sum), the sum against the measured median, and the ratio to LiteRT float32 the row would
    reach if nothing but its operators cost time."""
    ops = row["operators"]
    total = ops["sum_ms_per_unit"]
    listed = ", ".join(f"{op['type']} {op['kernel']} {op['ms']:.1f}" for op in ops["ms_per_unit"] if op["ms"] > total / 100)
    bound = f"; operators alone would be {ratio * median / total:.2f}x LiteRT float32" if ratio and total else ""
    return (f"OpenVINO operators of {name}, ms/{unit} ({ops['calls_per_unit']} call(s)): {listed}; "
            f"sum {total:.1f} of {median:.1f} measured{bound}")


def _kernels(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} x{n}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))
