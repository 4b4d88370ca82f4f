"""``ctedge bench --dispatch avx2``: XNNPACK's AVX2 kernels on a CPU that has more."""

import json
import subprocess
import sys

import pytest

from edge.cli import main
from edge.engine import DEFAULT_BUNDLE
from edge.runtime import load_interpreter
from edge.runtime_openvino import unavailable
from quantize.avx2_dispatch import cpu_flags
from tests.helpers.paths import REPO, SAMPLES

BEYOND_AVX2 = {"avx512f", "avx_vnni", "avx512_vnni"} & cpu_flags()
PROBE = """
import sys
from quantize.avx2_dispatch import dispatch_avx2, xnnpack_config
from edge.runtime import load_interpreter
hidden = dispatch_avx2() if sys.argv[1] == "avx2" else []
load_interpreter(sys.argv[2], 1)
print(",".join(hidden) + "|" + xnnpack_config().hex())
"""


def _probe(mode: str) -> tuple[list[str], str]:
    run = subprocess.run([sys.executable, "-c", PROBE, mode, str(DEFAULT_BUNDLE / "encoder_int8.tflite")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    if run.returncode and "unknown layout" in run.stderr:
        pytest.skip(f"this CPU/runtime build is not supported by --dispatch avx2: {run.stderr.strip().splitlines()[-1]}")
    assert run.returncode == 0, run.stderr
    hidden, config = run.stdout.strip().splitlines()[-1].split("|")
    return [h for h in hidden.split(",") if h], config


def test_hiding_the_flags_changes_the_kernels_xnnpack_configures():
    native_hidden, native = _probe("native")
    hidden, avx2 = _probe("avx2")
    assert native_hidden == [] and int(native, 16) != 0, "XNNPACK initialised when the model loaded"
    assert set(hidden) - {h for h in hidden if h.startswith("cpuinfo_isa byte")} <= cpu_flags()
    if not BEYOND_AVX2:
        assert avx2 == native, "an AVX2-only CPU has nothing to hide: the same configuration"
        pytest.skip("AVX2-only CPU: nothing beyond AVX2 to hide")
    assert BEYOND_AVX2 <= set(hidden)
    assert avx2 != native, "XNNPACK configured the same kernels with the flags hidden"


@pytest.mark.slow
def test_bench_with_avx2_dispatch_reports_it_and_the_variants_agree():
    run = subprocess.run([sys.executable, "-m", "edge.cli", "bench", str(SAMPLES / "COVID-19_P002"), "--model",
                          str(DEFAULT_BUNDLE), "--repeats", "1", "--threads", "1", "--dispatch", "avx2", "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    if run.returncode == 2 and "unknown layout" in run.stderr:
        pytest.skip(f"not supported here: {run.stderr.strip().splitlines()[-1]}")
    assert run.returncode == 0, run.stderr[-2000:]
    doc = json.loads(run.stdout)
    assert doc["dispatch"]["kernels"] == "avx2"
    assert BEYOND_AVX2 <= set(doc["dispatch"]["hidden_flags"])
    assert doc["variants"]["tflite_int8"]["agreement_with_tflite_float32"] == 1.0
    assert len(doc["load_average"]["before"]) == 3 and doc["ratio_vs_litert_float32"]["tflite_float32"] == 1.0
    if not unavailable():          # OpenVINO ran in its subprocess with oneDNN limited to AVX2
        assert doc["runtimes"]["openvino-f32"]["onednn_max_cpu_isa"] == "AVX2"
        convolutions = [k for k in doc["variants"]["openvino-f32_int8"]["kernels"] if k.startswith("Convolution")]
        assert convolutions and all("avx2" in k for k in convolutions), convolutions
        assert doc["variants"]["openvino-f32_int8"]["agreement_with_tflite_float32"] == 1.0
    text = subprocess.run([sys.executable, "-m", "edge.cli", "bench", str(SAMPLES / "COVID-19_P002"), "--model",
                           str(DEFAULT_BUNDLE), "--repeats", "1", "--threads", "1", "--dispatch", "avx2"],
                          cwd=REPO, capture_output=True, text=True, timeout=600).stdout
    assert text.startswith("*** AVX2 KERNELS: "), "the text output says first which kernels its figures are"


def test_dispatch_after_a_model_is_loaded_is_refused(capsys):
    load_interpreter(DEFAULT_BUNDLE / "encoder_int8.tflite", 1)
    assert main(["bench", str(SAMPLES / "COVID-19_P002"), "--model", str(DEFAULT_BUNDLE), "--dispatch", "avx2"]) == 2
    assert "already initialised" in capsys.readouterr().err
