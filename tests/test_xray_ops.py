"""Operating a box whose profile holds a CT and an X-ray bundle: ``doctor`` checks every bundle,
``tune`` (and the first start of serve/watch) tunes every bundle, ``validate`` measures an X-ray
bundle on radiographs, ``predict --model`` replaces the bundle of its own modality.

The X-ray bundle is the untrained placeholder of ``tests.helpers.bundles.make_image_bundle``: its
answer is a known function of the radiograph's mean model-input grey value, so the verdicts, and
from them the metrics, are computed here by hand. It gets a ``fidelity.json`` saying its float32
variant agrees with Keras (true of a float32 conversion; ``ctedge quantize`` writes this record)."""

from __future__ import annotations

import csv
import json
import os
import pwd
import shutil
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge import CLASSES
from edge.card import PLACEHOLDER_BANNER, load_card
from edge.cli import main
from edge.doctor import check_tuned, run_checks
from edge.engine import DEFAULT_BUNDLE, Device
from edge.phantom import make_phantom, write_dicom_series
from edge.profile import ProfileError, command_profile, load_profile, with_model
from edge.server import create_app
from edge.server.auth import add_user
from edge.tune import Choice, cpu_key, record, tuned_choice
from tests.helpers.bundles import IMAGE_WEIGHT, slice_probabilities
from tests.helpers.paths import RG1, SAMPLES
from tests.helpers.profiles import write_profile

RG1_MEAN = 190.09          # its 64 px model input's mean grey value: above 150, so the placeholder says covid


@pytest.fixture(scope="module")
def xray_bundle(xray_bundle, tmp_path_factory) -> Path:
    """The session's X-ray placeholder with a fidelity report (as ``ctedge quantize`` writes one)."""
    bundle = shutil.copytree(xray_bundle, tmp_path_factory.mktemp("xray") / "bundle")
    (bundle / "fidelity.json").write_text(json.dumps(
        {"variants": {"tflite_float32": {"top1_agreement": 1.0, "max_abs_prob_diff": 0.0}}}))
    return bundle


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    """An empty tune cache for this test only."""
    path = tmp_path / "cache" / "tuned.json"
    monkeypatch.setenv("CTEDGE_TUNE_CACHE", str(path))
    return path


def two_bundle_profile(folder: Path, xray: Path, ct: Path = DEFAULT_BUNDLE, **sections) -> Path:
    return write_profile(folder / "box.yaml", ct, xray, name="box", description="CT and X-ray", **sections)


# --- doctor -----------------------------------------------------------------------------------------

def ready_box(tmp_path: Path, xray: Path, model: dict | None = None) -> Path:
    """A box that passes every check but the model's: token, one login, owner-only results, a free port."""
    results = tmp_path / "results"
    results.mkdir(mode=0o700)
    add_user(results / "users.txt", "radiologist", "correct horse battery")
    (tmp_path / "ctedge.env").write_text("CTEDGE_API_TOKEN=" + "x" * 32 + "\n")
    (tmp_path / "ctedge.env").chmod(0o600)  # doctor fails a token file other accounts can read
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return two_bundle_profile(tmp_path, xray, model=model, server={"port": port, "results_dir": results})


