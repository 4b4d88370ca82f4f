"""The result document has one loader: documents written before X-ray support (no ``modality``)
are CT studies, wherever they are read back (server store, result pages, DICOM SR, summary)."""

from __future__ import annotations

import json

import pytest

from edge.cli.predict import summary
from edge.engine import Engine
from edge.infer import PlaceholderClassifier
from edge.phantom import make_phantom, write_dicom_series
from edge.report import terms_of
from edge.result import RESULT_FILE, load_result, modality_of
from edge.server.jobs import StudyStore


@pytest.fixture(scope="module")
def older_doc(tmp_path_factory) -> dict:
    """A real document of a CT study, as an older ctedge wrote it: without ``modality``."""
    study = tmp_path_factory.mktemp("study")
    write_dicom_series(make_phantom(n_slices=8, size=64), study)
    doc = Engine(PlaceholderClassifier()).run(study).to_dict()
    assert doc.pop("modality") == "ct"
    return doc


def test_an_older_document_is_loaded_as_ct(tmp_path, older_doc):
    (tmp_path / RESULT_FILE).write_text(json.dumps(older_doc))
    loaded = load_result(tmp_path)
    assert loaded["modality"] == "ct" and modality_of(older_doc) == "ct"
    assert {k: v for k, v in loaded.items() if k != "modality"} == older_doc
    assert terms_of(older_doc).name == "CT"
    assert "Slices: 8 read" in summary(older_doc)


def test_the_server_store_reads_through_the_loader(tmp_path, older_doc):
    store = StudyStore(tmp_path / "results")
    study_id = store.create()
    (store.folder(study_id) / RESULT_FILE).write_text(json.dumps(older_doc))
    assert store.result(study_id)["modality"] == "ct"


def test_a_result_file_that_is_not_an_object_is_refused(tmp_path):
    (tmp_path / RESULT_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a JSON object"):
        load_result(tmp_path)
