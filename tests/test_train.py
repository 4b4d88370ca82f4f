"""Two-stage training, evaluation and conversion, end to end on small phantom studies."""

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from edge.cli import main
from edge.engine import DEFAULT_BUNDLE  # noqa: E402
from tests.helpers.dicom import PHANTOM_LESIONS as LESIONS  # noqa: E402

pytestmark = pytest.mark.train  # trains, converts or exports Keras models


def test_train_evaluate_quantize_predict(phantom_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(phantom_dataset), "--out", str(run), "--cnn-epochs", "2", "--head-epochs", "2",
                 "--val-fraction", "0.5", "--batch-size", "8"]) == 0
    for name in ("encoder.keras", "head.keras", "config.json", "history.json", "split.json"):
        assert (run / name).is_file(), name
    split = json.loads((run / "split.json").read_text())
    assert len(split["val"]) == 3 and not set(split["val"]) & set(split["train"])
    assert json.loads((run / "config.json").read_text())["learning_rate"] == 1e-4
    out = capsys.readouterr().out
    assert "Specificity" in out and "Average" in out

    assert main(["evaluate", str(phantom_dataset), "--run", str(run), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["patient"]["n"] == 6 and len(metrics["predictions"]) == 6
    for png in ("roc_group.png", "roc_patient.png", "confusion_group.png", "confusion_patient.png"):
        assert (tmp_path / "eval" / png).read_bytes()[:4] == b"\x89PNG"

    bundle = tmp_path / "bundle"
    assert main(["quantize", str(run), "--calibration", str(phantom_dataset), "--out", str(bundle)]) == 0
    card = json.loads((bundle / "model.json").read_text())
    assert card["demonstration"] is True and card["trained_with"]["cnn_epochs"] == 2
    # The card records the options training used and the geometry of the training studies (the
    # phantoms: 2.5 mm slices, 0.7 mm pixels), which the edge then builds its pipeline from.
    assert card["preprocessing"] == json.loads((run / "preprocessing.json").read_text())["preprocessing"]
    assert card["preprocessing"]["selection"] == "lung-extent" and card["preprocessing"]["mask_lungs"] is True
    assert card["training_range"] == {"slice_thickness_mm": [2.5, 2.5], "pixel_spacing_mm": [0.7, 0.7]}
    capsys.readouterr()
    assert main(["predict", str(phantom_dataset / "covid" / "covid-0"), "--model", str(bundle), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"]["placeholder"] is False and result["model"]["demonstration"] is True
    assert abs(sum(result["probabilities"].values()) - 1) < 1e-3


def test_explain_writes_overlays_and_consistency(phantom_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(phantom_dataset), "--out", str(run), "--cnn-epochs", "1", "--head-epochs", "1",
                 "--val-fraction", "0", "--batch-size", "8"]) == 0
    out = tmp_path / "explain"
    assert main(["explain", str(phantom_dataset / "other_pneumonia" / "other_pneumonia-0"), "--run", str(run),
                 "--out", str(out), "--top", "2", "--class", "other_pneumonia"]) == 0
    result = json.loads((out / "explain.json").read_text())
    assert result["class"] == "other_pneumonia" and 1 <= len(result["slices"]) <= 2
    for s in result["slices"]:
        png = out / s["png"]
        assert png.read_bytes()[:4] == b"\x89PNG"
        # The values are checked against a model that tracks a blob in test_gradcam; here, that the
        # command computed all four perturbations for every slice it explains.
        assert len(s["consistency"]["similarities"]) == 4


def test_cross_validation_pools_held_out_predictions(phantom_dataset, tmp_path, capsys):
    out = tmp_path / "cv"
    assert main(["train", str(phantom_dataset), "--out", str(out), "--folds", "2", "--cnn-epochs", "1",
                 "--head-epochs", "1", "--val-fraction", "0", "--batch-size", "8"]) == 0
    metrics = json.loads((out / "cross_validation" / "metrics.json").read_text())
    assert sorted(p["patient"] for p in metrics["predictions"]) == sorted(
        f"{c}-{k}" for c in LESIONS for k in range(2)), "every patient predicted once, by the fold that held it out"
    for fold in range(2):
        split = json.loads((out / f"fold{fold}" / "split.json").read_text())
        held_out = {p["patient"] for p in metrics["predictions"]} - set(split["train"]) - set(split["val"])
        assert len(held_out) == 3
    printed = capsys.readouterr().out
    assert "Average" in printed and "Across 2 folds" in printed
    folds = json.loads((out / "cross_validation" / "folds.json").read_text())
    per_fold = [json.loads((out / f"fold{i}" / "evaluation" / "metrics.json").read_text())["patient"]["macro"]
                for i in range(2)]
    assert folds["folds"] == per_fold
    for m in ("accuracy", "sensitivity"):
        values = [f[m] for f in per_fold]
        assert folds["mean_and_spread"][m]["mean"] == pytest.approx(np.mean(values))
        assert folds["mean_and_spread"][m]["sd"] == pytest.approx(np.std(values, ddof=1))


def test_test_patients_are_held_out_and_reported(phantom_dataset, tmp_path, capsys):
    # Three patients per class (one study listed twice under two patient names) so a class can spare one.
    rows = [f"{c}-{k},{c},{phantom_dataset / c / f'{c}-{k % 2}'}" for c in LESIONS for k in range(3)]
    data = tmp_path / "data.csv"
    data.write_text("patient,class,path\n" + "\n".join(rows) + "\n")
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--cnn-epochs", "1", "--head-epochs", "1",
                 "--val-fraction", "0", "--test-fraction", "0.34", "--batch-size", "8"]) == 0
    split = json.loads((run / "split.json").read_text())
    assert len(split["test"]) == 3 and len(split["train"]) == 6 and not split["val"]
    assert not set(split["test"]) & set(split["train"]), "test patients are never fitted on"
    test_metrics = json.loads((run / "evaluation_test" / "metrics.json").read_text())
    assert sorted(p["patient"] for p in test_metrics["predictions"]) == sorted(split["test"])
    printed = capsys.readouterr().out
    assert "6 train, 0 val, 3 test patients" in printed and "held-out test patients" in printed
    assert "covid-0" not in printed, "no patient identifiers printed"


def test_unet_from_studies_to_edge_segmenter(phantom_dataset, tmp_path, capsys):
    pairs, run, tflite = tmp_path / "pairs", tmp_path / "unet", tmp_path / "unet.tflite"
    studies = [str(phantom_dataset / c / f"{c}-{k}") for c in LESIONS for k in range(2)]
    assert main(["train-unet", str(pairs), "--out", str(run), "--from-studies", *studies, "--epochs", "1"]) == 0
    metrics = json.loads((run / "unet_metrics.json").read_text())
    assert metrics["n_val"] > 0 and 0.0 <= metrics["val_dice"] <= 1.0
    assert len(list((pairs / "images").glob("*.png"))) == len(list((pairs / "masks").glob("*.png"))) > 0
    assert main(["quantize-unet", str(run / "unet.keras"), "--out", str(tflite)]) == 0
    # A bundle whose card names the U-Net (and the dark-pixel selection, which does not depend on the
    # mask, so that a barely trained U-Net still gives a verdict).
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    card = json.loads((bundle / "model.json").read_text())
    card["preprocessing"] |= {"segmenter": "unet.tflite", "selection": "rahimzadeh"}
    (bundle / "model.json").write_text(json.dumps(card))
    shutil.copy(tflite, bundle / "unet.tflite")
    capsys.readouterr()
    assert main(["predict", studies[0], "--model", str(bundle), "--segmenter", str(tflite), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_slices_read"] == 24
    assert main(["predict", studies[0], "--model", str(bundle), "--segmenter", "threshold"]) == 2
    assert "segmenter = 'threshold' contradicts the model card" in capsys.readouterr().err


@pytest.mark.parametrize("layout, problem", [
    ("missing.csv", "cannot read the CSV"),
    ("bad-columns.csv", "missing column(s) class, path"),
    ("bad-class.csv", "row 2: unknown class 'flu'"),
    ("tree", "unknown class folder; expected one of covid, other_pneumonia, healthy"),
    ("empty", "no studies found"),
])
def test_bad_datasets_are_user_errors(capsys, tmp_path, layout, problem):
    (tmp_path / "bad-columns.csv").write_text("patient\nP1\n")
    (tmp_path / "bad-class.csv").write_text(f"patient,class,path\nP1,flu,{tmp_path}\n")
    (tmp_path / "tree" / "flu" / "P1").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    assert main(["train", str(tmp_path / layout), "--out", str(tmp_path / "run")]) == 2
    assert problem in capsys.readouterr().err


def test_a_folder_that_is_no_run_is_a_user_error(capsys, phantom_dataset, tmp_path):
    assert main(["quantize", str(tmp_path), "--calibration", str(phantom_dataset), "--out", str(tmp_path / "b")]) == 2
    assert f"{tmp_path / 'encoder.keras'}: missing: not a run folder of ctedge train" in capsys.readouterr().err
    assert main(["evaluate", str(phantom_dataset), "--run", str(tmp_path)]) == 2