def test_doctor_checks_every_bundle_naming_it_and_its_modality(tmp_path, xray_bundle, private_cache, capsys, monkeypatch):
    monkeypatch.delenv("CTEDGE_API_TOKEN", raising=False)
    record(load_card(xray_bundle), Choice("float32", 1, 1.5, "2026-01-01T00:00:00+00:00", cpu_key()))
    profile = ready_box(tmp_path, xray_bundle)
    checks = run_checks(profile, [], pwd.getpwuid(os.getuid()), tmp_path / "ctedge.env")
    models = [c for c in checks if c.name == "model"]
    variants = [c.detail for c in checks if c.name == "variant"]
    assert [c.ok for c in models] == [True, True]
    assert models[0].detail.startswith(f"cnn-bilstm-demo 0.2.0 (int8), CT bundle {DEFAULT_BUNDLE}: matches its card")
    assert models[1].detail.startswith(f"xray-test-placeholder 0 (float32), X-ray bundle {xray_bundle}: matches its card")
    assert PLACEHOLDER_BANNER in models[1].detail
    assert variants == [(f"CT bundle {DEFAULT_BUNDLE}: not tuned on this CPU yet: serve and watch tune on first start "
                         "(or run ctedge tune --config ...); until then int8"),
                        (f"X-ray bundle {xray_bundle}: float32, 1 thread(s), 1.5 ms per group "
                         "(tuned on this CPU 2026-01-01T00:00:00+00:00, "
                         f"{Choice('', 0, 0, '2026-01-01T00:00:00+00:00', '').age_days():.0f} day(s) ago, "
                         f"load not recorded; in {private_cache})")]
    assert main(["doctor", "--config", str(profile)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("READY")

    broken = shutil.copytree(xray_bundle, tmp_path / "broken")
    (broken / "image_float32.tflite").write_bytes(b"not a TFLite model")
    profile.write_text(profile.read_text().replace(str(xray_bundle), str(broken)))
    assert main(["doctor", "--config", str(profile)]) == 1
    out = capsys.readouterr().out
    assert f"[FAIL] model: X-ray bundle {broken}: {broken / 'image_float32.tflite'}: cannot be loaded" in out
    assert "[  ok] model: cnn-bilstm-demo" in out and "NOT READY: 1 check(s) failed" in out
    access = next(line for line in out.splitlines() if line.startswith("[  ok] access"))
    assert str(DEFAULT_BUNDLE) in access and str(broken) in access


# --- tune -------------------------------------------------------------------------------------------

@pytest.mark.external  # a real tune
def test_tune_times_every_bundle_and_the_study_only_for_its_modality(tmp_path, xray_bundle, private_cache, capsys):
    profile = two_bundle_profile(tmp_path, xray_bundle)
    assert main(["tune", "--config", str(profile), "--study", str(RG1), "--max-threads", "1", "--repeats", "1",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    ct, xray = doc["bundles"]
    assert (ct["path"], ct["modality"], ct["input"]) == (str(DEFAULT_BUNDLE), "ct", "synthetic phantom")
    assert (xray["path"], xray["modality"], xray["input"]) == (str(xray_bundle), "xray", str(RG1))
    assert [(r["variant"], r["threads"]) for r in xray["rows"] if r["runtime"] == "litert"] == [("float32", 1)]
    assert tuned_choice(DEFAULT_BUNDLE).variant == ct["choice"]["variant"]
    assert tuned_choice(xray_bundle).variant == "float32" and doc["cache"] == str(private_cache)

    assert main(["tune", "--model", str(xray_bundle), "--study", str(SAMPLES / "COVID-19_P002")]) == 2
    assert f"a CT study, but no bundle tuned here reads CT (bundles: {xray_bundle})" in capsys.readouterr().err


def test_an_extra_xray_bundle_runs_its_tuned_variant_and_the_result_names_it(tmp_path, xray_bundle, private_cache,
                                                                             capsys):
    profile = two_bundle_profile(tmp_path, xray_bundle)
    record(load_card(DEFAULT_BUNDLE), Choice("int8", 1, 1.0, "test", cpu_key()))
    assert tuned_choice(xray_bundle) is None
    untuned = Device.from_profile(load_profile(profile)).run(RG1).to_dict()["model"]
    assert (untuned["variant"], untuned["chosen"]) == ("float32", "default (not tuned on this CPU: run ctedge tune)")

    engine = Device.from_profile(load_profile(profile), tune_if_missing=True)    # the first start of serve and watch
    choice = tuned_choice(xray_bundle)
    assert choice is not None and tuned_choice(DEFAULT_BUNDLE).tuned_at == "test", "the tuned CT bundle is not retuned"
    model = engine.run(RG1).to_dict()["model"]
    assert (model["variant"], model["threads"], model["chosen"]) == \
           ("float32", choice.threads, f"tuned on this CPU ({choice.tuned_at})")

    record(load_card(xray_bundle), Choice("float32", 1, 1.0, "by the test", cpu_key()))
    assert main(["predict", str(RG1), "--config", str(profile), "--json"]) == 0
    model = json.loads(capsys.readouterr().out)["model"]
    assert (model["name"], model["variant"], model["threads"], model["chosen"]) == \
           ("xray-test-placeholder", "float32", 1, "tuned on this CPU (by the test)")


# --- validate ---------------------------------------------------------------------------------------

# (patient, class, mean grey value of the radiograph or "RG1"); studies sort by class, patient, path.
XRAY_DATA = [("c1", "covid", 200), ("c2", "covid", "RG1"), ("c3", "covid", 100),
             ("h1", "healthy", 40), ("h1", "healthy", 60), ("h2", "healthy", 170),
             ("o1", "other_pneumonia", 120), ("o2", "other_pneumonia", 160)]


def radiograph_png(path: Path, mean: int) -> Path:
    """A 128 x 128 8-bit radiograph whose 64 px model input has exactly ``mean`` as its mean grey
    value: a darker left half and a brighter right half, 2-pixel aligned for the area resize."""
    image = np.empty((128, 128), np.uint8)
    image[:, :64], image[:, 64:] = mean - 30, mean + 30
    cv2.imwrite(str(path), image)
    return path


def xray_dataset(folder: Path, ct_study: Path) -> Path:
    """The CSV of XRAY_DATA plus one CT study (h3, healthy) that the X-ray bundle cannot read."""
    folder.mkdir()
    rows = ["patient,class,path"]
    for k, (patient, label, mean) in enumerate(XRAY_DATA):
        path = RG1 if mean == "RG1" else radiograph_png(folder / f"{patient}-{k}.png", mean)
        rows.append(f"{patient},{label},{path}")
    rows.append(f"h3,healthy,{ct_study}")
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    return folder / "data.csv"


def test_validate_measures_the_xray_bundle_on_radiographs(tmp_path, xray_bundle, capsys):
    ct_study = tmp_path / "ct" / "h3"
    write_dicom_series(make_phantom(n_slices=12, size=64, seed=1), ct_study, seed=1)
    data = xray_dataset(tmp_path / "data", ct_study)
    out = tmp_path / "out"
    # The profile's X-ray bundle is measured, chosen by the studies' modality: most are radiographs.
    assert main(["validate", str(data), "--config", str(two_bundle_profile(tmp_path, xray_bundle)), "--out", str(out),
                 "--bootstrap", "500"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"*** {PLACEHOLDER_BANNER} ***")
    assert json.loads((out / "run.json").read_text())["model"]["name"] == "xray-test-placeholder"

    means = np.array([RG1_MEAN if m == "RG1" else m for _, _, m in XRAY_DATA])
    expected = slice_probabilities(means, weight=IMAGE_WEIGHT)       # covid above mean 150, healthy below
    rows = list(csv.DictReader((out / "studies.csv").open()))
    failed, ok = [r for r in rows if r["error"]], [r for r in rows if not r["error"]]
    assert [r["verdict"] for r in ok] == ["covid", "covid", "healthy", "healthy", "healthy", "covid", "healthy", "covid"]
    np.testing.assert_allclose([[float(r[f"p_{c}"]) for c in CLASSES] for r in ok], expected, atol=2e-4)
    assert [r["view"] for r in ok] == ["", "PA"] + [""] * 6 and ok[1]["file"] == RG1.name
    assert [r["patient"] for r in failed] == ["h3"]
    # the profile has a CT bundle: the CT study is out of this run, not of the device
    assert failed[0]["error"] == ("a study of modality CT, but this validation run measures only the X-ray bundle "
                                  "xray-test-placeholder; validate these studies in a run of their own")
    assert "n_groups" not in rows[0] and "infected_slices" not in rows[0]

    m = json.loads((out / "metrics.json").read_text())
    assert m["modality"] == "xray" and (m["n_studies"], m["n_analysed"]) == (9, 8)
    assert m["n_patients"] == {"covid": 3, "other_pneumonia": 2, "healthy": 2}
    assert m["confusion_matrix"] == [[2, 0, 1], [1, 0, 1], [1, 0, 2]]
    per_class = m["table2"]["per_class"]
    # covid: TP 2 (c1, c2), FN 1 (c3), FP 2 (h2, o2), TN 3; healthy: TP 2 (h1 twice), FN 1 (h2), FP 2 (c3, o1), TN 3
    for c in ("covid", "healthy"):
        assert per_class[c] == pytest.approx({"accuracy": 5 / 8, "specificity": 3 / 5, "sensitivity": 2 / 3, "f1": 4 / 7})
    assert per_class["other_pneumonia"] == pytest.approx({"accuracy": 6 / 8, "specificity": 1, "sensitivity": 0, "f1": 0})
    # Every probability falls with the mean grey value but covid's, which rises: count the ordered pairs.
    assert m["roc_auc"]["per_class"] == pytest.approx({"covid": 12 / 15, "other_pneumonia": 6 / 12, "healthy": 12 / 15})
    ci = m["table2"]["ci95"]
    # Patients, not radiographs, are resampled: h1 (2 of 2 right) and h2 (0 of 1) give 1, 2/3 or 0.
    assert ci["healthy"]["sensitivity"] == [0.0, 1.0] and ci["other_pneumonia"]["sensitivity"] == [0.0, 0.0]
    assert "1 of 9 studies could not be analysed" in m["statements"][0]

    html = (out / "validation.html").read_text()
    assert f'<p class="banner">{PLACEHOLDER_BANNER}.' in html and html.count("data:image/png;base64,") == 3
    assert "X-ray bundle: 8 of 9 radiographs analysed" in html and "<th>view</th>" in html
    assert all((out / f).is_file() for f in ("roc.png", "confusion.png", "reliability.png", "table2.txt"))
    assert (out / "table2.txt").read_text().startswith("Class")


def test_slice_labels_are_refused_for_an_xray_bundle(tmp_path, xray_bundle, capsys):
    data = tmp_path / "data.csv"
    data.write_text(f"patient,class,path\nc1,covid,{radiograph_png(tmp_path / 'c1.png', 200)}\n")
    labels = tmp_path / "labels.csv"
    labels.write_text("patient_folder,file,infection\n")
    assert main(["validate", str(data), "--model", str(xray_bundle), "--out", str(tmp_path / "out"),
                 "--slice-labels", str(labels)]) == 2
    err = capsys.readouterr().err
    assert f"--slice-labels: {xray_bundle} reads X-ray studies" in err and "slice labels apply to CT bundles only" in err
    assert not (tmp_path / "out").exists()


# --- predict --model --------------------------------------------------------------------------------

def test_model_flag_replaces_the_bundle_of_its_modality_and_keeps_the_others(tmp_path, xray_bundle, capsys):
    other = shutil.copytree(xray_bundle, tmp_path / "other")
    card = json.loads((other / "model.json").read_text()) | {"name": "another-xray-placeholder"}
    (other / "model.json").write_text(json.dumps(card))
    profile = load_profile(two_bundle_profile(tmp_path, xray_bundle))
    assert with_model(profile, other).model.bundles == (DEFAULT_BUNDLE, other)
    ct_card = tmp_path / "ct-card"            # a card is all with_model reads
    ct_card.mkdir()
    shutil.copy(DEFAULT_BUNDLE / "model.json", ct_card)
    assert with_model(profile, ct_card).model.bundles == (ct_card, xray_bundle)
    ct_only = write_profile(tmp_path / "ct.yaml", DEFAULT_BUNDLE, name="ct", description="CT only")
    assert command_profile(ct_only, other, DEFAULT_BUNDLE).model.bundles == (DEFAULT_BUNDLE, other), "added"
    assert command_profile(None, other, DEFAULT_BUNDLE).model.bundles == (other,), "without a profile: alone"

    assert main(["predict", str(RG1), "--config", str(profile.source), "--model", str(other), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["name"] == "another-xray-placeholder"
    engine = Device.from_profile(with_model(profile, other))
    assert set(engine.routes) == {"ct", "xray"} and engine.info.name == "cnn-bilstm-demo"


# --- a bundle of one variant; an explicit variant -----------------------------------------------------

@pytest.fixture
def bare_xray(tmp_path, xray_bundle) -> Path:
    """The placeholder as ``make_image_bundle`` builds it: one variant (float32), no fidelity.json."""
    bundle = shutil.copytree(xray_bundle, tmp_path / "bare-xray")
    (bundle / "fidelity.json").unlink()
    return bundle


@pytest.mark.external  # a real tune
def test_a_bundle_of_one_variant_without_fidelity_report_is_tuned_by_tune_and_watch(tmp_path, bare_xray,
                                                                                   private_cache, capsys):
    profile = two_bundle_profile(tmp_path, bare_xray)
    assert main(["tune", "--config", str(profile), "--max-threads", "2", "--repeats", "1", "--json"]) == 0
    ct, xray = json.loads(capsys.readouterr().out)["bundles"]
    assert {r["variant"] for r in ct["rows"] if r["runtime"] == "litert"} == {"float32", "float16", "dynamic", "int8"}, "several: fidelity gate"
    assert [(r["variant"], r["threads"]) for r in xray["rows"] if r["runtime"] == "litert"] == [("float32", 1), ("float32", 2)]
    assert tuned_choice(bare_xray).variant == "float32"

    private_cache.unlink()                   # the first start of watch: every bundle tuned, then the radiograph read
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    (inbox / "rg1").mkdir(parents=True)
    shutil.copy(RG1, inbox / "rg1" / "RG1_UNCR.dcm")
    profile.write_text(profile.read_text() + "watcher:\n  stable_seconds: 0\n  poll_seconds: 0.1\n")
    assert main(["watch", str(inbox), "--out", str(outbox), "--config", str(profile), "--once"]) == 0
    assert capsys.readouterr().out.startswith("1 done, 0 failed")
    choice = tuned_choice(bare_xray)
    model = json.loads((outbox / "rg1" / "result.json").read_text())["model"]
    assert choice is not None and tuned_choice(DEFAULT_BUNDLE) is not None
    assert (model["variant"], model["chosen"]) == ("float32", f"tuned on this CPU ({choice.tuned_at})")


def test_an_explicit_variant_binds_the_main_bundle_and_an_extra_one_lacking_it_chooses_its_own(
        tmp_path, bare_xray, private_cache, capsys, monkeypatch):
    profile = two_bundle_profile(tmp_path, bare_xray)
    ct_study = SAMPLES / "COVID-19_P002"
    assert main(["predict", str(ct_study), "--config", str(profile), "--variant", "int8", "--json"]) == 0
    ct = json.loads(capsys.readouterr().out)["model"]
    assert (ct["name"], ct["variant"], ct["chosen"]) == ("cnn-bilstm-demo", "int8", "set by the profile or flags")
    assert main(["predict", str(RG1), "--config", str(profile), "--variant", "int8", "--json"]) == 0
    xray = json.loads(capsys.readouterr().out)["model"]
    assert (xray["variant"], xray["chosen"]) == \
           ("float32", "int8 requested; this bundle has only float32: default (not tuned on this CPU: run ctedge tune)")

    assert main(["predict", str(RG1), "--config", str(profile), "--variant", "edgetpu"]) == 2
    assert f"{DEFAULT_BUNDLE / 'model.json'}: no 'edgetpu' variant" in capsys.readouterr().err, \
        "the main bundle lacks it: refused, whatever the study"
    missing = two_bundle_profile(tmp_path / "missing", bare_xray, model={"variant": "edgetpu"})
    with pytest.raises(ProfileError, match=r"model.variant: .*demo/model.json: no 'edgetpu' variant"):
        load_profile(missing)

    box = tmp_path / "box"                       # a profile setting int8: doctor's line and /api/v1/model say why
    box.mkdir()
    loaded = load_profile(ready_box(box, bare_xray, model={"variant": "int8"}))
    assert check_tuned(loaded, load_card(bare_xray)).detail.startswith(
        f"X-ray bundle {bare_xray}: int8 requested; this bundle has only float32: not tuned on this CPU yet")
    assert check_tuned(loaded, load_card(DEFAULT_BUNDLE)).detail == f"CT bundle {DEFAULT_BUNDLE}: int8 (set by the profile)"
    monkeypatch.setenv("CTEDGE_API_TOKEN", "t" * 32)
    client = create_app(loaded, start_workers=False).test_client()     # the first start of serve tunes the X-ray bundle
    models = client.get("/api/v1/model", headers={"Authorization": "Bearer " + "t" * 32}).get_json()["by_modality"]
    assert (models["ct"]["variant"], models["ct"]["chosen"]) == ("int8", "set by the profile or flags")
    assert (models["xray"]["variant"], models["xray"]["chosen"]) == \
           ("float32", f"int8 requested; this bundle has only float32: tuned on this CPU ({tuned_choice(bare_xray).tuned_at})")


@pytest.mark.slow
def test_bench_runs_the_variants_a_bundle_has(bare_xray, capsys):
    assert main(["bench", str(RG1), "--model", str(bare_xray), "--repeats", "1", "--threads", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [n for n, r in doc["variants"].items() if "error" not in r and n.startswith("tflite_")] == ["tflite_float32"]
    assert doc["variants"]["tflite_float32"]["ms_per_image_median"] > 0
    assert doc["variants"]["tflite_float32"]["agreement_with_tflite_float32"] is None, "nothing to compare with"
    assert (doc["speedup_int8_vs_float32"], doc["size_ratio_float32_vs_int8"], doc["speedup_int8_vs_keras"]) == \
           (None, None, None)
    assert doc["end_to_end_variant"] == "float32" and doc["end_to_end_ms_by_stage"]["total"] > 0
    assert {r["variant"] for r in doc["variants_by_threads"]["rows"] if r["runtime"] == "litert"} == {"float32"}

    assert main(["bench", str(RG1), "--model", str(bare_xray), "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "speed-up int8 vs float32, float32/int8 size: not in this bundle (it has float32)" in out
    assert "Keras:" not in out and "None" not in out and "end to end with float32" in out
