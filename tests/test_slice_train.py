"""ctedge train --arch (slice models), ctedge quantize of a slice run, ctedge predict with the bundle,
and edge Grad-CAM of a slice model against TensorFlow's. Reduced inputs (64 px) and 1-2 epochs."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from edge import CLASSES
from edge.card import load_card
from edge.cli import main
from edge.explain import SliceGradCam
from edge.infer import SliceClassifier
from edge.pipeline import prepare_study
from training.archs import ARCHS, build_slice_model
from training.gradcam import gradcam_slice
from training.recipes import ARCH_INFO, RECIPES, learning_rate
from training.slice_train import load_slice_run

pytestmark = pytest.mark.train  # trains, converts or exports Keras models

SMALL = ["--arch", "small-cnn", "--input-size", "64", "--batch-size", "32"]


@pytest.fixture(scope="module")
def trained(phantom_dataset, tmp_path_factory) -> tuple[Path, Path]:
    """A small-cnn run on the phantom studies (patient labels) and its quantized bundle."""
    root = tmp_path_factory.mktemp("slice-run")
    run, bundle = root / "run", root / "bundle"
    assert main(["train", str(phantom_dataset), "--out", str(run), *SMALL, "--epochs", "2"]) == 0
    assert main(["quantize", str(run), "--calibration", str(phantom_dataset), "--out", str(bundle),
                 "--max-slices", "40"]) == 0
    return run, bundle


def kept_images(study: Path, card) -> np.ndarray:
    prepared = prepare_study(study, card.preprocessing)
    return prepared.images[prepared.selection.kept_indices]


def test_train_quantize_predict_through_the_cli(trained, phantom_dataset, capsys):
    _, bundle = trained
    card = load_card(bundle)
    assert (card.kind, card.classes, card.status) == ("slice", CLASSES, "demonstration")
    assert set(card.variants) == {"float32", "int8"} and card.explain["layer"] == "conv4"
    assert card.preprocessing.input_size == 64 and card.patient_rule.to_dict() == {"name": "fraction", "threshold": 0.1}
    fidelity = json.loads((bundle / "fidelity.json").read_text())
    assert fidelity["variants"]["tflite_float32"]["max_abs_prob_diff"] < 1e-4
    assert fidelity["variants"]["tflite_int8"]["max_abs_prob_diff"] < 0.05
    study = phantom_dataset / "covid" / "covid-0"
    capsys.readouterr()
    # int8 named: untuned, this tiny model's int8 (probabilities near 1/3, top-1 flips) may fail fidelity and not run
    assert main(["predict", str(study), "--model", str(bundle), "--variant", "int8", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    int8 = SliceClassifier(card, "int8")
    expected = np.stack([int8.predict(s) for s in kept_images(study, card)])
    got = np.array([[s["probabilities"][c] for c in CLASSES] for s in doc["slices_used"]])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert doc["label"] == card.patient_rule.verdict(expected).label and doc["groups"] == []
    assert doc["model"]["banner"] and doc["model"]["version"] == "0.1.0 (int8)"


def test_edge_gradcam_of_a_slice_model_matches_tensorflow(trained, phantom_dataset):
    run, bundle = trained
    card = load_card(bundle)
    model, config = load_slice_run(run)
    images = kept_images(phantom_dataset / "other_pneumonia" / "other_pneumonia-1", card)[::4]
    edge = SliceGradCam(card)
    for c in range(len(CLASSES)):
        reference = gradcam_slice(model, config["gradcam_layer"], images, c)
        ours = np.stack([edge.explain_slice(image, c) for image in images])
        assert ours.shape == reference.shape == images.shape
        np.testing.assert_allclose(ours, reference, atol=2e-3)
        assert ours.max() == pytest.approx(1.0), "a heatmap, not zeros"


def test_edge_gradcam_through_relu_heads_matches_tensorflow(tmp_path):
    """Layers after the Grad-CAM layer with ReLUs (as the FPN's five heads of 2 ReLU units): their
    gradient is converted as arithmetic (TensorFlow's ReluGrad has no TFLite kernel), same values."""
    import tf_keras as keras

    from edge.card import parse_card
    from quantize.convert import export_slice_explain

    keras.utils.set_random_seed(3)
    inputs = keras.Input((32, 32, 1))
    maps = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(keras.layers.Rescaling(1 / 255)(inputs))
    pooled = keras.layers.GlobalAveragePooling2D()(maps)
    heads = keras.layers.Dense(4, activation="relu", bias_initializer="ones", name="head")(pooled)
    model = keras.Model(inputs, keras.layers.Activation("softmax")(keras.layers.Dense(3, name="logits")(heads)))
    files = export_slice_explain(model, "conv", tmp_path, (1, 32, 32, 1))
    card = parse_card({"name": "t", "version": "1", "kind": "slice", "classes": list(CLASSES), "variants": {},
                       "patient_rule": {"name": "fraction", "threshold": 0.1}, "preprocessing": {"input_size": 32},
                       "explain": files}, tmp_path / "model.json")
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32)).astype(np.uint8)
    edge = SliceGradCam(card)
    for c in range(len(CLASSES)):
        reference = gradcam_slice(model, "conv", images, c)
        np.testing.assert_allclose(np.stack([edge.explain_slice(i, c) for i in images]), reference, atol=1e-4)
        assert reference.max() == pytest.approx(1.0)
    assert model.get_layer("head").activation is keras.activations.relu, "the export leaves the model as it was"


