"""The bundled X-ray research model (edge/models/xray-research) out of the box: ``ctedge predict`` on a
real PA chest radiograph (pydicom-data RG1_UNCR.dcm, CR, MONOCHROME1) without --model or --config
routes it to the research bundle and writes a verdict with its heatmap; the card says what it is."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge import CLASSES
from edge.card import load_card
from edge.cli import main
from edge.profile import DEFAULT_XRAY_BUNDLE

data = pytest.importorskip("pydicom.data")


@pytest.fixture(scope="module")
def rg1():
    try:
        return data.get_testdata_file("RG1_UNCR.dcm")
    except Exception as exc:  # noqa: BLE001 - pydicom-data not installed: nothing to read
        pytest.skip(f"pydicom-data's RG1_UNCR.dcm is not available ({exc})")


def test_the_research_card_names_its_data_and_validation():
    card = load_card(DEFAULT_XRAY_BUNDLE)
    assert (card.kind, card.modality, card.classes) == ("image", "xray", CLASSES)
    assert card.status == "research" and "research model" in card.banner.lower()
    assert {"int8"} <= set(card.variants) and card.explain
    training = card.training_data
    assert training["images"] > 1000 and len(training["sources"]) >= 4 and training["non_commercial"]
    assert sum(n for counts in training["sources"].values() for n in counts.values()) == training["images"]
    holdout = card.extra["validation"]["holdout"]
    for c in CLASSES:
        low, high = holdout["per_class"][c]["sensitivity_95"]
        assert 0 <= low <= holdout["per_class"][c]["sensitivity"] <= high <= 1
    assert card.known_biases


def test_predict_routes_a_real_radiograph_to_the_research_model(rg1, tmp_path, capsys):
    assert main(["predict", rg1, "--out", str(tmp_path / "out"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["modality"] == "xray" and doc["model"]["name"] == load_card(DEFAULT_XRAY_BUNDLE).name
    assert "research model" in doc["model"]["banner"].lower()
    assert doc["label"] in CLASSES
    assert np.isclose(sum(doc["probabilities"].values()), 1.0, atol=0.02)
    assert doc["heatmaps"] and (tmp_path / "out" / doc["heatmaps"][0]["png"]).stat().st_size > 1000


def test_without_profile_or_model_a_device_reads_ct_and_xray(tmp_path):
    from edge.engine import DEFAULT_BUNDLE
    from edge.profile import command_profile

    assert command_profile(None, None, DEFAULT_BUNDLE).model.bundles == (DEFAULT_BUNDLE, DEFAULT_XRAY_BUNDLE)
    assert command_profile(None, DEFAULT_XRAY_BUNDLE, DEFAULT_BUNDLE).model.bundles == (DEFAULT_XRAY_BUNDLE,), \
        "--model alone: that bundle only"
