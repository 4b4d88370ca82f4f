"""Cached trunk features (``training.feature_cache``) and the frozen-trunk stage trained on them
(``ctedge train --modality xray --feature-cache``), on 64 px synthetic radiographs."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from edge import CLASSES
from edge.cli import main
from training.archs import build_slice_model
from training.data import discover
from training.feature_cache import pooled_features, trunk_fingerprint
from training.slice_train import load_slice_run
from training.train import prepare_records, read_run_preprocessing

from tests.helpers.radiographs import radiograph_folders

pytestmark = pytest.mark.train  # builds or trains Keras models


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return radiograph_folders(tmp_path_factory.mktemp("xray-data"))


def test_features_are_cached_per_trunk(tmp_path):
    model = build_slice_model("small-cnn", 32, 3).model
    images = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 1), dtype=np.uint8)
    first = pooled_features(model, images, tmp_path)
    (cache,) = tmp_path.glob("*.npz")
    stamp = cache.stat().st_mtime_ns
    again = pooled_features(model, images[::-1], tmp_path)
    np.testing.assert_array_equal(again, first[::-1])
    assert cache.stat().st_mtime_ns == stamp                  # nothing new: the file is not rewritten
    other = build_slice_model("small-cnn", 32, 3).model       # other random weights: another trunk, another file
    assert trunk_fingerprint(other) != trunk_fingerprint(model)
    pooled_features(other, images[:2], tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_a_head_trained_on_cached_features_is_the_saved_model(dataset, tmp_path):
    """The kept epoch's validation loss, measured on cached features, is the saved full model's loss
    on the validation images; a second run reads every feature from the cache."""
    cache = tmp_path / "cache"
    args = ["train", str(dataset), "--modality", "xray", "--arch", "small-cnn", "--input-size", "64",
            "--freeze-epochs", "3", "--epochs", "0", "--folds", "2", "--feature-cache", str(cache)]
    assert main(args + ["--out", str(tmp_path / "run")]) == 0
    (stored,) = cache.glob("*.npz")
    assert len(np.load(stored)["keys"]) == 12
    run = tmp_path / "run"
    model, config = load_slice_run(run / "fold0")
    assert config["feature_cache"] == str(cache) and "frozen_stage" in config["augmentation"]
    fold = json.loads((run / "split.json").read_text())["folds"][0]
    options, _ = read_run_preprocessing(run / "fold0")
    val = prepare_records([r for r in discover(dataset) if r.patient in fold["val"]], options, "xray")
    x = np.stack([p.study.images[0] for p in val])[..., None].astype(np.float32)
    probs = np.clip(model.predict(x, verbose=0), 1e-7, 1 - 1e-7)
    loss = -np.mean(np.log(probs[np.arange(len(val)), [CLASSES.index(p.record.label) for p in val]]))
    assert config["selected_epoch"]["val_loss"] == pytest.approx(loss, rel=1e-4)
    stamp = stored.stat().st_mtime_ns
    assert main(args + ["--out", str(tmp_path / "again")]) == 0
    assert stored.stat().st_mtime_ns == stamp
