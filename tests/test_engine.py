"""The engine behind predict, the server and the watcher: profiles, result folders, edge heatmaps."""

import json
import shutil

import cv2
import numpy as np
import pytest

from edge import CLASSES
from edge.cli import main
from edge.engine import DEFAULT_BUNDLE, Device, Engine
from edge.card import load_card
from edge.explain import GradCam, overlay
from edge.infer import TFLiteClassifier
from edge.pipeline import prepare_study
from edge.profile import load_profile
from tests.helpers.paths import REPO, SAMPLES
from tests.helpers.profiles import write_profile

STUDY = SAMPLES / "COVID-19_P002"


@pytest.mark.slow
def test_predict_out_writes_report_heatmaps_and_slices(capsys, tmp_path):
    out = tmp_path / "result"
    assert main(["predict", str(STUDY), "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    stored = json.loads((out / "result.json").read_text())
    assert stored.pop("study")["patient_id"] == "P002" and stored == doc, "the identity is in the folder, not printed"
    assert len(doc["slice_png"]) == doc["n_slices_read"] == 10
    assert all(cv2.imread(str(out / p), cv2.IMREAD_GRAYSCALE).shape == (256, 256) for p in doc["slice_png"])
    used = {s["index"] for s in doc["slices_used"]}
    assert len(doc["heatmaps"]) == min(3, len(used)) * len(doc["groups"])
    for h in doc["heatmaps"]:
        picture = cv2.imread(str(out / h["png"]))
        assert picture.shape[1] == 256 and picture.shape[0] > 256, "the overlay and its caption bar"
        assert h["slice_index"] in used
        assert h["file"] == doc["slices_used"][[s["index"] for s in doc["slices_used"]].index(h["slice_index"])]["file"]
    engine = Engine.default()
    prepared = engine.run(STUDY).prepared
    for g, group in enumerate(prepared.groups()):
        _, share = engine.explainer.explain_group(group, CLASSES.index(doc["label"]))
        real = [float(share[k]) for k in np.argsort(-share) if not np.isnan(prepared.plans[g][k])]
        shown = [h["share"] for h in doc["heatmaps"] if h["group"] == g]
        assert shown == pytest.approx(real[:3], abs=1e-4), "the report shows each group's largest shares"
        assert sum(real) == pytest.approx(1.0) or sum(real) == 0
    assert doc["explanation"]["class"] == doc["label"] and "Grad-CAM" in doc["explanation"]["method"]
    assert "explain" in doc["timings_ms"]
    html = (out / "report.html").read_text()
    assert f'<strong id="verdict">{doc["label"]}</strong>' in html
    assert doc["model"]["banner"] == "DEMONSTRATION MODEL - NOT FOR CLINICAL USE" and doc["model"]["banner"] in html
    assert html.count('src="data:image/png;base64,') == len(doc["heatmaps"]), "report.html is self-contained"


@pytest.mark.slow
def test_heatmaps_of_the_shipped_model_differ_between_slices(tmp_path):
    doc = Engine.default().analyse(STUDY, tmp_path)
    pictures = [cv2.imread(str(tmp_path / h["png"])).astype(float) for h in doc["heatmaps"]]
    assert len({h["slice_index"] for h in doc["heatmaps"]}) == len(pictures) >= 2
    assert np.abs(pictures[0] - pictures[1]).mean() > 1.0
    shares = [h["share"] for h in doc["heatmaps"]]
    assert shares == sorted(shares, reverse=True) and shares[0] > 0


def test_a_bundle_without_explain_models_still_gives_a_verdict(tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    card = json.loads((bundle / "model.json").read_text())
    del card["explain"]
    (bundle / "model.json").write_text(json.dumps(card))
    doc = Engine.from_bundle(bundle).analyse(STUDY, tmp_path / "out")
    assert doc["label"] and doc["heatmaps"] == [] and doc["explanation"]["method"] is None
    assert any("no heatmaps" in w for w in doc["warnings"])


def test_profile_settings_reach_the_pipeline_and_flags_override_them(capsys, tmp_path):
    profile = write_profile(tmp_path / "device.yaml", DEFAULT_BUNDLE, model={"variant": "float32", "threads": 1},
                            pipeline={"override": 0.6, "selection": "lung-extent"})
    engine = Device.from_profile(load_profile(profile)).routes["ct"]
    assert engine.options.override == 0.6 and "(float32)" in engine.info.version
    assert engine.options.selection == "lung-extent", "a key equal to the card's value is accepted"
    flagged = Device.from_profile(load_profile(profile), {"override": (0.75, "--override")})
    assert flagged.routes["ct"].options.override == 0.75
    assert main(["predict", str(STUDY), "--config", str(profile), "--variant", "int8", "--json"]) == 0
    assert "(int8)" in json.loads(capsys.readouterr().out)["model"]["version"]


CARD = DEFAULT_BUNDLE / "model.json"


@pytest.mark.parametrize("pipeline, flags, where, key, card_value", [
    ("  group_size: 40\n", [], "device.yaml: pipeline.group_size", "group_size = 40", "group_size = 50"),
    ("  selection: rahimzadeh\n", [], "device.yaml: pipeline.selection", "selection = 'rahimzadeh'",
     "selection = 'lung-extent'"),
    ("  clahe_clip: 3.0\n", [], "device.yaml: pipeline.clahe_clip", "clahe_clip = 3.0", "clahe_clip = 2.0"),
    ("  override: 0.8\n", ["--no-mask"], "--no-mask", "mask_lungs = False", "mask_lungs = True"),
    ("  override: 0.8\n", ["--selection", "seed-area"], "--selection", "selection = 'seed-area'",
     "selection = 'lung-extent'"),
])
def test_settings_that_contradict_the_model_card_are_refused(capsys, tmp_path, pipeline, flags, where, key, card_value):
    profile = tmp_path / "device.yaml"
    profile.write_text(f"name: t\ndescription: t\nmodel:\n  bundle: {DEFAULT_BUNDLE}\npipeline:\n{pipeline}")
    assert main(["predict", str(STUDY), "--config", str(profile), *flags]) == 2
    err = capsys.readouterr().err
    assert where in err and key in err and f"{CARD}, which says {card_value}" in err, err


@pytest.mark.slow
def test_a_prediction_does_not_depend_on_the_groups_before_it():
    """TFLite LSTM kernels keep state in variable tensors; every call must start from zero."""
    groups = [prepare_study(s).groups()[0] for s in (STUDY, SAMPLES / "CAP_cap002")]
    for variant in ("int8", "float32"):
        model = TFLiteClassifier(DEFAULT_BUNDLE, variant, threads=1)
        first = model.predict(groups[0])
        model.predict(groups[1])
        assert np.array_equal(model.predict(groups[0]), first), variant


def test_overlay_colours_only_where_there_is_heat():
    image = np.tile(np.arange(256, dtype=np.uint8), (64, 1))
    heat = np.zeros(image.shape)
    heat[:, 200:] = 1.0
    picture = overlay(image, heat)
    assert picture.shape == image.shape + (3,) and picture.dtype == np.uint8
    assert np.array_equal(picture[:, :200], np.repeat(image[:, :200, None], 3, axis=2)), "cold pixels unchanged"
    hot = picture[:, 200:].astype(int)
    assert (np.abs(hot[..., 0] - hot[..., 2]) > 50).all(), "hot pixels coloured"


def test_shipped_profiles_describe_the_shipped_model():
    profile = load_profile(REPO / "firmware_config" / "cpu-minipc.yaml")
    assert profile.model.bundle == DEFAULT_BUNDLE and profile.server.host == "127.0.0.1"


def test_occlusions_on_parallel_head_copies_give_the_shares_of_one_copy():
    group = Engine.default().run(STUDY).prepared.groups()[0]
    serial, parallel = GradCam(load_card(DEFAULT_BUNDLE), parallel=1), GradCam(load_card(DEFAULT_BUNDLE), parallel=3)
    assert len(parallel.heads) == 3
    for c in range(len(CLASSES)):
        (raw1, share1), (raw3, share3) = serial.evidence(group, c), parallel.evidence(group, c)
        assert np.array_equal(raw1, raw3) and np.array_equal(share1, share3) and share1.sum() > 0
