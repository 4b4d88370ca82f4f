"""``ctedge serve`` with a ``dicom:`` section: studies received over DICOM (C-STORE or STOW-RS) are
analysed and the results sent to PACS; /health and the history page show the sends."""

from __future__ import annotations

import time
import uuid

import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage

from edge.dicomnet.receiver import CANNOT_UNDERSTAND, SOP_CLASS_NOT_SUPPORTED
from edge.cli.serve import serve_app
from edge.engine import Engine
from edge.profile import load_profile
from tests.helpers.dicomnet import StorageSCP, free_port, phantom_study, send
from tests.helpers.server import login, write_profile

pytestmark = pytest.mark.slow  # a real serve with C-STORE, STOW-RS and a PACS, end to end

TOKEN = "stow-test-token"


def stow_body(parts: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    return body + f"--{boundary}--\r\n".encode(), f'multipart/related; type="application/dicom"; boundary={boundary}'


def wait_for_sent(client, n: int) -> dict:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        health = client.get("/health", headers={"Authorization": f"Bearer {TOKEN}"}).get_json()
        if health["dicom_send"]["sent"] >= n:
            break
        time.sleep(0.2)
    return health


def test_serve_receives_over_c_store_and_stow_analyses_and_reports_sends(tmp_path, monkeypatch):
    monkeypatch.setenv("CTEDGE_API_TOKEN", TOKEN)
    pacs = StorageSCP("PACS").start()
    port = free_port()
    path = write_profile(tmp_path, sections={
        "watcher": {"poll_seconds": 0.2, "stable_seconds": 0.5},
        "dicom": {"port": port, "inbox": str(tmp_path / "received"),
                  "destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}]}})
    app = serve_app(load_profile(path), Engine.default())
    client = app.test_client()
    try:
        study = phantom_study(tmp_path / "src", n_slices=24, size=96, seed=2)
        assert send(port, study) == [0] * len(study)
        health = wait_for_sent(client, 2)      # two jobs: the report, sent once the verdict is known, then the heatmaps
        assert health["dicom_send"] == {"pending": 0, "failing": 0, "sent": 2, "skipped": 0, "failures": []}

        second = phantom_study(tmp_path / "src2", n_slices=24, size=96, seed=6)
        sc = pydicom.dcmread(second[0])
        sc.SOPClassUID = sc.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        sc.save_as(tmp_path / "sc.dcm")
        body, content_type = stow_body([p.read_bytes() for p in second] + [(tmp_path / "sc.dcm").read_bytes(), b"junk"])
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type}
        assert client.post("/dicom-web/studies", data=body, headers={**headers, "Authorization": "Bearer x"}).status_code == 401
        assert client.post("/dicom-web/studies", data=body,
                           headers={**headers, "Content-Type": "application/dicom"}).status_code == 415
        answer = client.post("/dicom-web/studies", data=body, headers=headers)
        assert answer.status_code == 202 and answer.mimetype == "application/dicom+json"
        stored = answer.get_json()["00081199"]["Value"]
        assert len(stored) == len(second)
        reasons = [f["00081197"]["Value"][0] for f in answer.get_json()["00081198"]["Value"]]
        assert reasons == [SOP_CLASS_NOT_SUPPORTED, CANNOT_UNDERSTAND]
        health = wait_for_sent(client, 4)
    finally:
        app.extensions["ctedge"]["dicom"].stop()
        app.extensions["ctedge"]["jobs"].stop()
        pacs.stop()
    assert health["dicom_send"]["sent"] == 4
    assert [ds.Modality for ds in pacs.received].count("SR") == 2
    for ds in pacs.received:
        assert (tmp_path / "results" / "dicom" / ds.StudyInstanceUID / "result.json").is_file()
    for uid in {ds.StudyInstanceUID for ds in pacs.received}:   # each study's report reached PACS before its heatmaps
        assert [ds.Modality for ds in pacs.received if ds.StudyInstanceUID == uid][0] == "SR"
    login(client)
    assert "4 sent, 0 pending, 0 failing" in client.get("/history").get_data(as_text=True)
