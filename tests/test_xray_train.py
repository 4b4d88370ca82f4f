"""ctedge train --modality xray on <class>/<images> folders of synthetic radiograph phantoms (64 px,
one epoch per stage, two folds and a hold-out): the recorded split, the augmentation, the per-class
report; ctedge quantize of the run (int8 with fidelity), predict with the bundle, and the edge
Grad-CAM of the X-ray model against TensorFlow's."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("tensorflow")

from edge import CLASSES
from edge.card import RESEARCH_BANNER, load_card
from edge.cli import main
from edge.explain import SliceGradCam
from edge.infer import SliceClassifier
from edge.pipeline import prepare_radiograph
from training.data import discover
from training.gradcam import gradcam_slice
from training.slice_train import RecipeBatches, SliceTrainConfig, load_slice_run
from training.train import prepare_records, read_run_preprocessing
from training.xray_report import class_metrics

from tests.helpers.radiographs import radiograph_folders

pytestmark = pytest.mark.train  # trains, converts or exports Keras models


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return radiograph_folders(tmp_path_factory.mktemp("xray-data"))


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("xray-run")
    run, bundle = root / "run", root / "bundle"
    assert main(["train", str(dataset), "--modality", "xray", "--arch", "small-cnn", "--input-size", "64",
                 "--freeze-epochs", "1", "--epochs", "1", "--batch-size", "16", "--folds", "2", "--test-fraction", "0.25",
                 "--out", str(run)]) == 0
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


def test_quantize_research_puts_the_data_summary_in_the_card(trained, dataset, tmp_path, capsys):
    run, _ = trained
    training_data = {"sources": {"phantoms": {c: 4 for c in CLASSES}}, "licences": {"CC0": 12}, "non_commercial": False,
                     "manifest_sha256": "1" * 64}
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"training_data": training_data, "known_biases": ["Every image is a phantom."]}))
    bundle = tmp_path / "bundle"
    assert main(["quantize", str(run), "--calibration", str(dataset), "--out", str(bundle), "--research", str(summary),
                 "--known-bias", "Twelve images only."]) == 0
    card = load_card(bundle)
    assert (card.status, card.banner) == ("research", RESEARCH_BANNER) and card.note.startswith("Research model")
    assert card.training_data == training_data and card.known_biases == ("Every image is a phantom.", "Twelve images only.")
    summary.write_text("{}")
    assert main(["quantize", str(run), "--calibration", str(dataset), "--out", str(bundle), "--research", str(summary)]) == 2
    assert f"{summary}: not a summary.json of ctedge data import" in capsys.readouterr().err


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


def test_the_holdout_patients_reach_no_fold(trained, dataset):
    run, _ = trained
    split = json.loads((run / "split.json").read_text())
    patients = {r.patient for r in discover(dataset)}
    holdout = set(split["holdout"])
    assert len(holdout) == 3 and {p.rsplit("-", 1)[0] for p in holdout} == set(CLASSES)   # one per class
    assert len(split["folds"]) == 2
    for i, fold in enumerate(split["folds"]):
        train, val = set(fold["train"]), set(fold["val"])
        assert not holdout & (train | val) and not train & val and train | val == patients - holdout
        assert json.loads((run / f"fold{i}" / "split.json").read_text()) == fold
        evaluated = json.loads((run / f"fold{i}" / "evaluation" / "metrics.json").read_text())["predictions"]
        assert {p["patient"] for p in evaluated} == val
    assert set(split["folds"][0]["val"]) | set(split["folds"][1]["val"]) == patients - holdout
    held = json.loads((run / "holdout" / "metrics.json").read_text())["predictions"]
    assert {p["patient"] for p in held} == holdout


def test_validation_images_are_not_augmented(trained, dataset):
    """The kept epoch's recorded validation loss is the saved fold model's loss on the plain validation images."""
    run, _ = trained
    for i, fold in enumerate(json.loads((run / "split.json").read_text())["folds"]):
        model, config = load_slice_run(run / f"fold{i}")
        options, _ = read_run_preprocessing(run / f"fold{i}")
        val = prepare_records([r for r in discover(dataset) if r.patient in fold["val"]], options, "xray")
        x = np.stack([p.study.images[0] for p in val])[..., None].astype(np.float32)
        probs = np.clip(model.predict(x, verbose=0), 1e-7, 1 - 1e-7)
        loss = -np.mean(np.log(probs[np.arange(len(val)), [CLASSES.index(p.record.label) for p in val]]))
        assert config["selected_epoch"]["val_loss"] == pytest.approx(loss, rel=1e-5)   # a warp moves it by 4e-4 or more


def test_training_batches_get_the_xray_warp_within_its_ranges():
    bar = np.zeros((64, 64), np.uint8)
    bar[31:34, 8:40] = 200                                   # left of centre: a mirror image would move it right
    config = SliceTrainConfig(modality="xray", batch_size=16, seed=0)
    batches = RecipeBatches(np.stack([bar[..., None]] * 16), np.zeros(16, int), 3, config)
    first = batches[0][0][..., 0]
    batches.on_epoch_end()
    second = batches[0][0][..., 0]
    angles = []
    for img in np.concatenate([first, second]):
        m = cv2.moments(img)
        angles.append(np.degrees(0.5 * np.arctan2(2 * m["mu11"], m["mu20"] - m["mu02"])))
        assert m["m10"] / m["m00"] < 32                       # never flipped
        assert 0.96 - 0.01 < img.sum() / bar.sum() < 1.0404 + 0.01   # zoom 2%, no brightness change
    assert np.abs(angles).max() <= 5 + 2 + 0.3 and np.ptp(angles) > 2   # rotation 5 plus shear 2 degrees, random
    assert not np.array_equal(first, second)                  # new draws every epoch


def test_the_run_records_its_augmentation_and_writes_the_per_class_report(trained, capsys):
    run, _ = trained
    config = json.loads((run / "config.json").read_text())
    assert config["augmentation"] == {"warp": {"rotation_deg": 5.0, "zoom": 0.02, "shear_deg": 2.0}}
    assert (config["recipe"], config["folds"], config["test_fraction"]) == ("xray", 2, 0.25)
    report = json.loads((run / "report.json").read_text())
    folds = [json.loads((run / f"fold{i}" / "evaluation" / "metrics.json").read_text())["predictions"] for i in (0, 1)]
    assert report["folds"] == [class_metrics(f, CLASSES) for f in folds]
    held = json.loads((run / "holdout" / "metrics.json").read_text())["predictions"]
    assert {k: v for k, v in report["holdout"].items() if k != "bootstrap_95"} == class_metrics(held, CLASSES)
    final = config["final_model"]["fold"]
    assert report["final_model"]["fold"] == final
    assert report["folds"][final]["macro"]["f1"] == max(f["macro"]["f1"] for f in report["folds"])
    assert (run / "slice_model.keras").read_bytes() == (run / f"fold{final}" / "slice_model.keras").read_bytes()
    text = (run / "report.md").read_text()
    assert "## Validation folds" in text and "## Hold-out: 3 radiograph(s)" in text
    assert all(f"| {c} |" in text for c in CLASSES)


def test_ct_slice_runs_refuse_folds(dataset, tmp_path, capsys):
    assert main(["train", str(dataset), "--arch", "small-cnn", "--folds", "2", "--out", str(tmp_path / "run")]) == 2
    assert "--modality xray" in capsys.readouterr().err
    assert main(["train", str(dataset), "--modality", "xray", "--arch", "small-cnn", "--test-fraction", "1",
                 "--out", str(tmp_path / "run")]) == 2
    assert "--test-fraction" in capsys.readouterr().err