def test_predict_with_out_writes_slice_heatmaps(trained, phantom_dataset, tmp_path):
    _, bundle = trained
    assert main(["predict", str(phantom_dataset / "healthy" / "healthy-0"), "--model", str(bundle),
                 "--out", str(tmp_path / "out")]) == 0
    doc = json.loads((tmp_path / "out" / "result.json").read_text())
    assert len(doc["heatmaps"]) == 3 and all(h["group"] is None and not h["interpolated"] for h in doc["heatmaps"])
    label = doc["classes"].index(doc["label"])
    by_index = {s["index"]: s["probabilities"][doc["label"]] for s in doc["slices_used"]}
    top = sorted(by_index.values(), reverse=True)[:3]
    assert [h["share"] for h in doc["heatmaps"]] == pytest.approx(top, abs=1e-4), "the most probable slices"
    assert label >= 0 and "Grad-CAM" in doc["explanation"]["method"]
    assert 'class="driver"' in (tmp_path / "out" / "report.html").read_text()


def test_slice_labels_train_infection_none_and_leave_unlabelled_studies_out(phantom_dataset, tmp_path):
    studies = [phantom_dataset / "covid" / "covid-0", phantom_dataset / "healthy" / "healthy-1"]
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["patient_folder", "file", "infection"])
        for study in studies:
            for k, dcm in enumerate(sorted(study.iterdir())):
                writer.writerow([study.name, dcm.name, int(study.parent.name == "covid" and k % 2 == 0)])
    run = tmp_path / "run"
    assert main(["train", str(phantom_dataset), "--out", str(run), *SMALL, "--epochs", "1", "--val-fraction", "0",
                 "--slice-labels", str(labels), "--patient-rule", "mean", "--threshold", "0.5",
                 "--recipe", "seed-004"]) == 0      # SGD with warm-up, mixup and random crop
    config = json.loads((run / "config.json").read_text())
    options = load_card_options(run)
    n_kept = sum(len(prepare_study(s, options).selection.kept_indices) for s in studies)
    assert config["classes"] == ["infection", "none"] and config["n_train_slices"] == n_kept
    assert config["patient_rule"] == {"name": "mean", "threshold": 0.5}
    history = json.loads((run / "history.json").read_text())
    assert history["all_lr"] == pytest.approx([learning_rate(RECIPES["seed-004"], 0)])
    assert main(["evaluate", str(phantom_dataset), "--run", str(run), "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["slice"]["classes"] == ["infection", "none"] and metrics["slice"]["n"] == n_kept
    assert {p["patient"]: p["label"] for p in metrics["predictions"]}["healthy-1"] == "none"
    assert {p["label"] for p in metrics["predictions"]} == {"infection", "none"}


def load_card_options(run: Path):
    from training.train import read_run_preprocessing

    return read_run_preprocessing(run)[0]


def test_local_weights_are_loaded_and_frozen_for_the_head_epochs(phantom_dataset, tmp_path, capsys):
    donor = build_slice_model("small-cnn", 64, 3).model
    weights = tmp_path / "trunk.h5"
    donor.save_weights(str(weights))
    frozen, trained = tmp_path / "frozen", tmp_path / "trained"
    common = [str(phantom_dataset), *SMALL, "--weights", str(weights), "--val-fraction", "0"]
    assert main(["train", *common, "--out", str(frozen), "--freeze-epochs", "1", "--epochs", "0"]) == 0
    assert main(["train", *common, "--out", str(trained), "--epochs", "1"]) == 0
    conv = donor.get_layer("conv1").get_weights()[0]
    frozen_model, trained_model = load_slice_run(frozen)[0], load_slice_run(trained)[0]
    np.testing.assert_array_equal(frozen_model.get_layer("conv1").get_weights()[0], conv)
    assert not np.allclose(frozen_model.get_layer("logits").get_weights()[0], donor.get_layer("logits").get_weights()[0])
    assert not np.allclose(trained_model.get_layer("conv1").get_weights()[0], conv)
    capsys.readouterr()
    assert main(["train", str(phantom_dataset), "--out", str(tmp_path / "x"), *SMALL, "--weights",
                 str(tmp_path / "nope.h5")]) == 2
    assert f"{tmp_path / 'nope.h5'}: pretrained weights file not found" in capsys.readouterr().err


def test_an_untrained_run_becomes_a_placeholder_bundle(phantom_dataset, tmp_path, capsys):
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    assert main(["train", str(phantom_dataset), "--out", str(run), *SMALL, "--epochs", "0"]) == 0
    assert main(["quantize", str(run), "--calibration", str(phantom_dataset), "--out", str(bundle),
                 "--max-slices", "8"]) == 0
    card = load_card(bundle)
    assert card.status == "placeholder" and card.banner == "PLACEHOLDER MODEL (UNTRAINED) - NOT FOR CLINICAL USE"
    capsys.readouterr()
    assert main(["predict", str(phantom_dataset / "healthy" / "healthy-0"), "--model", str(bundle)]) == 0
    assert "*** PLACEHOLDER MODEL (UNTRAINED) - NOT FOR CLINICAL USE ***" in capsys.readouterr().out


def test_every_named_architecture_builds_offline_with_a_gradcam_layer():
    assert set(ARCHS) == set(ARCH_INFO)
    for name in ARCHS:
        built = build_slice_model(name, 96, 2)
        assert built.model.output_shape == (None, 2) and built.model.input_shape == (None, 96, 96, 1), name
        assert len(built.model.get_layer(built.gradcam_layer).output_shape) == 4, name
        assert built.trunk_layers and not built.trunk_layers & {"logits", "pool"}, name


def test_recipe_schedules_by_hand():
    seed4 = RECIPES["seed-004"]          # 3e-3, 2 warm-up epochs, x0.1 every 10 epochs
    assert [learning_rate(seed4, e) for e in (0, 1, 2, 11, 12, 22)] == pytest.approx([1e-3, 2e-3, 3e-3, 3e-3, 3e-4, 3e-5])
    seed1 = replace(RECIPES["seed-001"], learning_rate=1.0)   # x0.5 every 10 epochs
    assert [learning_rate(seed1, e) for e in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]


def test_evaluate_a_slice_run_at_slice_and_patient_level(trained, phantom_dataset, tmp_path, capsys):
    run, _ = trained
    capsys.readouterr()
    assert main(["evaluate", str(phantom_dataset), "--run", str(run), "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "slice level" in out and "patient level" in out and "Sensitivity" in out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    model, config = load_slice_run(run)
    assert metrics["patient"]["n"] == 6 and metrics["slice"]["n"] > 6
    study = phantom_dataset / "covid" / "covid-0"
    prepared = prepare_study(study, load_card_options(run))
    probs = model.predict(prepared.images[prepared.selection.kept_indices][..., None].astype(np.float32), verbose=0)
    from edge.vote import PatientRule

    verdict = PatientRule(**config["patient_rule"]).verdict(probs)
    row = next(p for p in metrics["predictions"] if p["patient"] == "covid-0")
    assert row["verdict"] == verdict.label and row["label"] == "covid"
    for name in ("roc_slice.png", "roc_patient.png", "confusion_slice.png", "confusion_patient.png", "tsne_slice.png"):
        assert (tmp_path / "ev" / name).stat().st_size > 1000


def test_tsne_keeps_separated_classes_apart():
    """Two classes whose 64-D features differ in mean stay apart in the 2-D map: each point's nearest
    neighbour in the map is of its own class (a map that mixed them would fail this)."""
    from training.slice_evaluate import tsne

    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 1, (40, 64)), rng.normal(4, 1, (40, 64))])
    labels = np.repeat([0, 1], 40)
    points = tsne(features)
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1) + np.eye(80) * 1e9
    assert points.shape == (80, 2) and (labels[distances.argmin(axis=1)] == labels).mean() >= 0.95
