"""A research model (trained on public data) says so wherever the model is named: its banner, what it
was trained on and its known biases (edge/card.py status ``research``)."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from edge.card import RESEARCH_BANNER
from edge.cli import main
from edge.dicomnet.results import structured_report
from edge.engine import Engine
from edge.profile import load_profile
from edge.server import create_app
from tests.helpers.bundles import make_image_bundle
from tests.helpers.dicomnet import sr_by_meaning
from tests.helpers.paths import RG1
from tests.helpers.server import AUTH, TOKEN, login, wait_done
from tests.helpers.server import write_profile as server_profile

TRAINING_DATA = {"sources": {"hannover": {"covid": 240}, "kermany": {"other_pneumonia": 300, "healthy": 200}},
                 "licences": {"CC BY 3.0": 240, "unstated": 500}, "non_commercial": True, "manifest_sha256": "ab" * 32}
SUMMARY = ("740 images from 2 sources (hannover: covid 240; kermany: other_pneumonia 300, healthy 200); "
           "licences: CC BY 3.0 (240), unstated (500); includes images under non-commercial terms")
BIASES = ["The healthy radiographs are pediatric.", "COVID-19 films are portable ICU films."]


@pytest.fixture(scope="module")
def research_bundle(tmp_path_factory) -> Path:
    bundle = make_image_bundle(tmp_path_factory.mktemp("research") / "bundle")
    card = bundle / "model.json"
    doc = json.loads(card.read_text())
    doc |= {"status": "research", "note": "Research fixture.", "training_data": TRAINING_DATA, "known_biases": BIASES}
    card.write_text(json.dumps(doc))
    return bundle


def test_predict_text_json_and_report_carry_the_research_banner(research_bundle, tmp_path, capsys):
    assert main(["predict", str(RG1), "--model", str(research_bundle), "--variant", "float32"]) == 0
    assert capsys.readouterr().out.startswith(f"*** {RESEARCH_BANNER} ***")
    out = tmp_path / "out"
    assert main(["predict", str(RG1), "--model", str(research_bundle), "--json", "--out", str(out)]) == 0
    model = json.loads(capsys.readouterr().out)["model"]
    assert (model["status"], model["banner"], model["demonstration"], model["placeholder"]) == \
        ("research", RESEARCH_BANNER, True, False)
    assert model["training_data"] == TRAINING_DATA and model["training_summary"] == SUMMARY
    assert model["known_biases"] == BIASES
    report = (out / "report.html").read_text()
    assert f'<p class="banner">{RESEARCH_BANNER}. Research fixture.' in report
    assert f'id="training-data">{SUMMARY}<' in report and all(f"<li>{b}</li>" in report for b in BIASES)
    sr = structured_report(json.loads((out / "result.json").read_text()), [pydicom.dcmread(RG1)])
    items = sr_by_meaning(sr)
    assert items["Model status"].TextValue == "research"
    assert items["Comment"].TextValue == f"{RESEARCH_BANNER}. Research fixture. Trained on: {SUMMARY}."


def test_the_web_pages_and_api_carry_the_research_banner(research_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("CTEDGE_API_TOKEN", TOKEN)
    app = create_app(load_profile(server_profile(tmp_path, max_upload_mb=16)), Engine.from_bundle(research_bundle, "float32"))
    try:
        client = app.test_client()
        study_id = client.post("/api/v1/studies", data={"files": [(RG1.open("rb"), RG1.name)]}, headers=AUTH).get_json()["id"]
        state = wait_done(client, study_id)
        assert state["status"] == "done" and state["banner"] == RESEARCH_BANNER and state["demonstration"] is True
        model = client.get("/api/v1/model", headers=AUTH).get_json()["by_modality"]["xray"]
        assert (model["status"], model["banner"], model["training_summary"], model["known_biases"]) == \
            ("research", RESEARCH_BANNER, SUMMARY, BIASES)
        login(client)
        assert f"{RESEARCH_BANNER}. Research fixture." in client.get("/").get_data(as_text=True)
        page = client.get(f"/studies/{study_id}").get_data(as_text=True)
        assert f'id="result-banner">{RESEARCH_BANNER}: this result has no clinical validity' in page
        assert f'id="model-training-data">{SUMMARY}<' in page and all(f"<li>{b}</li>" in page for b in BIASES)
        report = client.get(f"/studies/{study_id}/report.html").get_data(as_text=True)
        assert RESEARCH_BANNER in report and SUMMARY in report
        assert f'<small class="result-banner">{RESEARCH_BANNER}</small>' in client.get("/history").get_data(as_text=True)
    finally:
        app.extensions["ctedge"]["jobs"].stop()

