"""Interop with real DICOM peers: Orthanc (PACS) and dcmtk's storescu send studies to ctedge; the SR
and heatmap Secondary Captures appear in the study in Orthanc; dciodvfy finds no error in them.
Needs the Debian packages orthanc, dcmtk and dicom3tools (.ci/run installs them)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from werkzeug.serving import make_server

from edge.dicomnet.orthanc import BINARY as ORTHANC_BINARY, DICOMWEB_PLUGIN
from edge.dicomnet.results import result_objects
from edge.dicomnet.service import DicomService
from edge.engine import Engine
from edge.profile import DicomPeer, DicomSettings, load_profile
from edge.cli.serve import serve_app
from tests.helpers.dicomnet import Orthanc, dciodvfy_errors, free_port, phantom_study
from tests.helpers.paths import REPO
from tests.helpers.profiles import write_profile as device_profile
from tests.helpers.server import write_profile

MISSING = [tool for tool in (ORTHANC_BINARY, "storescu", "dciodvfy") if not shutil.which(tool)]
pytestmark = [pytest.mark.external,   # a real Orthanc, dcmtk's storescu, dicom3tools' dciodvfy
              pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)} "
                                                       "(apt-get install orthanc dcmtk dicom3tools)")]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.default()


def stored(inbox: Path) -> list[Path]:
    return sorted(p for p in inbox.rglob("*.dcm") if ".receiving" not in p.parts)


def storescu(port: int, files: list[Path], *options: str, calling: str = "STORESCU") -> subprocess.CompletedProcess:
    return subprocess.run(["storescu", *options, "-aet", calling, "-aec", "CTEDGE", "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=120)


def test_ctedge_watch_receives_from_storescu_and_results_appear_in_orthanc(tmp_path):
    """The real command, as in service: `ctedge watch INBOX --out OUTBOX --config PROFILE`."""
    study = phantom_study(tmp_path / "src", ground_glass=3)
    port = free_port()
    with Orthanc(tmp_path / "orthanc", port) as orthanc:
        profile = device_profile(tmp_path / "pacs.yaml", model={"threads": 1}, watcher={"poll_seconds": 0.5, "stable_seconds": 1},
                                 dicom={"port": port, "allowed_callers": ["STORESCU", "ORTHANC"],
                                        "destinations": [{"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}]})
        (tmp_path / "inbox").mkdir()
        proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "watch", str(tmp_path / "inbox"), "--out",
                                 str(tmp_path / "outbox"), "--config", str(profile)], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while (sent := storescu(port, study)).returncode != 0 and time.monotonic() < deadline:
                time.sleep(0.5)  # until the receiver listens
            assert sent.returncode == 0, sent.stderr
            assert storescu(port, study, calling="STRANGER").returncode != 0  # not an allowed caller
            study_uid = pydicom.dcmread(study[0]).StudyInstanceUID
            while orthanc.modalities(study_uid) != ["OT", "SR"] and time.monotonic() < deadline + 60:
                time.sleep(0.5)
        finally:
            proc.terminate()
            _, errors = proc.communicate(timeout=30)
        assert orthanc.modalities(study_uid) == ["OT", "SR"], errors  # the CT stays on ctedge
        assert len(stored(tmp_path / "inbox")) == len(study)
        for series in orthanc.get(f"/studies/{orthanc.study_id(study_uid)}/series"):
            for instance in series["Instances"]:
                path = tmp_path / f"{instance}.dcm"
                path.write_bytes(orthanc.request("GET", f"/instances/{instance}/file"))
                assert dciodvfy_errors(path) == []
                assert pydicom.dcmread(path).StudyInstanceUID == study_uid


def test_orthanc_pushes_a_study_to_ctedge(tmp_path):
    study = phantom_study(tmp_path / "src", n_slices=12, size=64, seed=8)
    port = free_port()
    with Orthanc(tmp_path / "orthanc", port) as orthanc:
        for f in study:
            orthanc.post("/instances", f.read_bytes())
        settings = DicomSettings(port=port, allowed_callers=(DicomPeer("ORTHANC", "127.0.0.1"),))
        service = DicomService(settings, tmp_path / "inbox", tmp_path / "outbox", ("ct",))
        service.start()
        try:
            assert orthanc.post("/modalities/ctedge/echo", {}) == {}
            study_id = orthanc.study_id(pydicom.dcmread(study[0]).StudyInstanceUID)
            answer = orthanc.post("/modalities/ctedge/store", {"Resources": [study_id], "Synchronous": True})
        finally:
            service.stop()
        assert answer["InstancesCount"] == len(study) and answer["FailedInstancesCount"] == 0
        assert len(stored(tmp_path / "inbox")) == len(study)


@pytest.mark.shared_data
def test_jpeg_lossless_study_is_stored_without_re_encoding(tmp_path, shared_data):
    study = sorted((shared_data / "Normal_normal001").glob("*.dcm"))
    port = free_port()
    service = DicomService(DicomSettings(port=port), tmp_path / "inbox", tmp_path / "outbox", ("ct",))
    service.start()
    try:
        sent = storescu(port, study, "-xs")
        assert sent.returncode == 0, sent.stderr
    finally:
        service.stop()
    received = stored(tmp_path / "inbox")
    assert len(received) == len(study)
    source = pydicom.dcmread(study[0])
    copy = pydicom.dcmread(next(p for p in received if p.stem == source.SOPInstanceUID))
    assert copy.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
    assert copy.PixelData == source.PixelData


def test_generated_objects_pass_dciodvfy(tmp_path, engine):
    phantom_study(tmp_path / "src", n_slices=30, size=96, seed=4, consolidation=2)
    engine.analyse(tmp_path / "src", tmp_path / "result")
    assert_valid(result_objects(tmp_path / "result", tmp_path / "src"), tmp_path)


def test_generated_objects_of_a_radiograph_pass_dciodvfy(tmp_path, xray_bundle):
    """pydicom-data's RG1_UNCR.dcm (a PA chest CR) read by the untrained X-ray placeholder bundle."""
    rg1 = get_testdata_file("RG1_UNCR.dcm", download=False)
    if rg1 is None:
        pytest.skip("pydicom-data's RG1_UNCR.dcm is not installed (pip install pydicom-data)")
    (tmp_path / "src").mkdir()
    shutil.copy(rg1, tmp_path / "src")
    Engine.from_bundle(xray_bundle, "float32").analyse(tmp_path / "src", tmp_path / "result")
    objects = result_objects(tmp_path / "result", tmp_path / "src")
    assert [ds.Modality for ds in objects] == ["SR", "OT"]
    assert_valid(objects, tmp_path)


