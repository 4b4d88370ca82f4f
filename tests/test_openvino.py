"""OpenVINO as a second edge runtime: it reads the bundle's .tflite files, agrees with LiteRT within
the fidelity thresholds, is a tune candidate only when faithful, runs in ``ctedge bench`` with the
kernels of the dispatch asked for, and is skipped with a reason when it is not installed."""

import os
import subprocess
import sys

import numpy as np
import pytest

from edge.card import load_card
from edge.doctor import check_tuned
from edge.engine import DEFAULT_BUNDLE
from edge.errors import ModelLoadError
from edge.infer import SliceClassifier, TFLiteClassifier
from edge.profile import ModelSettings, default_profile
from edge.runtime import load_interpreter
from edge.runtime_openvino import unavailable
from edge.tune import MAX_PROB_DIFF, Choice, candidates, cpu_identity, cpu_key, phantom_group, record, resolve, tune
from quantize.openvino_bench import openvino_rows
from tests.helpers.paths import REPO

SLICE_BUNDLE = REPO / "edge" / "models" / "demo-slice"
needs_openvino = pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "openvino installed")


@pytest.fixture
def no_openvino(monkeypatch):
    """Python as it is without the openvino package: importing it raises ImportError."""
    monkeypatch.setitem(sys.modules, "openvino", None)


