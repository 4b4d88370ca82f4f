"""ctedge train --modality xray on <class>/<images> folders of synthetic radiograph phantoms (64 px,
one epoch), ctedge quantize of the run (int8 with fidelity), predict with the bundle, and the edge
Grad-CAM of the X-ray model against TensorFlow's."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("tensorflow")

from edge import CLASSES
from edge.card import load_card
from edge.cli import main
from edge.explain import SliceGradCam
from edge.infer import SliceClassifier
from edge.pipeline import prepare_radiograph
from training.gradcam import gradcam_slice
from training.slice_train import load_slice_run


def radiograph_phantom(label: str, size: int, seed: int) -> np.ndarray:
    """A frontal chest-like picture: bright body, two dark lung fields, bright patches for disease
    (many small peripheral ones for covid, one large lower-lobe one for other_pneumonia)."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size), 170.0)
    for cx in (0.3, 0.7):
        cv2.ellipse(img, (int(cx * size), int(0.45 * size)), (int(0.15 * size), int(0.3 * size)), 0, 0, 360, 40, -1)
    if label == "covid":
        for _ in range(6):
            x, y = rng.choice([0.2, 0.8]) * size, rng.uniform(0.3, 0.7) * size
            cv2.circle(img, (int(x), int(y)), max(2, size // 20), 120, -1)
    elif label == "other_pneumonia":
        cv2.ellipse(img, (int(rng.choice([0.3, 0.7]) * size), int(0.62 * size)), (size // 8, size // 10), 0, 0, 360, 150, -1)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("xray-data")
    for k, label in enumerate(CLASSES):
        (root / label).mkdir()
        for i in range(4):
            cv2.imwrite(str(root / label / f"{label}-{i}.png"), radiograph_phantom(label, 96, 10 * k + i))
    return root


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("xray-run")
    run, bundle = root / "run", root / "bundle"
    assert main(["train", str(dataset), "--modality", "xray", "--arch", "small-cnn", "--input-size", "64",
                 "--epochs", "1", "--batch-size", "16", "--out", str(run)]) == 0
    assert main(["quantize", str(run), "--calibration", str(dataset), "--out", str(bundle)]) == 0
    return run, bundle


def test_train_quantize_predict_an_xray_model(trained, dataset, capsys):
    _, bundle = trained
    card = load_card(bundle)
    assert (card.kind, card.modality, card.classes, card.patient_rule) == ("image", "xray", CLASSES, None)
    assert set(card.variants) == {"float32", "int8"} and card.preprocessing.input_size == 64
    fidelity = json.loads((bundle / "fidelity.json").read_text())
    assert fidelity["studies"] == 12 and fidelity["variants"]["tflite_float32"]["max_abs_prob_diff"] < 1e-4
    assert fidelity["variants"]["tflite_int8"]["max_abs_prob_diff"] < 0.05
    image = dataset / "covid" / "covid-0.png"
    capsys.readouterr()
    assert main(["predict", str(image), "--model", str(bundle), "--variant", "int8", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    expected = SliceClassifier(card, "int8").predict(prepare_radiograph(image, card.preprocessing).images[0])
    np.testing.assert_allclose([doc["probabilities"][c] for c in CLASSES], expected, atol=1e-5)
    assert doc["modality"] == "xray" and doc["model"]["banner"]


def test_edge_gradcam_of_an_xray_model_matches_tensorflow(trained, dataset):
    run, bundle = trained
    card = load_card(bundle)
    model, config = load_slice_run(run)
    images = np.stack([prepare_radiograph(dataset / label / f"{label}-1.png", card.preprocessing).images[0]
                       for label in CLASSES])
    edge = SliceGradCam(card)
    for c in range(len(CLASSES)):
        reference = gradcam_slice(model, config["gradcam_layer"], images, c)
        np.testing.assert_allclose(np.stack([edge.explain_slice(i, c) for i in images]), reference, atol=2e-3)


def test_the_group_architecture_is_refused_for_xray(dataset, tmp_path, capsys):
    assert main(["train", str(dataset), "--modality", "xray", "--out", str(tmp_path / "run")]) == 2
    assert "--modality" in capsys.readouterr().err


def test_bench_times_an_xray_bundle_per_image(trained, dataset):
    from quantize.bench import bench

    run, bundle = trained
    doc = bench(dataset / "healthy" / "healthy-0.png", bundle, run, repeats=1, threads=1)
    assert (doc["unit"], doc["study_units"], doc["model"]["kind"]) == ("image", 1, "image")
    assert doc["variants"]["tflite_int8"]["ms_per_image_median"] > 0 and doc["decode"] is None   # a PNG: no DICOM to decode
