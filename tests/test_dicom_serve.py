"""``ctedge serve`` with a ``dicom:`` section: studies received over DICOM are analysed and the
results sent to PACS; /health and the history page show the sends."""

from __future__ import annotations

import re
import time

import yaml

from edge.engine import Engine
from edge.profile import load_profile
from edge.server import create_app
from tests.dicom_support import StorageSCP, free_port, phantom_study, send
from tests.server_support import PASSWORD, USER, write_profile


def test_serve_receives_analyses_and_reports_sends(tmp_path):
    pacs = StorageSCP("PACS").start()
    port = free_port()
    path = write_profile(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["watcher"] = {"poll_seconds": 0.2, "stable_seconds": 0.5}
    doc["dicom"] = {"port": port, "inbox": str(tmp_path / "received"),
                    "destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}]}
    path.write_text(yaml.safe_dump(doc))
    app = create_app(load_profile(path), Engine.default())
    client = app.test_client()
    try:
        study = phantom_study(tmp_path / "src", n_slices=24, size=96, seed=2)
        assert send(port, study) == [0] * len(study)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            health = client.get("/health").get_json()
            if health["dicom_send"]["sent"]:
                break
            time.sleep(0.2)
    finally:
        app.extensions["ctedge"]["dicom"].stop()
        app.extensions["ctedge"]["jobs"].stop()
        pacs.stop()
    assert health["dicom_send"] == {"pending": 0, "failing": 0, "sent": 1, "failures": []}
    assert pacs.received[0].Modality == "SR"
    assert (tmp_path / "results" / "dicom" / pacs.received[0].StudyInstanceUID / "result.json").is_file()
    login = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', login).group(1)
    assert client.post("/login", data={"user": USER, "password": PASSWORD, "csrf_token": token}).status_code == 303
    assert "1 sent, 0 pending, 0 failing" in client.get("/history").get_data(as_text=True)