def assert_valid(objects: list[pydicom.Dataset], folder: Path) -> None:
    """An SR and at least one Secondary Capture, each without a dciodvfy error once written."""
    assert len(objects) >= 2
    for n, ds in enumerate(objects):
        path = folder / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], path
        assert pydicom.dcmread(path).SOPInstanceUID == ds.SOPInstanceUID


@pytest.mark.skipif(not Path(DICOMWEB_PLUGIN).is_file(), reason="not installed: orthanc-dicomweb")
def test_orthanc_pushes_a_study_over_stow_rs(tmp_path, engine, monkeypatch):
    monkeypatch.setenv("CTEDGE_API_TOKEN", "stow-token")
    study = phantom_study(tmp_path / "src", n_slices=12, size=64, seed=9)
    path = write_profile(tmp_path, sections={"dicom": {"port": free_port(), "inbox": str(tmp_path / "received")}})
    app = serve_app(load_profile(path), engine)
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    servers = {"ctedge": {"Url": f"http://127.0.0.1:{http.server_port}/dicom-web/",
                          "HttpHeaders": {"Authorization": "Bearer stow-token"}}}
    try:
        with Orthanc(tmp_path / "orthanc", 1, dicomweb=servers) as orthanc:
            for f in study:
                orthanc.post("/instances", f.read_bytes())
            study_id = orthanc.study_id(pydicom.dcmread(study[0]).StudyInstanceUID)
            orthanc.post("/dicom-web/servers/ctedge/stow", {"Resources": [study_id], "Synchronous": True})
    finally:
        http.shutdown()
        app.extensions["ctedge"]["dicom"].stop()
        app.extensions["ctedge"]["jobs"].stop()
    assert len(stored(tmp_path / "received")) == len(study)
