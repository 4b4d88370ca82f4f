"""CT slice models from 2-D slice images (``ctedge train --slice-images``): surrogate patients, the
split by them, near duplicates, the lung crop the edge applies for such a model, and the training,
quantize and predict path on a tiny synthetic class-folder layout (small CNN, 32 px, one epoch)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import UserError
from edge.options import PipelineOptions
from edge.pipeline import prepare_study
from edge.preprocess.window import fit_square, lung_box

pytest.importorskip("tensorflow")

from edge.card import load_card  # noqa: E402
from edge.cli import main  # noqa: E402
from training.ct_slice_images import (group_split, join_near_duplicates, load_inputs, read_slice_images,  # noqa: E402
                                      slice_image_input, surrogate_patient, surrogate_patients)


def test_surrogate_patient_is_the_paper_or_the_source_image():
    assert surrogate_patient("2020.02.10.20021584-p6-52%0.png") == surrogate_patient("2020.02.10.20021584-p7-60%3.png") \
        == "paper:2020.02.10.20021584"
    assert surrogate_patient("kjr-21-e25-p1-6.png") == "paper:kjr-21-e25"
    assert surrogate_patient("2020.03.16.20036145-p19-128-2.png") == "paper:2020.03.16.20036145"
    assert surrogate_patient("51%3.jpg") == surrogate_patient("51%0.jpg") == "image:51"
    assert surrogate_patient("PIIS0140673620301549_0%1.png") == surrogate_patient("PIIS0140673620301549_2.png")
    names = ["non_covid/660.png", "non_covid/661.png", "non_covid/662.png", "non_covid/664.png", "non_covid/5%0.jpg",
             "non_covid/6%1.jpg", "covid/2020.02.10.20021584-p6-52%0.png"]
    assert surrogate_patients(names) == ["run:660", "run:660", "run:660", "run:664", "image:5", "image:6",
                                         "paper:2020.02.10.20021584"]


def _chest(bright: int, seed: int, shape=(90, 120)) -> np.ndarray:
    """A grey 'chest' (an ellipse) whose two 'lungs' have brightness ``bright``, with noise."""
    rng = np.random.default_rng(seed)
    image = np.full(shape, 200, np.uint8)
    cv2.ellipse(image, (shape[1] // 3, shape[0] // 2), (shape[1] // 7, shape[0] // 3), 0, 0, 360, bright, -1)
    cv2.ellipse(image, (2 * shape[1] // 3, shape[0] // 2), (shape[1] // 7 + seed % 5, shape[0] // 3), 0, 0, 360, bright, -1)
    for _ in range(6):     # vessels and lesions: what makes two slices differ
        centre = (int(rng.integers(10, shape[1] - 10)), int(rng.integers(10, shape[0] - 10)))
        cv2.circle(image, centre, int(rng.integers(4, 12)), int(rng.integers(0, 256)), -1)
    return np.clip(image + rng.normal(0, 12, shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    """UCSD-like class folders: covid slices cut from 6 papers (2 each), non-covid from 12 source images."""
    root = tmp_path_factory.mktemp("ucsd")
    for k in range(12):
        for folder, bright, name in (("CT_COVID", 150, f"2020.03.0{k % 6}.2003{k % 6}-p{k}-9%{k}.png"),
                                     ("CT_NonCOVID", 40, f"{k}%0.jpg")):
            (root / folder).mkdir(exist_ok=True)
            cv2.imwrite(str(root / folder / name), _chest(bright, seed=k + 50 * (folder == "CT_COVID")))
    return root


def test_read_slice_images_of_class_folders_and_a_manifest(layout, tmp_path):
    images = read_slice_images(layout)
    assert len(images) == 24 and {i.label for i in images} == {"covid", "non_covid"}
    assert len({i.patient for i in images if i.label == "covid"}) == 6
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,class,patient\n" + "".join(f"{i.path},{'healthy' if i.label == 'non_covid' else 'covid'},p{n}\n"
                                                         for n, i in enumerate(images)))
    again = read_slice_images(manifest)
    assert [i.label for i in again] == [i.label for i in images] and again[0].patient == "p0"
    (layout.parent / "bad").mkdir(exist_ok=True)
    (layout.parent / "bad" / "pneumonia").mkdir(exist_ok=True)
    with pytest.raises(UserError, match="class folders"):
        read_slice_images(layout.parent / "bad")
    manifest.write_text("path,class\nx.png,covid\n")
    with pytest.raises(UserError, match="missing column"):
        read_slice_images(manifest)


def test_unreadable_image_is_named(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(UserError, match="broken.png"):
        slice_image_input(bad, PipelineOptions(input_size=32))


def test_split_keeps_every_surrogate_patient_in_one_part(layout):
    images = read_slice_images(layout)
    split = group_split(images, test_fraction=0.3, val_fraction=0.2, seed=1)
    assert sorted(sum(split.values(), [])) == list(range(len(images)))
    parts = {p: {images[k].patient for k in ks} for p, ks in split.items()}
    assert not (parts["train"] & parts["test"] or parts["train"] & parts["val"] or parts["val"] & parts["test"])
    for label in ("covid", "non_covid"):
        assert any(images[k].label == label for k in split["test"]) and any(images[k].label == label for k in split["train"])


def test_near_duplicates_join_one_surrogate_patient(layout, tmp_path):
    images = read_slice_images(layout)[:4]
    x = load_inputs(images, PipelineOptions(input_size=64))
    copy = replace(images[0], path=tmp_path / "copy.png", patient="image:copy")
    joined, n = join_near_duplicates(images + [copy], np.concatenate([x, x[:1] + 1]))
    assert n == 1 and joined[-1].patient == joined[0].patient
    assert len({i.patient for i in joined[:4]}) == len({i.patient for i in images})


def test_lung_crop_fills_the_input_with_the_lungs(phantom_dataset):
    study = phantom_dataset / "covid" / "covid-0"
    whole = prepare_study(study, PipelineOptions(input_size=64, mask_lungs=False))
    cut = prepare_study(study, PipelineOptions(input_size=64, mask_lungs=False, crop="lungs"))
    assert cut.images.shape == whole.images.shape and cut.lung_mask.shape == whole.images.shape
    kept = whole.selection.kept_indices
    assert cut.lung_mask[kept].mean() > 1.5 * whole.lung_mask[kept].mean()
    top, bottom, left, right = lung_box(whole.lung_mask[kept], margin=0.0)
    assert whole.lung_mask[kept][:, top:bottom, left:right].sum() == whole.lung_mask[kept].sum()
    assert fit_square(np.ones((10, 20), np.uint8), 8).shape == (8, 8)
    with pytest.raises(ValueError, match="crop"):
        PipelineOptions(crop="body")


@pytest.fixture(scope="module")
def trained(layout, phantom_dataset, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("slice-images")
    run, bundle = root / "run", root / "bundle"
    assert main(["train", str(layout), "--slice-images", "--arch", "small-cnn", "--input-size", "32", "--epochs", "1",
                 "--freeze-epochs", "1", "--test-fraction", "0.3", "--batch-size", "8", "--out", str(run)]) == 0
    assert main(["quantize", str(run), "--calibration", str(run / "manifest.csv"), "--out", str(bundle), "--max-slices", "20"]) == 0
    return run, bundle


def test_training_holds_out_surrogate_patients_and_reports_the_floor(trained):
    run, _ = trained
    with open(run / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    part_of: dict[str, set[str]] = {}
    for r in rows:
        part_of.setdefault(r["patient"], set()).add(r["part"])
    assert len(rows) == 24 and all(len(parts) == 1 for parts in part_of.values())
    doc = json.loads((run / "evaluation.json").read_text())
    test_rows = [r for r in rows if r["part"] == "test"]
    for model in ("model", "baseline"):
        m = doc[model]
        assert m["n_slices"] == len(test_rows) and sum(map(sum, m["confusion_matrix"])) == len(test_rows)
        low, high = m["per_class"]["covid"]["sensitivity_ci95"]
        assert 0 <= low <= m["per_class"]["covid"]["sensitivity"] <= high <= 1
    assert "floor: frozen embedding" in (run / "report.md").read_text()
    config = json.loads((run / "config.json").read_text())
    assert config["classes"] == ["covid", "non_covid"]
    assert config["preprocessing"]["crop"] == "lungs" and config["preprocessing"]["mask_lungs"] is False


def test_the_bundle_cuts_volumes_to_the_lungs_and_votes_covid_or_not(trained, phantom_dataset, capsys):
    _, bundle = trained
    card = load_card(bundle)
    assert (card.kind, card.classes) == ("slice", ("covid", "non_covid"))
    train = sum(1 for line in (bundle.parent / "run" / "manifest.csv").read_text().splitlines() if line.endswith(",train"))
    assert card.extra["calibration"]["slices"] == min(20, train), "calibrated on the train part only"
    assert card.preprocessing.crop == "lungs" and not card.preprocessing.mask_lungs
    capsys.readouterr()
    assert main(["predict", str(phantom_dataset / "healthy" / "healthy-0"), "--model", str(bundle), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["label"] in ("covid", "non_covid") and doc["slices_used"][0]["label"] in ("covid", "non_covid")


def test_slice_images_refuse_what_they_cannot_do(layout, tmp_path, capsys):
    assert main(["train", str(layout), "--slice-images", "--arch", "small-cnn", "--out", str(tmp_path / "r")]) == 2
    assert "--test-fraction" in capsys.readouterr().err
    assert main(["train", str(layout), "--slice-images", "--arch", "small-cnn", "--modality", "xray",
                 "--test-fraction", "0.2", "--out", str(tmp_path / "r")]) == 2
    assert "--slice-images" in capsys.readouterr().err
    assert main(["train", str(layout), "--arch", "small-cnn", "--fine-tune-from", "conv3", "--out", str(tmp_path / "r")]) == 2
    assert "--fine-tune-from" in capsys.readouterr().err


def test_fine_tuning_freezes_the_trunk_below_the_named_layer():
    from training.archs import build_slice_model

    built = build_slice_model("small-cnn", 32, 2)
    assert built.frozen_for_fine_tuning("conv3") == {"conv1", "conv2"}
    assert built.frozen_for_fine_tuning(None) == frozenset()
    with pytest.raises(ValueError, match="no trunk layer named 'conv9'"):
        built.frozen_for_fine_tuning("conv9")


def test_mobilenetv2_slices_are_scaled_as_its_imagenet_weights_expect():
    """A grey slice in [0, 255] reaches the Coral trunk as [-1, 1] RGB, what its weights were trained on."""
    import tf_keras as keras

    from training.archs import build_slice_model
    from training.trunk import CORAL_MOBILENET_V2, mobilenet_v2

    slice_model = build_slice_model("mobilenetv2", 224, 2, CORAL_MOBILENET_V2).model
    grey = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 1)).astype(np.float32)
    ours = keras.Model(slice_model.inputs, slice_model.get_layer("pool").output)(grey).numpy()
    reference = mobilenet_v2()(np.repeat(grey / 127.5 - 1, 3, axis=-1)).numpy().mean(axis=(1, 2))
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4)