@needs_openvino
def test_openvino_runs_without_calling_home(tmp_path):
    """A bare ``import openvino`` writes a telemetry client id under ~/intel (and sends a usage event);
    the edge's OpenVINO runtime loads and runs a model without either."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}          # OpenVINO's telemetry is off in CI
    edge = ("from edge.runtime import load_interpreter, invoke; import numpy as np;"
            "m = load_interpreter('edge/models/demo/encoder_int8.tflite', 1, batch=1, runtime='openvino-f32');"
            "invoke(m, np.zeros((1, 256, 256, 1), np.float32))")
    for name, code in (("bare", "import openvino"), ("edge", edge)):
        (tmp_path / name).mkdir()
        subprocess.run([sys.executable, "-c", code], env={**env, "HOME": str(tmp_path / name)}, cwd=REPO, check=True,
                       timeout=120)
    assert (tmp_path / "bare" / "intel" / "openvino_ga_cid").is_file(), "openvino's telemetry as measured"
    assert not any((tmp_path / "edge").iterdir()), "the edge runtime wrote nothing to $HOME"


@needs_openvino
@pytest.mark.parametrize("variant", ["int8", "float32"])
def test_the_group_encoder_on_openvino_agrees_with_litert_float32(variant):
    card = load_card(DEFAULT_BUNDLE)
    group = phantom_group(card, seed=1)
    reference = TFLiteClassifier(card, "float32", 1).predict(group)
    litert = TFLiteClassifier(card, variant, 1).predict(group)
    openvino = TFLiteClassifier(card, variant, 1, runtime="openvino-f32")
    probs = openvino.predict(group)
    assert openvino.info.runtime == "openvino-f32" and openvino.info.variant == variant
    assert np.argmax(probs) == np.argmax(reference) and np.abs(probs - reference).max() <= MAX_PROB_DIFF
    assert np.abs(probs - litert).max() < 0.01, "OpenVINO runs the same file as LiteRT"


@needs_openvino
def test_the_int8_slice_model_on_openvino_agrees_with_litert_float32():
    card = load_card(SLICE_BUNDLE)
    image = phantom_group(card, seed=2)
    reference = SliceClassifier(card, "float32", 1).predict(image)
    probs = SliceClassifier(card, "int8", 1, runtime="openvino-f32").predict(image)
    assert np.argmax(probs) == np.argmax(reference) and np.abs(probs - reference).max() <= MAX_PROB_DIFF


@needs_openvino
def test_openvino_names_its_kernels_and_cannot_read_the_fused_lstm_head():
    interpreter = load_interpreter(DEFAULT_BUNDLE / "encoder_int8.tflite", 1, batch=1, runtime="openvino-f32")
    kernels = interpreter.kernels()
    assert kernels and any(name.startswith("Convolution") and name.endswith("_I8") for name in kernels), kernels
    with pytest.raises(ModelLoadError, match="cannot be loaded by OpenVINO"):
        load_interpreter(DEFAULT_BUNDLE / "head_int8.tflite", 1, runtime="openvino-f32")


@needs_openvino
def test_an_unfaithful_openvino_candidate_is_measured_but_never_chosen(monkeypatch):
    card = load_card(DEFAULT_BUNDLE)
    monkeypatch.setattr("edge.tune.fidelity_check", lambda card, runtime, *_: 0.5 if runtime != "litert" else 0.0)
    choice, rows = tune(card, phantom_group(card), max_threads=1, repeats=1, variants=["int8"])
    refused = [r for r in rows if "not faithful" in r.get("skipped", "")]
    assert "openvino-f32" in {r["runtime"] for r in refused}      # and openvino-bf16 where the CPU has bf16
    assert all(r["runtime"] != "litert" and r["max_prob_diff_vs_float32"] == 0.5 for r in refused)
    assert choice.runtime == "litert"


def test_without_openvino_its_candidates_are_skipped_with_the_reason(no_openvino):
    card = load_card(DEFAULT_BUNDLE)
    reason = unavailable()
    assert "openvino is not installed" in reason and "ctedge[openvino]" in reason
    pairs, skipped = candidates(card, ["int8", "float32"])
    assert pairs == [("litert", "int8"), ("litert", "float32")] and skipped == [f"openvino-f32, openvino-bf16: {reason}"]
    choice, rows = tune(card, phantom_group(card), max_threads=1, repeats=1, variants=["int8"])
    assert choice.runtime == "litert" and rows[0]["skipped"] == reason
    with pytest.raises(ModelLoadError, match="openvino is not installed"):
        load_interpreter(DEFAULT_BUNDLE / "encoder_int8.tflite", 1, runtime="openvino-f32")


def test_a_tuned_openvino_choice_falls_back_when_openvino_is_gone(tmp_path, monkeypatch, no_openvino):
    monkeypatch.setenv("CTEDGE_TUNE_CACHE", str(tmp_path / "tuned.json"))
    card = load_card(DEFAULT_BUNDLE)
    record(card, Choice("float32", 1, 1.0, "now", cpu_key(), "openvino-f32"))
    variant, runtime, _, chosen = resolve(card, ModelSettings(DEFAULT_BUNDLE))
    assert (variant, runtime) == ("int8", "litert") and "not tuned" in chosen


@needs_openvino
@pytest.mark.skipif("avx2" not in cpu_identity()["flags"], reason="an x86-64 CPU with AVX2 is needed")
def test_bench_runs_openvino_in_a_subprocess_with_the_avx2_kernels_it_was_asked_for():
    card = load_card(SLICE_BUNDLE)
    images = [phantom_group(card, seed) for seed in (1, 2)]
    rows = openvino_rows(SLICE_BUNDLE, images, 1, 1, "avx2", ["openvino-f32"], ["int8"])
    row = rows["openvino-f32_int8"]
    assert row["onednn_max_cpu_isa"] == "AVX2" and len(row["probs"]) == 2 and row["ms_median"] > 0
    assert row["litert_float32_ms_median"] > 0           # timed in turn with the row, for its ratio
    convolutions = [k for k in row["kernels"] if k.startswith("Convolution")]
    assert convolutions and all("avx2" in k for k in convolutions), row["kernels"]
    reference = np.stack([SliceClassifier(card, "float32", 1).predict(image) for image in images])
    probs = np.asarray(row["probs"])
    assert (probs.argmax(1) == reference.argmax(1)).all() and np.abs(probs - reference).max() <= MAX_PROB_DIFF
    native = openvino_rows(SLICE_BUNDLE, images[:1], 1, 1, "native", ["openvino-f32"], ["int8"])["openvino-f32_int8"]
    assert native["onednn_max_cpu_isa"] == "native"


@needs_openvino
def test_bench_layers_says_where_openvinos_time_goes_per_operator():
    """With ``--layers`` each OpenVINO row carries its per-operator counters for one unit: a group of
    the int8 encoder runs as 5 calls of 10 slices, so the counters of one call are counted 5 times;
    every convolution of the encoder is listed with its kernel, and the float32 file's convolutions
    run float kernels."""
    card = load_card(DEFAULT_BUNDLE)
    group = phantom_group(card)
    rows = openvino_rows(DEFAULT_BUNDLE, [group], 2, 2, "native", ["openvino-f32"], ["int8", "float32"], operators=True)
    for variant, precision in (("int8", "I8"), ("float32", "f32")):
        ops = rows[f"openvino-f32_{variant}"]["operators"]
        assert ops["calls_per_unit"] == (5 if variant == "int8" else 50)
        convolutions = [op for op in ops["ms_per_unit"] if op["type"] == "Convolution"]
        assert len(convolutions) == 4 and all(op["kernel"].endswith(precision) and op["ms"] > 0 for op in convolutions)
        assert ops["sum_ms_per_unit"] == pytest.approx(sum(op["ms"] for op in ops["ms_per_unit"]))
    plain = openvino_rows(DEFAULT_BUNDLE, [group], 2, 1, "native", ["openvino-f32"], ["int8"])
    assert "operators" not in plain["openvino-f32_int8"]


def test_bench_without_openvino_says_why_its_rows_are_missing(no_openvino):
    card = load_card(SLICE_BUNDLE)
    rows = openvino_rows(SLICE_BUNDLE, [phantom_group(card)], 1, 1, "avx2", ["openvino-f32"], ["int8"])
    assert rows == {"skipped": unavailable()}


def test_doctor_names_a_tuned_openvino_runtime_and_says_when_it_is_gone(tmp_path, monkeypatch):
    monkeypatch.setenv("CTEDGE_TUNE_CACHE", str(tmp_path / "tuned.json"))
    card = load_card(DEFAULT_BUNDLE)
    record(card, Choice("int8", 1, 42.0, "now", cpu_key(), "openvino-f32"))
    if not unavailable():
        assert "int8 on openvino-f32, 1 thread(s), 42.0 ms" in check_tuned(default_profile(DEFAULT_BUNDLE), card).detail
    monkeypatch.setitem(sys.modules, "openvino", None)
    detail = check_tuned(default_profile(DEFAULT_BUNDLE), card).detail
    assert "tuned to run on openvino-f32, which cannot be used now (openvino is not installed" in detail
    assert detail.endswith("int8 on LiteRT until ctedge tune runs again")
