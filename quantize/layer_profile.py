"""Where the encoder's time goes, per stage and per quantization layout (``ctedge bench --layers``).

The TFLite Python runtime has no per-operator profiler, so the encoder architecture
(``training.models.build_encoder``, random weights: the cost of a layer does not depend on its
values) is cut into prefixes ending after the input scaling and after each convolution's global
max-pool, and the whole encoder; each prefix is converted to every layout and timed on the same
group in this process. The cost of a stage is the difference between consecutive prefixes
(fastest of the repeats); on a loaded machine these differences are noisy and can even be
negative: repeat the run. Layouts: float32, int8 with uint8 input (what the bundle ships: a uint8 -> int8 QUANTIZE runs outside XNNPACK), int8 with
int8 input, dynamic-range and float16. It also lists the operators of each shipped model that the
XNNPACK delegate does not take.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edge.card import ModelCard
from edge.runtime import load_interpreter


def undelegated_ops(path: Path, threads: int) -> list[str]:
    """Operators of a TFLite model that the XNNPACK delegate does not take (run by TFLite's own kernels).

    The runtime lists every original operator plus one DELEGATE node; an operator runs outside
    the delegate when it reads a tensor that is produced outside the delegate (a model input, the
    delegate's output, or another such operator's output) and that the delegate does not read itself."""
    interpreter = load_interpreter(path, threads)
    ops = interpreter._get_ops_details()     # noqa: SLF001 - the only op listing the runtime offers
    delegate = next((o for o in ops if o["op_name"] == "DELEGATE"), None)
    if delegate is None:
        return sorted({o["op_name"] for o in ops})
    delegate_in = set(map(int, delegate["inputs"]))
    outside_tensors = {int(d["index"]) for d in interpreter.get_input_details()} | set(map(int, delegate["outputs"]))
    outside: set[int] = set()
    changed = True
    while changed:
        changed = False
        for i, o in enumerate(ops):
            if i in outside or o["op_name"] == "DELEGATE":
                continue
            if any(int(t) in outside_tensors and int(t) not in delegate_in for t in o["inputs"]):
                outside.add(i)
                outside_tensors |= set(map(int, o["outputs"]))
                changed = True
    return sorted({ops[i]["op_name"] for i in outside})


def _time(model: bytes, group: np.ndarray, threads: int, repeats: int, tmp: Path) -> float:
    from edge.runtime import invoke

    path = tmp / "prefix.tflite"
    path.write_bytes(model)
    interpreter = load_interpreter(path, threads)
    x = group[..., None].astype(np.float32)
    invoke(interpreter, x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        invoke(interpreter, x)
        times.append((time.perf_counter() - start) * 1000.0)
    return min(times)       # the least disturbed run: differences of medians drown in the noise of a shared CPU


def layer_profile(card: ModelCard, group: np.ndarray, threads: int, repeats: int, tmp: Path) -> dict:
    """ms per group of each encoder prefix in each layout, and the per-stage differences."""
    import tensorflow as tf
    import tf_keras as keras

    from quantize.convert import convert
    from training.models import build_encoder

    keras.utils.set_random_seed(0)
    p = card.preprocessing
    filters = tuple(card.extra.get("trained_with", {}).get("filters", (16, 32, 64, 128)))
    encoder = build_encoder((p.input_size, p.input_size, 1), filters=filters)
    names = ["input scaling"] + [f"conv{i + 1} (+ its pool)" for i in range(len(filters))] + ["other max-pools + concat"]
    # Each prefix ends in a global max-pool (the encoder's own gmp layers): a tiny output, so that
    # copying a full-size activation out of the interpreter does not swamp the layer's cost.
    cuts = [keras.layers.GlobalMaxPooling2D()(encoder.layers[1].output)] \
        + [encoder.get_layer(f"gmp{i + 1}").output for i in range(len(filters))] + [encoder.output]
    shape = (p.group_size, p.input_size, p.input_size, 1)
    sample = group[..., None].astype(np.float32)

    def representative():
        for i in range(0, len(sample), 10):
            yield [np.repeat(sample[i:i + 1], p.group_size, axis=0)]
            if i >= 20:
                return

    layouts = {"float32": ("float32", None), "int8 (uint8 input, shipped)": ("int8", tf.uint8),
               "int8 (int8 input)": ("int8", tf.int8), "dynamic": ("dynamic", None), "float16": ("float16", None)}
    table: dict[str, list[float]] = {}
    for layout, (variant, input_type) in layouts.items():
        row = []
        for cut in cuts:
            prefix = keras.Model(encoder.input, cut)
            kwargs = {"representative": representative, "int8_input": input_type} if variant == "int8" else {}
            row.append(round(_time(convert(prefix, shape, variant, **kwargs), group, threads, repeats, tmp), 2))
        table[layout] = row
    stages = {layout: dict(zip(names, np.round(np.diff([0.0, *row]), 2).tolist())) for layout, row in table.items()}
    return {"threads": threads, "prefix_ms": {k: dict(zip(names, v)) for k, v in table.items()}, "stage_ms": stages,
            "undelegated_ops": {f: undelegated_ops(card.bundle / f, threads) for files in card.variants.values()
                                for f in files.values()}}
