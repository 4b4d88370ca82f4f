"""Decoding while receiving (issue 27): the DICOM receiver hands each CT slice to
``edge.ingest.parallel.PREFETCH`` as it is stored; the analysis of the complete study takes those
slices instead of decoding them again, and gets exactly what decoding would give."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from edge.dicomnet.orthanc import BINARY as ORTHANC
from edge.dicomnet.service import DicomService
from edge.engine import Engine, NoModelForModalityError
from edge.errors import CorruptFileError, StudyError
from edge.ingest.dicom_files import read_header
from edge.ingest.parallel import HEADER_BYTES, PREFETCH, Prefetch, decode_path, decode_series, stop_workers
from edge.phantom import make_phantom, write_dicom_series
from edge.profile import DicomSettings
from tests.helpers.dicomnet import phantom_study, send
from tests.helpers.paths import REPO

SIZE = 64


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.default()


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """The decoding worker processes running, as in the services: headers are then parsed ahead too."""
    files = write_dicom_series(make_phantom(n_slices=2, size=64, seed=1), tmp_path_factory.mktemp("pool"))
    decode_series(files, (64, 64), mode="processes")
    yield
    stop_workers()


@pytest.fixture
def slices(tmp_path):
    return write_dicom_series(make_phantom(n_slices=4, size=96, seed=2), tmp_path / "s", transfer_syntax=RLELossless)


def replace(path, **values) -> None:
    """Rewrite a slice with other ``values`` as the receiver replaces an instance: a new file renamed over it
    (a file rewritten in place within the file system's timestamp resolution keeps size, inode and mtime)."""
    ds = pydicom.dcmread(path)
    for key, value in values.items():
        setattr(ds, key, value)
    ds.save_as(path.with_suffix(".new"))
    os.replace(path.with_suffix(".new"), path)


def test_a_slice_decoded_ahead_is_what_decoding_gives_taken_once_and_only_while_unchanged(slices, pool):
    ahead = Prefetch()
    for path in slices:
        assert ahead.submit(path, (96, 96), SIZE)
    assert not ahead.submit(slices[0], (96, 96), SIZE)          # already there
    assert np.array_equal(ahead.take(slices[0], (96, 96), SIZE), decode_path(slices[0], (96, 96), SIZE))
    assert ahead.take(slices[0], (96, 96), SIZE) is None        # taken once
    assert ahead.take(slices[1], (96, 96), SIZE * 2) is None     # asked at another size: not this one
    replace(slices[2], InstanceNumber=99)                        # the file changed after it was handed over
    assert ahead.take(slices[2], (96, 96), SIZE) is None
    ahead.clear()
    assert len(ahead) == 0 and ahead.take(slices[3], (96, 96), SIZE) is None


def test_a_header_parsed_ahead_is_what_reading_gives_and_a_changed_file_is_read_again(slices, pool):
    ahead = Prefetch()
    for path in slices:
        ahead.submit(path, (96, 96), SIZE)
    assert ahead.header(slices[0]) == read_header(slices[0])
    replace(slices[1], InstanceNumber=99)
    assert ahead.header(slices[1]).InstanceNumber == 99          # read again: the file changed
    slices[2].write_bytes(slices[2].read_bytes()[:2000])          # truncated after it was handed over
    with pytest.raises(StudyError):
        ahead.header(slices[2])
    ahead.clear()


def test_decoding_ahead_holds_at_most_its_budget_and_drops_what_nobody_takes(slices, pool):
    ahead = Prefetch(max_bytes=SIZE * SIZE * 4 + HEADER_BYTES)
    assert [ahead.submit(p, (96, 96), SIZE) for p in slices[:3]] == [True, False, False]   # slice + header: over budget
    assert len(ahead) == 2
    stale = Prefetch(ttl_s=0.0)
    stale.submit(slices[0], (96, 96), SIZE)
    stale.submit(slices[1], (96, 96), SIZE)                      # expires the first: nobody took it in time
    assert len(stale) == 2
    assert stale.take(slices[1], (96, 96), SIZE) is None and len(stale) == 0   # and at a read
    ahead.clear()
    stale.clear()


def test_received_slices_are_decoded_as_they_arrive_and_the_verdict_is_unchanged(tmp_path, engine, pool):
    study = phantom_study(tmp_path / "phantom", ground_glass=3)
    PREFETCH.clear()
    service = DicomService(DicomSettings(port=0), tmp_path / "inbox", tmp_path / "out", ("ct",))
    service.start(send=False, decode_for=engine)
    try:
        assert send(service.receiver.port, study) == [0] * len(study)
        assert len(PREFETCH) == 2 * len(study)                   # every header and slice handed over as it was stored
        received = tmp_path / "inbox" / pydicom.dcmread(study[0]).StudyInstanceUID
        streamed = engine.run(received)
        assert len(PREFETCH) == 0                                # the analysis took them all
    finally:
        service.stop()
    copy = shutil.copytree(received, tmp_path / "copy")          # the same files, never handed over
    decoded = engine.run(copy)
    assert np.array_equal(streamed.images, decoded.images)
    assert streamed.verdict.probabilities == decoded.verdict.probabilities


@pytest.mark.external
def test_bench_dicom_reports_the_time_to_the_sr_with_and_without_decoding_ahead(tmp_path):
    if not (shutil.which("storescu") and shutil.which(ORTHANC)):
        pytest.skip("dcmtk and orthanc are not installed")
    phantom_study(tmp_path / "phantom", n_slices=30, ground_glass=3)
    done = subprocess.run([sys.executable, "-m", "edge.cli", "bench-dicom", str(tmp_path / "phantom"), "--runs", "2",
                           "--json"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(done.stdout)
    ahead, not_ahead = doc["decoded_ahead"], doc["not_decoded_ahead"]
    assert (ahead["runs"], not_ahead["runs"]) == (1, 1)
    assert doc["last_instance_to_sr_in_orthanc_seconds"] == ahead["seconds"]
    for part in (ahead, not_ahead):
        # the SR leaves as soon as the verdict is known: before the explanation and the commit end the analysis
        assert part["seconds"] == pytest.approx(part["verdict_seconds"] + part["sr_made_and_sent_seconds"], abs=0.002)
        assert 0 < part["verdict_seconds"] < part["analysis_seconds"] <= part["heatmaps_in_orthanc_seconds"]
        assert part["read_ms"] > 0 and part["explain_ms"] > 0 and part["heatmaps_in_orthanc_seconds"] >= part["seconds"]
    assert doc["instances"] == 30 and len(doc["load_average"]) == 3


def test_study_errors_survive_the_way_back_from_a_worker_process():
    for error in (CorruptFileError("IM0001.dcm", "truncated"), NoModelForModalityError("a.dcm", "no X-ray model", "xray")):
        back = pickle.loads(pickle.dumps(error))
        assert (type(back), str(back), back.path, back.problem) == (type(error), str(error), error.path, error.problem)
    assert back.modality == "xray"


def test_without_worker_processes_nothing_is_done_ahead(slices, pool):
    stop_workers()
    ahead = Prefetch()
    assert not ahead.submit(slices[0], (96, 96), SIZE) and len(ahead) == 0
    assert ahead.header(slices[0]) == read_header(slices[0])
    decode_series(slices, (96, 96), mode="processes")          # the pool again, for the tests after this one
