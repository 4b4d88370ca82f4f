"""The model card as the contract between training and the edge (edge/card.py, edge/options.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from edge.card import DEMONSTRATION_BANNER, PLACEHOLDER_BANNER, RESEARCH_BANNER, load_card, write_card
from edge.cli import main
from edge.engine import DEFAULT_BUNDLE, Engine
from edge.errors import ModelLoadError
from edge.ingest.dicom_files import decode_hu
from edge.options import PipelineOptions
from edge.phantom import make_phantom, write_dicom_series
from edge.pipeline import prepare_study
from edge.preprocess.window import resize_slices
from tests.helpers.paths import REPO, SAMPLES

STUDY = SAMPLES / "COVID-19_P002"


def bundle_with(tmp_path: Path, **changes) -> Path:
    """A copy of the demonstration bundle whose card has ``changes`` applied (dotted keys go one level down)."""
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    doc = json.loads((bundle / "model.json").read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            doc[section][field] = value
        elif value is None:
            doc.pop(section)
        else:
            doc[section] = value
    (bundle / "model.json").write_text(json.dumps(doc))
    return bundle


@pytest.mark.parametrize("changes, message", [
    ({"preprocessing": None}, "model card has no 'preprocessing'"),
    ({"classes": ["covid", "healthy"]}, "classes ['covid', 'healthy'] must be ['covid', 'other_pneumonia', 'healthy']"),
    ({"preprocessing__colour": "blue"}, "preprocessing must be an object with keys from"),
    ({"preprocessing__selection": "everything"}, "preprocessing: selection must be one of"),
    ({"training_range__slice_thickness_mm": [1.0]}, "training_range: each value must be [low, high]"),
    ({"kind": "video"}, "kind 'video' is not supported by this ctedge version (supported: group, slice, image)"),
    ({"kind": "image"}, "kind 'image' reads xray studies, not modality 'ct'"),
    ({"kind": "slice"}, "a slice model needs patient_rule"),
    ({"kind": "slice", "patient_rule": {"name": "fraction", "threshold": 0.1}},
     "variant 'float32' must name the model file(s) of a slice model, got encoder, head"),
    ({"patient_rule": {"name": "fraction", "threshold": 0.1}}, "patient_rule applies to slice models only"),
    ({"modality": "xray"}, "kind 'group' reads ct studies, not modality 'xray'"),
    ({"modality": "mri"}, "modality 'mri' is not supported"),
    ({"status": "trial"}, "status 'trial' must be one of clinical, research, demonstration, placeholder"),
    ({"training_data": {"sources": {"a": {"covid": 1}}}}, "training_data must be an object with sources"),
    ({"known_biases": "pediatric"}, "known_biases must be a list of sentences"),
])
def test_a_bad_card_is_refused_naming_the_file_and_key(tmp_path, changes, message):
    bundle = bundle_with(tmp_path, **changes)
    with pytest.raises(ModelLoadError) as err:
        load_card(bundle)
    assert str(bundle / "model.json") in str(err.value) and message in str(err.value)


def test_the_shipped_card_round_trips_and_records_the_model_input():
    card = load_card(DEFAULT_BUNDLE)
    assert card.preprocessing == PipelineOptions(), "the demonstration model was trained with the defaults"
    assert (card.training_range.slice_thickness_mm.low, card.training_range.slice_thickness_mm.high) == (2.0, 2.0)
    doc = json.loads((DEFAULT_BUNDLE / "model.json").read_text())
    assert card.to_dict() == doc


@pytest.mark.parametrize("changes, status, banner", [
    ({"status": "research"}, "research", RESEARCH_BANNER),
    ({"status": None, "demonstration": True}, "demonstration", DEMONSTRATION_BANNER),
    ({"status": None, "demonstration": False, "placeholder": True}, "placeholder", PLACEHOLDER_BANNER),
    ({"status": None, "research": True}, "research", RESEARCH_BANNER),
    ({"status": None, "demonstration": False}, "clinical", ""),
])
def test_the_status_and_its_banner_also_from_the_booleans_of_older_cards(tmp_path, changes, status, banner):
    card = load_card(bundle_with(tmp_path, **changes))
    assert (card.status, card.banner) == (status, banner)
    doc = card.to_dict()
    assert (doc["status"], doc["demonstration"], doc["placeholder"]) == (status, status != "clinical", status == "placeholder")


def test_a_research_card_round_trips_its_training_data_and_known_biases(tmp_path):
    training_data = {"sources": {"hannover": {"covid": 243}}, "licences": {"CC BY 3.0": 243}, "non_commercial": False,
                     "manifest_sha256": "0" * 64}
    biases = ["Every COVID-19 film is a portable ICU film."]
    card = load_card(bundle_with(tmp_path, status="research", training_data=training_data, known_biases=biases))
    write_card(replace(card, path=tmp_path / "copy" / "model.json"))
    again = load_card(tmp_path / "copy")
    assert (again.status, again.training_data, again.known_biases) == ("research", training_data, tuple(biases))
    assert again.to_dict() == card.to_dict()


def test_a_card_whose_group_size_differs_from_the_encoder_is_refused(tmp_path, capsys):
    bundle = bundle_with(tmp_path, preprocessing__group_size=40)
    assert main(["predict", str(STUDY), "--model", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert "encoder_int8.tflite: input shape (50, 256, 256, 1) does not match the model card" in err
    assert "(40, 256, 256, 1)" in err


def test_a_study_outside_the_training_range_is_warned_about(tmp_path, capsys):
    bundle = bundle_with(tmp_path, training_range__slice_thickness_mm=[0.5, 1.25])
    out = tmp_path / "result"
    assert main(["predict", str(STUDY), "--model", str(bundle), "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    warning = "slice thickness 2 mm is outside the range the model was trained on (0.5-1.25 mm)"
    assert any(warning in w for w in doc["warnings"]), doc["warnings"]
    assert warning in (out / "report.html").read_text()
    plain = Engine.default().run(STUDY).to_dict()
    assert not any("outside the range" in w for w in plain["warnings"]), "inside the shipped card's range"


def test_masking_clahe_and_window_from_the_card_change_the_model_input():
    base = prepare_study(STUDY, PipelineOptions())
    unmasked = prepare_study(STUDY, replace(PipelineOptions(), mask_lungs=False))
    outside = ~base.lung_mask
    assert (base.images[outside] == 0).all() and (unmasked.images[outside] > 0).mean() > 0.3
    assert np.array_equal(base.images[base.lung_mask], unmasked.images[base.lung_mask])
    stronger = prepare_study(STUDY, replace(PipelineOptions(), clahe_clip=6.0))
    assert np.abs(stronger.images.astype(int) - base.images).mean() > 1.0
    narrow = prepare_study(STUDY, replace(PipelineOptions(), window_center=-500.0, window_width=500.0))
    # -500 HU sits at 0.5 of the narrow window and at (-500 + 1350) / 1500 = 0.567 of the lung window.
    hu = resize_slices(base.volume.hu)
    near = np.abs(hu + 500) < 2
    assert abs(np.median(narrow.windowed[near]) - 127.5) <= 2 and abs(np.median(base.windowed[near]) - 144.5) <= 2


def test_an_engine_built_from_an_unmasked_card_feeds_unmasked_slices(tmp_path):
    bundle = bundle_with(tmp_path, preprocessing__mask_lungs=False)
    engine = Engine.from_bundle(bundle)
    assert engine.options.mask_lungs is False
    result = engine.run(STUDY)
    assert (result.images[~result.lung_mask] > 0).mean() > 0.3


def test_non_square_slices_keep_their_aspect_ratio():
    volume = np.full((1, 200, 100), -1000, np.int16)
    yy, xx = np.mgrid[:200, :100]
    volume[0][(yy - 100) ** 2 + (xx - 50) ** 2 <= 40 ** 2] = 40          # a disc of radius 40 px
    disc = resize_slices(volume, 256)[0] > -500
    rows, cols = np.flatnonzero(disc.any(axis=1)), np.flatnonzero(disc.any(axis=0))
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert abs(height - width) <= 2 and abs(height - 80 * 256 / 200) <= 3, (height, width)
    assert abs((rows.min() + rows.max()) / 2 - 127.5) <= 1.5 and abs((cols.min() + cols.max()) / 2 - 127.5) <= 1.5


def test_a_non_integer_rescale_slope_gives_exact_hu(tmp_path):
    files = write_dicom_series(make_phantom(n_slices=2, size=64, seed=3), tmp_path / "s")
    ds = pydicom.dcmread(files[0])
    stored = ds.pixel_array.astype(np.float64)
    ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-1000.25"
    hu = decode_hu(ds, files[0])
    assert hu.dtype == np.int16
    assert np.array_equal(hu, np.rint(stored * 0.5 - 1000.25).astype(np.int16))


def test_heatmaps_on_an_interpolated_group_name_both_source_slices(tmp_path):
    study = tmp_path / "study"
    write_dicom_series(make_phantom(n_slices=90, size=128, ground_glass=3, seed=5), study)
    doc = Engine.default().analyse(study, tmp_path / "out")
    interpolated = [g["index"] for g in doc["groups"] if g["interpolated"]]
    assert interpolated, f"{doc['n_slices_used']} slices used: expected one interpolated group"
    used = {s["index"] for s in doc["slices_used"]}
    blended = [h for h in doc["heatmaps"] if h["interpolated"]]
    for h in doc["heatmaps"]:
        weights = [s["weight"] for s in h["sources"]]
        assert sum(weights) == pytest.approx(1.0) and {s["slice_index"] for s in h["sources"]} <= used
        assert h["slice_index"] == max(h["sources"], key=lambda s: s["weight"])["slice_index"]
        assert h["interpolated"] == (len(h["sources"]) == 2) and (h["group"] in interpolated or not h["interpolated"])
    for h in blended:
        a, b = (s["slice_index"] for s in h["sources"])
        assert b - a == 1 or (b > a and not set(range(a + 1, b)) & used), "neighbours among the kept slices"
    assert blended, "the interpolated group's top slices include blended positions"
    html = (tmp_path / "out" / "report.html").read_text()
    numbers = {s["index"]: s["instance_number"] for s in doc["slices_used"]}
    for h in blended:     # the caption names both slices by InstanceNumber with their weights
        assert h["caption"].startswith(f"Grad-CAM for {doc['label']} on blend of slices ") and h["caption"] in html
        assert all(f"{numbers[s['slice_index']]} ({s['weight']:.2f})" in h["caption"] for s in h["sources"])


def test_pipeline_flags_are_checked_against_the_card(capsys, tmp_path):
    assert main(["predict", str(STUDY), "--segmenter", str(tmp_path / "unet.tflite")]) == 2
    assert "--segmenter: segmenter = " in capsys.readouterr().err
    assert main(["predict", str(STUDY), "--segmenter", "threshold", "--selection", "lung-extent", "--json"]) == 0


def test_predict_imports_neither_training_nor_quantize_nor_sets_tensorflow_variables():
    code = (
        "import os, sys, pydicom\n"
        "from edge.cli import main\n"
        "before = pydicom.config.settings.reading_validation_mode\n"
        "import edge.engine, edge.pipeline, edge.ingest\n"
        "assert pydicom.config.settings.reading_validation_mode == before, 'changed at import'\n"
        f"assert main(['predict', {str(STUDY)!r}, '--json']) == 0\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('training', 'quantize', 'tensorflow', 'tf_keras')\n"
        "                or m == 'edge.phantom')\n"
        "assert not loaded, loaded\n"
        "assert not [k for k in os.environ if k.startswith('TF_')], 'TensorFlow variables set'\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("TF_")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.train
def test_unet_segmenter_runs_without_tensorflow(tmp_path):
    pytest.importorskip("tensorflow")
    import training  # noqa: F401
    from quantize.convert import convert
    from training.models import build_unet

    unet = build_unet(base_filters=2, depth=2)
    kernel, bias = unet.layers[-1].get_weights()
    unet.layers[-1].set_weights([kernel * 0, bias * 0 + 4.0])   # output sigmoid(4) = 0.98 everywhere
    model = tmp_path / "unet.tflite"
    model.write_bytes(convert(unet, (1, 256, 256, 1), "float32"))
    code = (
        "import sys\n"
        "sys.modules['tensorflow'] = None; sys.modules['tf_keras'] = None\n"
        "import numpy as np\n"
        "from edge.preprocess.segment import TFLiteSegmenter\n"
        f"mask = TFLiteSegmenter({str(model)!r}, threads=1).segment(np.full((2, 256, 256), -800.0))\n"
        "assert mask.shape == (2, 256, 256) and mask.dtype == bool\n"
        "print(int(mask.sum()))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip()) == 2 * 256 * 256, "a constant output of sigmoid(4) > 0.5 marks every pixel"
    bundle = bundle_with(tmp_path, preprocessing__segmenter="unet.tflite")
    shutil.copy(model, bundle / "unet.tflite")
    engine = Engine.from_bundle(bundle, settings={"segmenter": (str(model), "--segmenter")})
    assert engine.segmenter is not None and engine.segmenter.name == "unet", "the card's own U-Net, named by path"


def test_the_constant_fixture_bundle_answers_as_constructed(constant_bundle):
    from tests.helpers.bundles import KNOWN_LABEL, KNOWN_PROBABILITIES

    doc = Engine.from_bundle(constant_bundle, "float32").run(STUDY).to_dict()
    assert doc["label"] == KNOWN_LABEL == "other_pneumonia"
    assert list(doc["probabilities"].values()) == pytest.approx(KNOWN_PROBABILITIES, abs=1e-5)
