"""Speed on the box: the tuned variant, concurrent studies, parallel decoding and peak memory."""

import importlib.util
import json
import shutil
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest

from edge.card import load_card
from edge.cli import main
from edge.engine import DEFAULT_BUNDLE, Device, Engine, Models
from edge.errors import ModelLoadError
from edge.infer import PlaceholderClassifier, TFLiteClassifier
from edge.ingest import parallel
from edge.ingest.parallel import decode_series
from edge.phantom import make_phantom, write_dicom_series
from edge.profile import default_profile
from edge.runtime import invoke, invoke_all, load_interpreter
from edge.tune import Choice, cpu_identity, cpu_key, eligible_variants, fallback_variant, record, tuned_choice
from tests.helpers.paths import REPO, SAMPLES

STUDY = SAMPLES / "COVID-19_P002"


class MeetingClassifier(PlaceholderClassifier):
    """Waits in ``predict`` until the other study's classifier is there too: only two studies
    in flight at the same moment get past the barrier."""

    def __init__(self, barrier: threading.Barrier):
        self.barrier = barrier

    def predict(self, group: np.ndarray) -> np.ndarray:
        self.barrier.wait()
        return super().predict(group)


def test_an_engine_with_two_model_sets_analyses_two_studies_at_once():
    barrier = threading.Barrier(2, timeout=30)
    engine = Engine(MeetingClassifier(barrier), spares=[Models(MeetingClassifier(barrier))])
    results, errors = [], []

    def run():
        try:
            results.append(engine.run(STUDY))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, f"the studies did not run at the same time: {errors!r}"
    assert len(results) == 2 and engine.concurrency == 2


