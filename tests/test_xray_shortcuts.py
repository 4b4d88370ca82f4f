"""The shortcut analysis (``training.xray_shortcuts``): on synthetic features where the source is
written into the features it is found, a class seen in one source only is lost when that source is
left out; ``ctedge xray-shortcuts`` on a tiny X-ray run writes its report."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

pytest.importorskip("sklearn")

from edge import CLASSES
from edge.card import RESEARCH_BANNER, load_card
from edge.dataset import StudyRecord
from training.xray_shortcuts import analyse, format_markdown

pytestmark = pytest.mark.train  # builds or trains Keras models


def _synthetic(n_per: int = 30, seed: int = 0):
    """Three sources: A (covid), B (healthy), C (other_pneumonia and healthy). Features: the class in
    dims 0-2, the source in dims 3-5, noise elsewhere."""
    rng = np.random.default_rng(seed)
    layout = [("A", "covid"), ("B", "healthy"), ("C", "other_pneumonia"), ("C", "healthy")]
    records, sources, feats = [], [], []
    for s, c in layout:
        for i in range(n_per):
            records.append(StudyRecord(f"{s}-{c}-{i}", c, f"{s}/{c}/{i}.png"))
            sources.append(s)
            f = rng.normal(0, 0.3, 8)
            f[CLASSES.index(c)] += 2.0
            f[3 + "ABC".index(s)] += 2.0
            feats.append(f)
    return records, np.array(feats), sources


def test_the_source_is_found_and_a_one_source_class_is_lost_when_left_out():
    records, feats, sources = _synthetic()
    holdout = {r.patient for r in records[::5]}
    doc = analyse(records, feats, sources, holdout, None)
    every = doc["source_from_features"]["all"]
    assert every["accuracy"] > 0.95 and every["chance_balanced"] == pytest.approx(1 / 3)
    assert doc["source_from_features"]["healthy"]["balanced_accuracy"] > 0.95    # B and C healthy told apart
    assert doc["floor_holdout"]["n"] == len(holdout) and doc["floor_holdout"]["accuracy"] > 0.9
    assert doc["floor_holdout"]["bootstrap_95"]["macro"]["f1"] is not None
    # A is the only covid source: without it no covid is ever predicted
    assert doc["leave_one_source_out"]["A"]["accuracy"] == 0.0 and "covid" not in doc["leave_one_source_out"]["A"]["classes_in_training"]
    assert "| A |" in format_markdown(doc)


def test_xray_shortcuts_command_on_a_tiny_run(tmp_path):
    pytest.importorskip("tensorflow")
    from edge.cli import main
    from tests.helpers.radiographs import radiograph_phantom

    rows = []
    for k, label in enumerate(CLASSES):
        for i in range(6):
            path = tmp_path / "img" / f"{label}-{i}.png"
            path.parent.mkdir(exist_ok=True)
            cv2.imwrite(str(path), radiograph_phantom(label, 64, 10 * k + i))
            rows.append({"patient": f"{label}-{i}", "class": label, "path": f"img/{path.name}", "source": f"s{i % 2}"})
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    run, cache = tmp_path / "run", tmp_path / "cache"
    assert main(["train", str(manifest), "--modality", "xray", "--arch", "small-cnn", "--input-size", "32",
                 "--freeze-epochs", "1", "--epochs", "0", "--folds", "2", "--test-fraction", "0.34",
                 "--feature-cache", str(cache), "--out", str(run)]) == 0
    assert main(["xray-shortcuts", str(manifest), "--run", str(run), "--feature-cache", str(cache)]) == 0
    doc = json.loads((run / "shortcuts" / "shortcuts.json").read_text())
    held = json.loads((run / "split.json").read_text())["holdout"]
    assert doc["n_images"] == 18 and doc["floor_holdout"]["n"] == len(held) == 6
    assert sum(t["n"] for t in doc["final_model_holdout_per_source"].values()) == 6
    assert set(doc["leave_one_source_out"]) == {"s0", "s1"}
    assert (run / "shortcuts" / "source_confusion.png").is_file()
    # the run as a research bundle: its card names the data, the biases and the hold-out with intervals
    research = tmp_path / "research.json"
    research.write_text(json.dumps({"training_data": {"sources": {"s0": {"covid": 9}, "s1": {"healthy": 9}},
                                                      "licences": {"CC BY": 18}, "non_commercial": False,
                                                      "manifest_sha256": "0" * 64}, "known_biases": ["tiny"]}))
    bundle = tmp_path / "bundle"
    assert main(["quantize", str(run), "--calibration", str(manifest), "--out", str(bundle), "--max-slices", "6",
                 "--research", str(research)]) == 0
    card = load_card(bundle)
    assert (card.status, card.banner) == ("research", RESEARCH_BANNER)
    assert card.training_data["licences"] == {"CC BY": 18} and card.known_biases == ("tiny",)
    holdout = card.extra["validation"]["holdout"]
    assert holdout["n"] == 6
    for c in CLASSES:
        low, high = holdout["per_class"][c]["f1_95"] or (0.0, 1.0)
        assert 0 <= low <= high <= 1
    research.write_text(json.dumps({"known_biases": ["no training_data"]}))
    assert main(["quantize", str(run), "--calibration", str(manifest), "--out", str(tmp_path / "b2"),
                 "--research", str(research)]) == 2
