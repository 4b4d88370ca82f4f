"""The result document: real ``ctedge predict --json`` output conforms to docs/result.schema.json,
which is generated from the TypedDicts of edge/result.py; it has one loader, where documents
written before ``schema_version`` (version 0) and before X-ray support (no ``modality``: CT) are
read, wherever they are read back (server store, result pages, DICOM SR, summary)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from edge.cli import main
from edge.cli.predict import summary
from edge.engine import Engine
from edge.infer import PlaceholderClassifier
from edge.phantom import make_phantom, write_dicom_series
from edge.report import terms_of
from edge.result import RESULT_FILE, SCHEMA_VERSION, load_result
from edge.server.jobs import StudyStore
from tests.helpers.paths import REPO, RG1, SAMPLES
from tests.helpers.schema import RESULT_SCHEMA, result_schema, schema_problems


def test_the_schema_file_is_generated_from_the_typeddicts(tmp_path):
    out = tmp_path / "schema.json"
    subprocess.run([sys.executable, str(REPO / "docs" / "make_result_schema.py"), "--out", str(out)],
                   check=True, capture_output=True)
    assert out.read_text() == RESULT_SCHEMA.read_text(), \
        "docs/result.schema.json is stale: run .venv/bin/python docs/make_result_schema.py"


def predict_json(capsys, *argv) -> dict:
    assert main(["predict", "--json", *map(str, argv)]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("study", [SAMPLES / "CAP_cap002", RG1], ids=["ct-sample", "xray-rg1"])
def test_predict_json_conforms_to_the_schema(capsys, tmp_path, study):
    """The bundled CT demonstration model on a real sample study and the X-ray model on a real
    radiograph, without and with the result folder (which adds heatmaps and slice images)."""
    schema = result_schema()
    bare = predict_json(capsys, study)
    full = predict_json(capsys, study, "--out", tmp_path / "out")
    assert "heatmaps" not in bare and full["heatmaps"]
    for doc in (bare, full, load_result(tmp_path / "out")):
        assert schema_problems(doc, schema) == []
        assert doc["schema_version"] == SCHEMA_VERSION
    assert bare["modality"] == ("xray" if study == RG1 else "ct")


def test_the_check_finds_what_breaks_the_schema(capsys):
    doc = predict_json(capsys, RG1)
    broken = copy.deepcopy(doc)
    del broken["label"]
    broken["groups"] = [{"index": "0"}]
    broken["input"]["hu_exact"] = 1
    broken["model"]["threads"] = True
    broken["not_declared"] = 1
    problems = schema_problems(broken, result_schema())
    assert "$: missing required key 'label'" in problems
    assert "$: key 'not_declared' is not in the schema" in problems
    assert any(p.startswith("$.groups[0].index: str") for p in problems)
    assert "$.groups[0]: missing required key 'slice_range'" in problems
    assert any(p.startswith("$.input.hu_exact: int") for p in problems)
    assert any(p.startswith("$.model.threads: bool") for p in problems)


@pytest.fixture(scope="module")
def older_doc(tmp_path_factory) -> dict:
    """A real document of a CT study, as an older ctedge wrote it: without ``modality`` and
    ``schema_version``."""
    study = tmp_path_factory.mktemp("study")
    write_dicom_series(make_phantom(n_slices=8, size=64), study)
    doc = dict(Engine(PlaceholderClassifier()).run(study).to_dict())
    assert doc.pop("modality") == "ct" and doc.pop("schema_version") == SCHEMA_VERSION
    return doc


def test_an_older_document_is_loaded_as_ct_version_0(tmp_path, older_doc):
    (tmp_path / RESULT_FILE).write_text(json.dumps(older_doc))
    loaded = load_result(tmp_path)
    assert loaded["modality"] == "ct" and loaded["schema_version"] == 0
    assert {k: v for k, v in loaded.items() if k not in ("modality", "schema_version")} == older_doc
    assert terms_of(loaded).name == "CT"
    assert "Slices: 8 read" in summary(loaded)


def test_the_server_store_reads_through_the_loader(tmp_path, older_doc):
    store = StudyStore(tmp_path / "results")
    study_id = store.create()
    (store.folder(study_id) / RESULT_FILE).write_text(json.dumps(older_doc))
    assert store.result(study_id)["modality"] == "ct"


def test_a_result_file_that_is_not_an_object_is_refused(tmp_path):
    (tmp_path / RESULT_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a JSON object"):
        load_result(tmp_path)
