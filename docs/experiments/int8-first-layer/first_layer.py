"""Does a different first layer let the demo encoder's int8 reach 2x LiteRT float32 with AVX2 kernels?

Builds three encoders from the demo bundle's float32 weights and converts each to float32 and int8
TFLite (static batch 10, as the edge runs int8; int8 calibrated on 50 synthetic smoothed-noise
slices: enough for timing, not a model to ship):

- ``orig``: the demo encoder as shipped (conv1 1 -> 16 channels at 256 x 256, then a 2 x 2 max-pool);
- ``s2d``: conv1 and its 2 x 2 max-pool rewritten exactly: space-to-depth (256 x 256 x 1 ->
  128 x 128 x 4), one 3 x 3 convolution 4 -> 64 channels (the four positions of each 2 x 2 window),
  the maximum of the four 16-channel groups; the same numbers as ``orig`` in float32;
- ``stride``: conv1 at stride 2 and no 2 x 2 pool after it (timing only: a different model, which
  would have to be trained; it reuses the demo weights).

Then times every file, in turn, on OpenVINO (f32 hint: int8 kernels for the int8 files) and the
float32 files on LiteRT, 2 threads, one 50-slice group = 5 calls of 10, in a subprocess per
dispatch: ``avx2`` (``ONEDNN_MAX_CPU_ISA=AVX2`` and XNNPACK's AVX2 kernels) and ``native``.

    .venv/bin/python docs/experiments/int8-first-layer/first_layer.py --out /tmp/first-layer
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
NAMES = ("orig", "s2d", "stride")


def build(bundle: Path, out: Path) -> None:
    """Write ``{orig,s2d,stride}_{float32,int8}.tflite`` and the synthetic input ``x.npy`` to ``out``."""
    sys.path.insert(0, str(REPO))
    import training  # noqa: F401  (tf_keras before TensorFlow)
    import tensorflow as tf
    import tf_keras as keras
    from ai_edge_litert.interpreter import Interpreter
    from tf_keras import layers

    from quantize.convert import convert
    from training.models import build_encoder

    lite = Interpreter(str(bundle / "encoder_float32.tflite"))
    lite.allocate_tensors()
    tensors = {d["name"]: d["index"] for d in lite.get_tensor_details()}

    def conv_weights(i: int, filters: int) -> list[np.ndarray]:
        kernel = next(lite.get_tensor(idx) for name, idx in tensors.items()
                      if f"conv{i}/" in name and lite.get_tensor(idx).shape[:1] == (filters,)
                      and lite.get_tensor(idx).ndim == 4)
        bias = next(lite.get_tensor(idx) for name, idx in tensors.items()
                    if f"conv{i}/" in name and lite.get_tensor(idx).shape == (filters,))
        kernel = kernel.transpose(1, 2, 3, 0)
        return [kernel * 255.0 if i == 1 else kernel, bias]  # the converter folds Rescaling into conv1

    weights = {i: conv_weights(i, f) for i, f in ((1, 16), (2, 32), (3, 64), (4, 128))}

    def tail(y, first: int):  # noqa: ANN001, ANN202  (Keras tensors)
        pooled = [layers.Flatten()(layers.MaxPooling2D(tuple(y.shape[1:3]))(y))]
        for i, f in ((2, 32), (3, 64), (4, 128)):
            if i > first:
                y = layers.MaxPooling2D(2)(y)
            y = layers.Conv2D(f, 3, padding="same", activation="relu", name=f"conv{i}")(y)
            pooled.append(layers.Flatten()(layers.MaxPooling2D(tuple(y.shape[1:3]))(y)))
        return layers.Concatenate()(pooled)

    orig = build_encoder()
    inp = keras.Input((256, 256, 1))
    y = layers.Lambda(lambda t: tf.nn.space_to_depth(t, 2))(layers.Rescaling(1.0 / 255.0)(inp))
    y = layers.Conv2D(64, 3, padding="same", activation="relu", name="conv1")(y)
    y = layers.Maximum()([layers.Maximum()([y[..., 0:16], y[..., 16:32]]),
                          layers.Maximum()([y[..., 32:48], y[..., 48:64]])])
    s2d = keras.Model(inp, tail(y, first=2))
    inp = keras.Input((256, 256, 1))
    y = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv1")(
        layers.Rescaling(1.0 / 255.0)(inp))
    stride = keras.Model(inp, tail(y, first=2))
    for model in (orig, s2d, stride):
        for i in (2, 3, 4):
            model.get_layer(f"conv{i}").set_weights(weights[i])
    orig.get_layer("conv1").set_weights(weights[1])
    stride.get_layer("conv1").set_weights(weights[1])
    kernel, bias = weights[1]
    s2d_kernel = np.zeros((3, 3, 4, 64), np.float32)  # output y[2R+a, 2C+b] reads x rows 2R+a-1 .. 2R+a+1
    for di in range(3):
        for dj in range(3):
            for sa in range(2):
                for sb in range(2):
                    for a in range(2):
                        for b in range(2):
                            i, j = 2 * di - 1 + sa - a, 2 * dj - 1 + sb - b
                            if 0 <= i <= 2 and 0 <= j <= 2:
                                s2d_kernel[di, dj, 2 * sa + sb, 16 * (2 * a + b):16 * (2 * a + b + 1)] = kernel[i, j, 0]
    s2d.get_layer("conv1").set_weights([s2d_kernel, np.tile(bias, 4)])

    rng = np.random.default_rng(0)
    x = tf.nn.avg_pool2d(rng.integers(0, 256, (50, 256, 256, 1)).astype(np.float32), 5, 1, "SAME").numpy().round()
    print("s2d vs orig, float32 features: max |difference|", float(np.abs(s2d(x).numpy() - orig(x).numpy()).max()))
    calibration = [x[i:i + 10] for i in range(0, 50, 10)]
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "x.npy", x)
    for name, model in zip(NAMES, (orig, s2d, stride)):
        for variant in ("float32", "int8"):
            data = convert(model, (10, 256, 256, 1), variant, representative=lambda: ([c] for c in calibration),
                           int8_input=tf.uint8)
            (out / f"{name}_{variant}.tflite").write_bytes(data)


def time_all(out: Path, dispatch: str, repeats: int) -> None:
    """Median ms per 50-slice group of every file, timed in turn, with this process's ``dispatch``."""
    sys.path.insert(0, str(REPO))
    from ai_edge_litert.interpreter import Interpreter

    if dispatch == "avx2":
        from quantize.avx2_dispatch import dispatch_avx2
        dispatch_avx2()
    from edge.runtime_openvino import _openvino
    ov = _openvino()
    core = ov.Core()
    x = np.load(out / "x.npy")
    runs = {}
    for name in NAMES:
        for variant in ("float32", "int8"):
            compiled = core.compile_model(core.read_model(str(out / f"{name}_{variant}.tflite")), "CPU", {
                "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY"})
            request = compiled.create_infer_request()
            data = x.astype(np.uint8) if variant == "int8" else x
            runs[f"openvino {name} {variant}"] = lambda r=request, d=data: [r.infer([d[i:i + 10]]) for i in range(0, 50, 10)]
        interpreter = Interpreter(str(out / f"{name}_float32.tflite"), num_threads=2)
        interpreter.allocate_tensors()
        (inp,), (outp,) = interpreter.get_input_details(), interpreter.get_output_details()

        def litert(it=interpreter, i_=inp["index"], o_=outp["index"]) -> None:  # noqa: ANN001
            for i in range(0, 50, 10):
                it.set_tensor(i_, x[i:i + 10])
                it.invoke()
                it.get_tensor(o_)
        runs[f"litert {name} float32"] = litert
    for run in runs.values():
        run()
        run()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            times[key].append((time.perf_counter() - start) * 1000)
    reference = float(np.median(times["litert orig float32"]))
    for key, values in times.items():
        ms = float(np.median(values))
        print(f"{dispatch:6s} {key:24s} {ms:6.1f} ms/group  {reference / ms:4.2f}x LiteRT orig float32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "edge/models/demo")
    parser.add_argument("--out", type=Path, required=True, help="folder for the converted files")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--time", choices=("avx2", "native"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time:
        time_all(args.out, args.time, args.repeats)
        return
    build(args.bundle, args.out)
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split()
    print("CPU flags:", " ".join(f for f in flags if f.startswith(("avx", "amx", "fma"))))
    for dispatch in ("avx2", "native"):
        env = dict(os.environ, **({"ONEDNN_MAX_CPU_ISA": "AVX2"} if dispatch == "avx2" else {}))
        subprocess.run([sys.executable, __file__, "--out", str(args.out), "--repeats", str(args.repeats),
                        "--time", dispatch], env=env, check=True)


if __name__ == "__main__":
    main()
