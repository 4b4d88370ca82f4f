"""The shipped CT slice research bundle (edge/models/ct-slice-research) on the edge install: it loads,
runs a real sample study cut to its lungs, and every output names it a research model."""

from __future__ import annotations

import json
from pathlib import Path

from edge.card import RESEARCH_BANNER, load_card
from edge.cli import main

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "edge" / "models" / "ct-slice-research"
STUDY = REPO / "samples" / "covid-ct-md" / "COVID-19_P002"


def test_the_card_says_research_with_its_data_validation_and_biases():
    card = load_card(BUNDLE)
    assert (card.status, card.kind, card.classes) == ("research", "slice", ("covid", "non_covid"))
    assert card.banner == RESEARCH_BANNER
    assert card.preprocessing.crop == "lungs" and not card.preprocessing.mask_lungs and card.preprocessing.input_size == 224
    assert card.training_data["sources"] == {"ucsd-ct": {"covid": 278, "non_covid": 313}}
    assert any("paper" in b for b in card.known_biases)
    model = card.extra["validation"]["model"]
    low, high = model["per_class"]["covid"]["sensitivity_ci95"]
    assert low <= model["per_class"]["covid"]["sensitivity"] <= high
    assert card.extra["trained_with"]["weights_file"]["sha256"].startswith("7aad0c74")


def test_predict_on_a_real_sample_shows_the_research_banner(tmp_path, capsys):
    assert main(["predict", str(STUDY), "--model", str(BUNDLE)]) == 0
    out = capsys.readouterr().out
    assert RESEARCH_BANNER in out
    assert main(["predict", str(STUDY), "--model", str(BUNDLE), "--json", "--out", str(tmp_path / "r")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["label"] in ("covid", "non_covid") and doc["model"]["status"] == "research"
    assert doc["slices_used"] and all(s["label"] in ("covid", "non_covid") for s in doc["slices_used"])
    assert RESEARCH_BANNER in (tmp_path / "r" / "report.html").read_text()