@pytest.mark.external  # a real tune
def test_the_tuned_variant_is_recorded_owner_only_and_used_by_predict(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache" / "tuned.json"
    monkeypatch.setenv("CTEDGE_TUNE_CACHE", str(cache))
    assert main(["tune", "--max-threads", "1", "--repeats", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {b["modality"] for b in doc["bundles"]} == {"ct", "xray"}, "the default profile's CT and X-ray bundles"
    [tuned] = [b for b in doc["bundles"] if b["modality"] == "ct"]
    assert {r["variant"] for r in tuned["rows"] if r["runtime"] == "litert"} == set(eligible_variants(load_card(DEFAULT_BUNDLE)))
    timed = sorted((r for r in tuned["rows"] if "skipped" not in r), key=lambda r: r["ms_per_group_median"])
    finalists = [r for r in timed if "runoff_ms_per_group_median" in r]
    yardstick = next(r for r in timed if (r["runtime"], r["variant"]) == ("litert", "float32"))
    assert timed[:3] == finalists[:3] and yardstick in finalists, "the run-off: the sweep's 3 fastest and LiteRT float32"
    fastest = min(finalists, key=lambda r: r["runoff_ms_per_group_median"])
    assert (tuned["choice"]["variant"], tuned["choice"]["runtime"]) == (fastest["variant"], fastest["runtime"])
    assert tuned["choice"]["ms_per_group"] == fastest["runoff_ms_per_group_median"]
    assert set(doc["cpu"]["flags"]) <= {"sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni",
                                        "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "asimd",
                                        "asimddp", "i8mm", "sve"}
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600 and stat.S_IMODE(cache.parent.stat().st_mode) == 0o700
    assert tuned_choice(DEFAULT_BUNDLE).variant == tuned["choice"]["variant"]
    assert main(["tune", "--max-threads", "1", "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    assert f"CT bundle {DEFAULT_BUNDLE}" in text and "median ms/group" in text and "chosen: " in text

    record(load_card(DEFAULT_BUNDLE), Choice("float32", 1, 1.0, "now", cpu_key()))   # whatever was measured
    assert main(["predict", str(STUDY), "--json"]) == 0
    model = json.loads(capsys.readouterr().out)["model"]
    assert model["variant"] == "float32" and model["threads"] == 1 and model["chosen"].startswith("tuned on this CPU")
    assert main(["predict", str(STUDY), "--json", "--variant", "int8"]) == 0, "an explicit variant wins"
    assert json.loads(capsys.readouterr().out)["model"]["variant"] == "int8"


def test_a_choice_tuned_on_another_cpu_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("CTEDGE_TUNE_CACHE", str(tmp_path / "tuned.json"))
    other = cpu_identity() | {"flags": ["avx2", "fma"], "model": "some other CPU"}
    record(load_card(DEFAULT_BUNDLE), Choice("float32", 1, 1.0, "now", cpu_key(other)))
    assert tuned_choice(DEFAULT_BUNDLE) is None
    info = Device.from_profile(default_profile(DEFAULT_BUNDLE)).info
    assert info.variant == "int8" and "not tuned" in info.chosen


def test_variants_failing_the_fidelity_thresholds_are_not_tuned(tmp_path):
    bundle = shutil.copytree(DEFAULT_BUNDLE, tmp_path / "bundle")
    fidelity = json.loads((bundle / "fidelity.json").read_text())
    fidelity["variants"]["tflite_int8"]["top1_agreement"] = 0.9
    (bundle / "fidelity.json").write_text(json.dumps(fidelity))
    assert "int8" not in eligible_variants(load_card(bundle)) and "float32" in eligible_variants(load_card(bundle))
    assert fallback_variant(load_card(DEFAULT_BUNDLE)) == "int8"
    assert fallback_variant(load_card(bundle)) == "float32", "untuned, a bundle whose int8 fails fidelity runs float32"
    (bundle / "fidelity.json").unlink()
    with pytest.raises(ModelLoadError, match=r"fidelity.json: not found"):
        eligible_variants(load_card(bundle))
    assert fallback_variant(load_card(bundle)) == "int8", "no fidelity report: nothing measured against int8"


def test_slices_decoded_in_worker_processes_equal_serial_decoding_and_bad_slices_are_named(tmp_path):
    paths = sorted(write_dicom_series(make_phantom(20, 64, seed=3), tmp_path, transfer_syntax="1.2.840.10008.1.2.5"))
    paths[7].write_bytes(paths[7].read_bytes()[:-2000])          # truncated pixel data
    serial = decode_series(paths, (64, 64), mode="serial")
    processes = decode_series(paths, (64, 64), mode="processes")
    assert np.array_equal(serial[0], processes[0]) and serial[1] == processes[1] == [i for i in range(20) if i != 7]
    assert serial[0].dtype == np.int16 and len(processes[2]) == 1 and processes[2][0].path == str(paths[7])


def test_a_one_shot_decodes_in_process_unless_the_study_repays_the_pool_start(monkeypatch):
    monkeypatch.delenv("CTEDGE_DECODE", raising=False)
    monkeypatch.setattr(parallel, "_pool", None)
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 2)
    ordinary = int(0.9 * parallel.POOL_START_S / (parallel.SERIAL_S_PER_SLICE * 0.5))
    assert parallel.default_mode(150, True) == parallel.default_mode(ordinary, True) == "serial"
    assert parallel.default_mode(ordinary * 2, True) == "processes", "a large study repays the start"
    assert parallel.default_mode(ordinary * 2, False) == "serial", "uncompressed: never worth sending back"
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 16)
    repaid = int(1.1 * parallel.POOL_START_S / (parallel.SERIAL_S_PER_SLICE * 15 / 16))
    assert parallel.default_mode(repaid, True) == "processes" and repaid < ordinary, "more cores repay it sooner"
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 1)
    assert parallel.default_mode(10_000, True) == "serial"


def test_a_service_starts_the_pool_in_the_background_and_then_decodes_with_it(monkeypatch):
    monkeypatch.delenv("CTEDGE_DECODE", raising=False)
    if (parallel.os.cpu_count() or 1) < 2:
        pytest.skip("one core: no pool")
    parallel.warm_pool()
    for _ in range(600):
        if parallel._pool is not None:
            break
        threading.Event().wait(0.1)
    assert parallel.default_mode(parallel.MIN_SLICES_FOR_PROCESSES, True) == "processes"


@pytest.fixture(scope="module")
def study_120(tmp_path_factory):
    """A 120-slice 512x512 study as DICOM files."""
    study = tmp_path_factory.mktemp("study_120")
    write_dicom_series(make_phantom(120, 512, slice_thickness_mm=2.0, pixel_spacing_mm=0.62, seed=1), study)
    return study


@pytest.mark.parametrize("variant, heatmaps, limit_mb", [("int8", False, 300), ("float32", False, 300),
                                                         ("int8", True, 352), ("float32", True, 352)])
@pytest.mark.slow
def test_predict_peak_memory_on_a_120_slice_study(study_120, tmp_path, variant, heatmaps, limit_mb):
    """The full-resolution volume is freed once resized, the encoders run slice by slice, the heatmap
    models are loaded only for --out (300 slices: see docs/benchmarks.md, "Memory"). With the encoders
    at their files' batch of 50 this study took 448 MB in float32 and 785 MB with heatmaps; with the
    Grad-CAM head on XNNPACK, 377 MB with heatmaps. With heatmaps the bound was 320 MB until the
    occlusions ran on two copies of the Grad-CAM head (issue 27): the second copy adds ~32 MB."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (large) forking pytest process.
    code = ("import sys; from edge.cli import main; rc = main(['predict', *sys.argv[1:]]);"
            "print(next(int(l.split()[1]) // 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')));"
            "sys.exit(rc)")
    args = [str(study_120), "--variant", variant] + (["--out", str(tmp_path / "out")] if heatmaps else [])
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr
    assert not heatmaps or len(json.loads((tmp_path / "out" / "result.json").read_text())["heatmaps"]) > 0
    assert int(run.stdout.split()[-1]) < limit_mb, f"peak RSS (MB), {variant}, heatmaps {heatmaps}"


@pytest.mark.slow
def test_encoders_run_in_small_batches_give_what_the_whole_group_gives():
    """Each encoder is loaded with a batch of one slice (int8: ten); its features, Grad-CAM maps and
    the heatmaps shown equal bit for bit those of the model file's own batch (a whole group at once)."""
    card = load_card(DEFAULT_BUNDLE)
    engine = Engine.from_bundle(card, threads=2)
    result = engine.run(STUDY)
    group = result.prepared.groups()[0]
    for variant in card.variants:
        classifier = TFLiteClassifier(card, variant, threads=2)
        batch = 10 if variant == "int8" else 1
        assert tuple(classifier.encoder.get_input_details()[0]["shape"]) == (batch, 256, 256, 1), variant
        whole = load_interpreter(card.files(variant)["encoder"], threads=2)
        assert np.array_equal(classifier.features(group), invoke(whole, group[..., None])), variant
    explainer = engine.explainer
    whole = load_interpreter(card.bundle / card.explain["encoder"], threads=2)
    for got, expected in zip(invoke_all(explainer.encoder, group[..., None]),
                             invoke_all(whole, group[..., None].astype(np.float32))):
        assert got.shape[0] == len(group) and np.array_equal(got, expected)
    heat, share = explainer.explain_group(group, result.classes.index(result.verdict.label))
    shown = explainer.explain(result, 3)
    assert len(shown) == 3
    for h in shown:
        assert any(np.array_equal(h.heatmap, heat[k]) and h.share == share[k] for k in range(len(group)))


@pytest.mark.parametrize("damage, message", [(lambda b: b"not a model", "not a TFLite model"),
                                             (lambda b: b[:50_000], "not a valid TFLite model, truncated or damaged")])
def test_a_damaged_encoder_file_is_named(tmp_path, capsys, damage, message):
    bundle = shutil.copytree(DEFAULT_BUNDLE, tmp_path / "bundle")
    encoder = bundle / "encoder_int8.tflite"
    encoder.write_bytes(damage(encoder.read_bytes()))
    assert main(["predict", str(STUDY), "--model", str(bundle), "--variant", "int8"]) == 2
    assert f"{encoder}: {message}" in capsys.readouterr().err


def test_the_server_loads_one_model_set_per_worker_and_names_the_tuned_variant(tmp_path):
    from edge.profile import load_profile
    from edge.server import create_app
    from tests.helpers.server import write_profile

    profile = load_profile(write_profile(tmp_path, workers=2))
    engine = create_app(profile, start_workers=False).extensions["ctedge"]["engine"]
    assert engine.concurrency == 2
    assert engine.info.variant == "int8" and engine.info.chosen.startswith("tuned on this CPU (test fixture)")
    assert engine.info.threads == 1, "the profile's explicit thread count wins over the tuned one"


@pytest.mark.slow
def test_bench_json_states_the_cpu_flags_every_variant_by_threads_and_the_decode_modes(capsys):
    assert main(["bench", str(STUDY), "--model", str(DEFAULT_BUNDLE), "--repeats", "1", "--threads", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["cpu_flags"] == cpu_identity()["flags"] and doc["cpu_model"] == cpu_identity()["model"]
    rows = [r for r in doc["variants_by_threads"]["rows"] if r["runtime"] == "litert"]
    assert {(r["variant"], r["threads"]) for r in rows} == {(v, 1) for v in eligible_variants(load_card(DEFAULT_BUNDLE))}
    assert set(doc["decode"]["seconds"]) == {"serial", "threads", "processes"} and doc["decode"]["n_slices"] == 10
    decoder = "gdcm" if importlib.util.find_spec("gdcm") else "pylibjpeg"     # the samples are JPEG lossless
    assert doc["decode"]["decoder"] == decoder
    assert doc["decode"]["ms_per_slice"]["serial"] == pytest.approx(doc["decode"]["seconds"]["serial"] * 100, abs=0.06)
