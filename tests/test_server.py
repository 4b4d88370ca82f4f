"""The web form and JSON API through Flask's test client: auth, uploads, queue, results, OpenAPI."""

from __future__ import annotations

import dataclasses
import html
import io
import json
import logging
import re
import shutil
import socket
import stat
import threading
import time
import zipfile
from datetime import datetime
from pathlib import Path

import pydicom
import pytest
import yaml

from edge import CLASSES
from edge.card import DEMONSTRATION_BANNER
from edge.cli import main
from edge.cli.serve import serve_app
from edge.engine import Device, Engine
from edge.errors import UserError
from edge.infer import TFLiteClassifier
from edge.pipeline import run_study
from edge.profile import load_profile
from edge.server import create_app
from edge.server.auth import ServerConfigError, check_login, read_users
from edge.server.jobs import StudyStore
from tests.helpers.dicomnet import free_port
from tests.helpers.paths import REPO, SAMPLES
from tests.helpers.profiles import write_profile as device_profile
from tests.helpers.server import AUTH, PASSWORD, TOKEN, USER, csrf, login, phantom_study, wait_done, write_profile

P002 = SAMPLES / "COVID-19_P002"


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    """One engine (the bundled demonstration model) shared by every app of this module."""
    return Device.from_profile(load_profile(write_profile(tmp_path_factory.mktemp("engine"))))


@pytest.fixture
def profile_path(tmp_path: Path) -> Path:
    return write_profile(tmp_path)


@pytest.fixture
def app(profile_path: Path, engine: Engine, monkeypatch):
    monkeypatch.setenv("CTEDGE_API_TOKEN", TOKEN)
    app = create_app(load_profile(profile_path), engine)
    yield app
    app.extensions["ctedge"]["jobs"].stop()


@pytest.fixture
def client(app):
    return app.test_client()


def dicom_files(folder: Path = P002) -> list[tuple[io.BytesIO, str]]:
    return [(io.BytesIO(f.read_bytes()), f.name) for f in sorted(folder.glob("*.dcm"))]


def study_folders(app) -> list[str]:
    root = app.extensions["ctedge"]["store"].root
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


# --- settings and start-up -------------------------------------------------------------------------

def test_profile_server_keys_are_parsed_and_relative_to_the_profile(tmp_path):
    path = device_profile(tmp_path / "p.yaml", server={"users_file": "users.txt", "cookie_secure": True, "secret_key_env": "K"})
    server = load_profile(path).server
    assert server.users_file == tmp_path / "users.txt" and server.cookie_secure and server.secret_key_env == "K"
    path.write_text(path.read_text().replace("cookie_secure: true", "cookie_secure: 'yes'"))
    with pytest.raises(UserError, match="server.cookie_secure must be bool"):
        load_profile(path)


def test_login_can_be_disabled_only_on_loopback(profile_path, engine, capsys):
    profile = load_profile(profile_path)
    open_profile = dataclasses.replace(profile, server=dataclasses.replace(profile.server, login_required=False,
                                                                           host="0.0.0.0"))
    with pytest.raises(ServerConfigError, match="login may only be disabled on a loopback address"):
        create_app(open_profile, engine, start_workers=False)
    profile_path.write_text(profile_path.read_text().replace("results_dir:", "login_required: false\n  results_dir:"))
    assert main(["serve", "--config", str(profile_path), "--host", "0.0.0.0"]) == 2
    assert "0.0.0.0: login may only be disabled on a loopback address" in capsys.readouterr().err


def test_refuses_to_start_without_users(tmp_path, engine):
    profile = load_profile(write_profile(tmp_path))
    (tmp_path / "results" / "users.txt").unlink()
    with pytest.raises(ServerConfigError, match=r"no users to log in with: add one with `ctedge serve .* --add-user"):
        create_app(profile, engine, start_workers=False)


def test_the_app_starts_no_dicom_service_ctedge_serve_does(tmp_path, engine, monkeypatch):
    """``create_app`` only takes a DICOM service: given none, a profile's ``dicom:`` section binds no
    port and serves no STOW-RS; ``serve_app`` (the serve command's wiring) builds and starts it."""
    monkeypatch.setenv("CTEDGE_API_TOKEN", TOKEN)
    port = free_port()
    profile = load_profile(write_profile(tmp_path, sections={
        "watcher": {"poll_seconds": 0.2}, "dicom": {"port": port, "inbox": str(tmp_path / "received")}}))
    app = create_app(profile, engine)
    app.extensions["ctedge"]["jobs"].stop()
    assert "dicom" not in app.extensions["ctedge"]
    assert app.test_client().post("/dicom-web/studies", headers=AUTH).status_code == 404
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    served = serve_app(profile, engine)
    try:
        dicom = served.extensions["ctedge"]["dicom"]
        assert dicom.inbox == tmp_path / "received" and dicom.receiver.port == port
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert served.test_client().post("/dicom-web/studies").status_code == 401     # STOW-RS, token required
    finally:
        served.extensions["ctedge"]["dicom"].stop()
        served.extensions["ctedge"]["jobs"].stop()


def test_add_user_stores_a_salted_hash(profile_path, monkeypatch, capsys):
    users = profile_path.parent / "results" / "users.txt"
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-enough\n"))
    assert main(["serve", "--config", str(profile_path), "--add-user", "dr-who"]) == 0
    assert "user dr-who saved" in capsys.readouterr().out
    hashed = read_users(users)["dr-who"]
    assert hashed.startswith("scrypt:") and "s3cret" not in users.read_text()
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    assert check_login(users, "dr-who", "s3cret-enough") and not check_login(users, "dr-who", "wrong-password")
    assert not check_login(users, "nobody", "s3cret-enough")
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["serve", "--config", str(profile_path), "--add-user", "dr-who"]) == 2
    assert "at least 8 characters" in capsys.readouterr().err


def test_secret_key_is_generated_once_and_kept_private(app, profile_path, engine):
    key_file = profile_path.parent / "results" / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    again = create_app(load_profile(profile_path), engine, start_workers=False)
    assert again.config["SECRET_KEY"] == app.config["SECRET_KEY"] == key_file.read_text()
    assert len(app.config["SECRET_KEY"]) == 64


# --- login, CSRF, cookies ---------------------------------------------------------------------------

def test_pages_need_a_login(client):
    for path in ("/", "/history", "/studies/20250101-000000-00000000"):
        response = client.get(path)
        assert response.status_code == 302 and "/login?next=" in response.headers["Location"], path


def test_login_with_csrf_and_secure_cookie(client):
    token = csrf(client)
    assert client.post("/login", data={"user": USER, "password": PASSWORD}).status_code == 400
    wrong = client.post("/login", data={"user": USER, "password": "nope", "csrf_token": token})
    assert wrong.status_code == 401 and "wrong user name or password" in wrong.get_data(as_text=True)
    response = client.post("/login?next=/history", data={"user": USER, "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 303 and response.headers["Location"] == "/history"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    assert client.get("/").status_code == 200


def test_login_does_not_redirect_off_site(client):
    token = csrf(client)
    response = client.post("/login?next=//evil.example/", data={"user": USER, "password": PASSWORD, "csrf_token": token})
    assert response.headers["Location"] == "/"


def test_cookie_secure_setting(profile_path, engine):
    profile = load_profile(profile_path)
    profile = dataclasses.replace(profile, server=dataclasses.replace(profile.server, cookie_secure=True))
    client = create_app(profile, engine, start_workers=False).test_client()
    token = csrf(client)
    response = client.post("/login", data={"user": USER, "password": PASSWORD, "csrf_token": token})
    assert "Secure" in response.headers["Set-Cookie"]


def test_upload_form_needs_the_csrf_token(client, app):
    token = login(client)
    for data in ({"files": dicom_files()}, {"files": dicom_files(), "csrf_token": "forged"}):
        response = client.post("/studies", data=data)
        assert response.status_code == 400 and "CSRF token missing or wrong" in response.get_data(as_text=True)
    assert study_folders(app) == []
    assert client.post("/logout", data={"csrf_token": token}).status_code == 303
    assert client.get("/").status_code == 302


def test_security_headers(client):
    response = client.get("/login")
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "same-origin"   # keeps the Origin of same-site POSTs


# --- API token ---------------------------------------------------------------------------------------

def test_api_token(client):
    missing = client.get("/api/v1/model")
    assert missing.status_code == 401 and "missing API token" in missing.get_json()["error"]
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = client.get("/api/v1/model", headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401 and wrong.get_json()["error"] == "wrong API token"
    model = client.get("/api/v1/model", headers=AUTH).get_json()
    assert model["name"] == "cnn-bilstm-demo" and model["demonstration"] is True and model["profile"] == "test-box"
    assert client.get("/health").get_json()["status"] == "ok"
    assert client.get("/api/v1/openapi.yaml").status_code == 200


def test_api_refuses_without_a_configured_token(profile_path, engine, monkeypatch):
    monkeypatch.delenv("CTEDGE_API_TOKEN", raising=False)
    client = create_app(load_profile(profile_path), engine, start_workers=False).test_client()
    response = client.get("/api/v1/model", headers=AUTH)
    assert response.status_code == 503
    assert "no token configured (set the environment variable CTEDGE_API_TOKEN" in response.get_json()["error"]


def test_api_and_form_open_when_login_is_disabled_on_loopback(profile_path, engine, monkeypatch):
    monkeypatch.delenv("CTEDGE_API_TOKEN", raising=False)
    profile = load_profile(profile_path)
    profile = dataclasses.replace(profile, server=dataclasses.replace(profile.server, login_required=False))
    client = create_app(profile, engine, start_workers=False).test_client()
    assert client.get("/api/v1/model").status_code == 200
    assert client.get("/").status_code == 200


# --- studies through the API -------------------------------------------------------------------------

@pytest.mark.slow
def test_api_study_gives_the_predict_json(client, app):
    response = client.post("/api/v1/studies", data={"files": dicom_files()}, headers=AUTH)
    assert response.status_code == 202
    study_id = response.get_json()["id"]
    assert response.headers["Location"] == f"/api/v1/studies/{study_id}"
    state = wait_done(client, study_id)
    assert state["status"] == "done" and state["n_files"] == 10, state
    result = state["result"]
    expected = run_study(P002, app.extensions["ctedge"]["engine"].routes["ct"].classifier).to_dict()
    assert set(expected) <= set(result) and "heatmaps" in result
    assert result["label"] == expected["label"]
    assert result["model"]["demonstration"] is True
    assert sorted(s["file"] for s in result["slices_used"]) == sorted(s["file"] for s in expected["slices_used"])
    for h in result["heatmaps"]:
        png = client.get(h["url"], headers=AUTH)
        assert png.status_code == 200 and png.data[:8] == b"\x89PNG\r\n\x1a\n"
    missing = client.get(f"/api/v1/studies/{study_id}/heatmaps/999.png", headers=AUTH)
    assert missing.status_code == 404 and "has no heatmaps/999.png" in missing.get_json()["error"]


@pytest.mark.slow
def test_a_result_does_not_depend_on_the_studies_before_it(client):
    for study in (SAMPLES / "CAP_cap002", P002):
        response = client.post("/api/v1/studies", data={"files": dicom_files(study)}, headers=AUTH)
        state = wait_done(client, response.get_json()["id"])
    fresh = run_study(P002, TFLiteClassifier(REPO / "edge" / "models" / "demo", "int8", 1)).to_dict()
    assert state["result"]["probabilities"] == fresh["probabilities"]


@pytest.mark.parametrize("raw", [False, True], ids=["multipart", "application-zip"])
def test_api_accepts_a_zip(client, tmp_path, raw):
    phantom_study(tmp_path / "study")
    archive = zip_bytes({f"study/{p.name}": p.read_bytes() for p in (tmp_path / "study").iterdir()})
    if raw:
        response = client.post("/api/v1/studies", data=archive, content_type="application/zip", headers=AUTH)
    else:
        response = client.post("/api/v1/studies", data={"files": (io.BytesIO(archive), "study.zip")}, headers=AUTH)
    assert response.status_code == 202, response.get_json()
    state = wait_done(client, response.get_json()["id"])
    assert state["status"] == "done" and state["n_files"] == 12 and state["result"]["n_slices_read"] == 12


def _big_zip() -> bytes:
    return zip_bytes({"bomb.dcm": bytes(5_000_000)})


@pytest.mark.parametrize("files, status, message", [
    ([], 400, "upload: no files"),
    ([(io.BytesIO(b"hello, not a scan"), "notes.txt")], 415,
     "notes.txt: none of the 1 uploaded files is DICOM or an image slice (not a DICOM file"),
    ([(io.BytesIO(b"PK\x03\x04 truncated"), "study.zip")], 400, "study.zip: not a valid zip archive"),
    ([(io.BytesIO(zip_bytes({"../../etc/evil.dcm": b"x"})), "slip.zip")], 400,
     "slip.zip: member '../../etc/evil.dcm' points outside the archive root"),
    ([(io.BytesIO(_big_zip()), "bomb.zip")], 400, "bomb.zip: member 'bomb.dcm' has a compression ratio above 200"),
    ([(io.BytesIO(zip_bytes({})), "empty.zip")], 400, "no files found in the study"),
], ids=["no-files", "not-dicom", "corrupt-zip", "zip-slip", "zip-bomb", "empty-zip"])
def test_bad_uploads_are_refused_with_a_message(client, app, files, status, message):
    response = client.post("/api/v1/studies", data={"files": files}, headers=AUTH)
    assert response.status_code == status
    assert message in response.get_json()["error"]
    assert str(app.extensions["ctedge"]["store"].root) not in response.get_json()["error"]
    assert study_folders(app) == []


def test_oversize_upload_is_a_clean_413(client, app):
    big = (io.BytesIO(bytes(5 * 2**20)), "huge.dcm")
    response = client.post("/api/v1/studies", data={"files": [big]}, headers=AUTH)
    assert response.status_code == 413
    assert response.get_json()["error"] == "the upload is larger than the limit of 4 MB (server.max_upload_mb)"
    login_token = login(client)
    page = client.post("/studies", data={"files": [(io.BytesIO(bytes(5 * 2**20)), "huge.dcm")], "csrf_token": login_token})
    assert page.status_code == 413 and "larger than the limit of 4 MB" in page.get_data(as_text=True)
    assert study_folders(app) == []


def test_a_study_that_fails_names_the_file(client, tmp_path):
    one = phantom_study(tmp_path / "one", n_slices=1)
    response = client.post("/api/v1/studies", data={"files": dicom_files(one[0].parent)}, headers=AUTH)
    state = wait_done(client, response.get_json()["id"])
    assert state["status"] == "failed"
    assert "IM0001.dcm" in state["error"] and str(tmp_path) not in state["error"] and "upload/" not in state["error"]
    login(client)
    page = client.get(f"/studies/{state['id']}").get_data(as_text=True)
    assert 'id="error"' in page and "IM0001.dcm" in page


def test_unknown_studies_are_404(client):
    for path in ("/api/v1/studies/20250101-000000-00000000", "/api/v1/studies/..%2F..%2Fetc",
                 "/api/v1/studies/not-an-id/heatmaps/1.png"):
        response = client.get(path, headers=AUTH)
        assert response.status_code == 404 and "error" in response.get_json(), path
    login(client)
    assert client.get("/studies/nope").status_code == 404
    assert client.get("/studies/20250101-000000-00000000/report.html").status_code == 404


# --- queue -------------------------------------------------------------------------------------------

class BlockingEngine:
    """Holds every study until released: lets a test fill the queue deterministically."""

    def __init__(self, info):
        self.info = info
        self.release = threading.Event()
        self.started = threading.Event()

    def analyse(self, source: Path, out_dir: Path, progress=None) -> dict:
        self.started.set()
        self.release.wait(30)
        raise UserError(source / "IM0001.dcm", "rejected by the test engine")


def test_full_queue_answers_503_with_retry_after(tmp_path, engine, monkeypatch):
    monkeypatch.setenv("CTEDGE_API_TOKEN", TOKEN)
    profile = load_profile(write_profile(tmp_path, queue_size=1))
    blocking = BlockingEngine(engine.info)
    app = create_app(profile, blocking)
    client = app.test_client()
    try:
        first = client.post("/api/v1/studies", data={"files": dicom_files()}, headers=AUTH)
        assert blocking.started.wait(10)
        second = client.post("/api/v1/studies", data={"files": dicom_files()}, headers=AUTH)
        assert (first.status_code, second.status_code) == (202, 202)
        assert client.get(f"/api/v1/studies/{second.get_json()['id']}", headers=AUTH).get_json()["position"] == 0
        third = client.post("/api/v1/studies", data={"files": dicom_files()}, headers=AUTH)
        assert third.status_code == 503 and third.headers["Retry-After"] == "10"
        assert "too many studies are waiting" in third.get_json()["error"]
        assert client.get("/health", headers=AUTH).get_json()["queue"] == {"waiting": 1, "running": 1, "queue_size": 1, "workers": 1}
        assert len(study_folders(app)) == 2
    finally:
        blocking.release.set()
        app.extensions["ctedge"]["jobs"].stop()
    state = client.get(f"/api/v1/studies/{first.get_json()['id']}", headers=AUTH).get_json()
    assert state["status"] == "failed" and state["error"] == "IM0001.dcm: rejected by the test engine"


@pytest.mark.slow
def test_restart_requeues_studies_but_not_one_that_stopped_the_server_twice(profile_path, engine, monkeypatch):
    monkeypatch.setenv("CTEDGE_API_TOKEN", TOKEN)
    profile = load_profile(profile_path)
    store = StudyStore(profile.server.results_dir)
    studies = {}
    for status, attempts in (("queued", 0), ("running", 1), ("running", 2)):
        study_id = store.create()
        for f in P002.glob("*.dcm"):
            shutil.copy(f, store.upload_dir(study_id))
        store.write_status(study_id, status=status, n_files=10, attempts=attempts)
        studies[study_id] = attempts
    app = create_app(profile, engine)
    client = app.test_client()
    try:
        states = {study_id: wait_done(client, study_id) for study_id in studies}
    finally:
        app.extensions["ctedge"]["jobs"].stop()
    assert [states[i]["status"] for i in studies] == ["done", "done", "failed"]
    poison = states[list(studies)[2]]
    assert poison["error"].startswith("the server stopped 2 times while analysing this study")


# --- pages -------------------------------------------------------------------------------------------

def test_form_upload_status_result_and_history(client, app):
    token = login(client)
    form = client.get("/").get_data(as_text=True)
    assert "webkitdirectory" in form and 'id="demo-banner"' in form and "NOT FOR CLINICAL USE" in form
    assert "Choose the DICOM files of one CT study" in form and "radiograph" not in form   # a CT-only device
    assert "chest CT pneumonia triage" in form
    response = client.post("/studies", data={"files": dicom_files(), "csrf_token": token})
    assert response.status_code == 303
    study_id = response.headers["Location"].rsplit("/", 1)[1]
    state = wait_done(client, study_id)
    page = client.get(f"/studies/{study_id}").get_data(as_text=True)
    result = state["result"]
    assert f'id="verdict">{result["label"]}<' in page
    assert 'id="result-banner"' in page and "DEMONSTRATION MODEL - NOT FOR CLINICAL USE" in page
    assert result["model"]["name"] in page and result["model"]["version"] in page
    assert f'id="model-validation">{result["model"]["validation"]}<' in page
    assert page.count("<tr><td>") >= 3 + len(result["groups"])
    assert f'id="input">{result["n_slices_read"]} slices read, {result["n_slices_used"]} used' in page
    assert "Slices that drove the decision" in page and "Groups of 50 slices" in page
    assert all(w in page for w in result["warnings"])
    viewer = json.loads(html.unescape(re.search(r'data-viewer="([^"]*)"', page).group(1)))
    assert viewer["count"] == len(result["slice_png"]) and viewer["windows"] == ["lung", "mediastinum", "bone"]
    assert viewer["numbers"][0] == result["slices_dropped"][0]["instance_number"], "slices named by InstanceNumber"
    assert f'id="study-uid">{result["study"]["study_uid"]}<' in page and f'id="patient-id">{result["study"]["patient_id"]}<' in page
    assert 'id="score-name">mean group probability<' in page
    for path in ("slices/0.png", "slices/bone/0.png", "slices/mediastinum/3.png", "heatmaps/1-map.png"):
        image = client.get(f"/studies/{study_id}/{path}")
        assert image.status_code == 200 and image.mimetype == "image/png", path
    assert client.get(f"/studies/{study_id}/slices/soft/0.png").status_code == 404
    report = client.get(f"/studies/{study_id}/report.html")
    assert report.status_code == 200 and "script-src 'unsafe-inline'" in report.headers["Content-Security-Policy"]
    assert "img-src 'self' data:" in report.headers["Content-Security-Policy"] and 'src="data:image/png;base64,' in report.text
    history = client.get("/history").get_data(as_text=True)
    assert f'href="/studies/{study_id}"' in history and result["label"] in history
    assert f'<td class="patient-id">{result["study"]["patient_id"]}</td>' in history
    assert f'{result["label"]} <small class="result-banner">{DEMONSTRATION_BANNER}</small>' in history


def test_status_page_refreshes_while_waiting(app, client):
    login(client)
    store = app.extensions["ctedge"]["store"]
    study_id = store.create()
    store.write_status(study_id, status="running", started="2025-01-01T00:00:00+00:00", n_files=3)
    page = client.get(f"/studies/{study_id}").get_data(as_text=True)
    assert '<meta http-equiv="refresh" content="2">' in page and 'data-status="running"' in page
    store.write_status(study_id, stage="explaining", stage_started="2025-01-01T00:00:09+00:00")
    page = client.get(f"/studies/{study_id}").get_data(as_text=True)
    assert 'data-stage="explaining"' in page and page.count('class="stage-done"') == 3   # queued, reading, analysing
    assert "No time estimate yet" in page


def test_a_reader_marks_a_study_and_the_worklist_exports_it(client, app):
    token = login(client)
    response = client.post("/studies", data={"files": dicom_files(), "csrf_token": token})
    study_id = response.headers["Location"].rsplit("/", 1)[1]
    wait_done(client, study_id)
    assert '<strong>unread</strong>' in client.get("/history").get_data(as_text=True)
    assert client.post(f"/studies/{study_id}/review", data={"mark": "maybe", "csrf_token": token}).status_code == 400
    assert client.post(f"/studies/{study_id}/review", data={"mark": "disagree"}).status_code == 400   # no CSRF token
    response = client.post(f"/studies/{study_id}/review", data={"mark": "disagree", "csrf_token": token})
    assert response.status_code == 303
    review = app.extensions["ctedge"]["store"].status(study_id)["reviews"][USER]
    assert review["mark"] == "disagree" and datetime.fromisoformat(review["at"]).tzinfo is not None
    page = client.get(f"/studies/{study_id}").get_data(as_text=True)
    assert f"<strong>{USER}</strong>: disagree" in page
    assert f'data-study="{study_id}"' in client.get("/history").get_data(as_text=True)
    assert f'data-study="{study_id}"' not in client.get("/history?unread=1").get_data(as_text=True)
    export = client.get("/history.csv?sort=received")
    assert export.mimetype == "text/csv" and "attachment" in export.headers["Content-Disposition"]
    row = export.get_data(as_text=True).splitlines()[1].split(",")
    assert row[0] == study_id and row[-3:-1] == [USER, "disagree"]
    assert client.get("/history?sort=bogus").status_code == 400


class StagedEngine:
    """Tells the job queue each stage, taking ``seconds[stage]`` in it; writes a minimal result."""

    def __init__(self, info, seconds: dict[str, float]):
        self.info, self.seconds = info, seconds

    def analyse(self, source: Path, out_dir: Path, progress=None) -> dict:
        for stage, seconds in self.seconds.items():
            progress(stage)
            time.sleep(seconds)
        return {"label": "healthy", "model": {}}


def test_stage_times_are_recorded_and_make_the_eta(tmp_path, engine):
    from edge.server.jobs import JobQueue

    store = StudyStore(tmp_path / "results")
    queue = JobQueue(store, StagedEngine(engine.info, {"reading": 0.05, "analysing": 0.3, "explaining": 0.1}), 1, 4)
    queue.start()
    try:
        first = store.create()
        queue.submit(first, 1)
        deadline = time.monotonic() + 20
        while (store.status(first) or {}).get("status") != "done":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        queue.stop()
    stage_s = store.status(first)["stage_s"]
    assert list(stage_s) == ["reading", "analysing", "explaining"]
    assert stage_s["analysing"] >= 0.3 and stage_s["explaining"] >= 0.1 and stage_s["analysing"] > stage_s["explaining"]
    running = store.write_status(store.create(), status="running", stage="analysing", stage_started="2030-01-01T00:00:00+00:00")
    eta = queue.eta(running, now=datetime.fromisoformat("2030-01-01T00:00:00.1+00:00"))
    assert eta == {"seconds": round(stage_s["analysing"] - 0.1 + stage_s["explaining"], 1), "from": 1}
    queued = store.write_status(store.create(), status="queued")
    assert queue.eta(queued)["seconds"] == round(sum(stage_s.values()), 1)
    restarted = JobQueue(store, engine, 1, 4)
    restarted.start()      # the stage times of finished studies survive a restart
    restarted.stop()
    assert restarted.eta(queued) == {"seconds": round(sum(stage_s.values()), 1), "from": 1}


def test_form_shows_bad_upload_errors(client):
    token = login(client)
    response = client.post("/studies", data={"files": [(io.BytesIO(b"nope"), "scan.txt")], "csrf_token": token})
    assert response.status_code == 415
    assert "scan.txt: none of the 1 uploaded files is DICOM" in response.get_data(as_text=True)


def test_folder_upload_keeps_sub_folders_and_sanitises_names(tmp_path, engine, monkeypatch):
    monkeypatch.setenv("CTEDGE_API_TOKEN", TOKEN)
    app = create_app(load_profile(write_profile(tmp_path, keep_uploads_days=1)), engine)   # keep the upload to look at
    client = app.test_client()
    files = [(io.BytesIO(f.read_bytes()), f"P002/series 1/{f.name}") for f in sorted(P002.glob("*.dcm"))]
    files += [(io.BytesIO(b"junk"), "../../outside.dcm"), (io.BytesIO(b"mac"), "P002/.DS_Store"),
              (io.BytesIO(b"mac"), "P002/__MACOSX/._IM0001.dcm")]
    response = client.post("/api/v1/studies", data={"files": files}, headers=AUTH)
    study_id = response.get_json()["id"]
    upload = app.extensions["ctedge"]["store"].upload_dir(study_id)
    assert (upload / "P002" / "series_1" / "IM0001.dcm").is_file() and (upload / "outside.dcm").is_file()
    assert sorted(p.name for p in upload.rglob("*") if p.is_file() and p.parent.name != "series_1") == ["outside.dcm"]
    try:
        state = wait_done(client, study_id)
    finally:
        app.extensions["ctedge"]["jobs"].stop()
    assert state["status"] == "done" and state["n_files"] == 11


# --- privacy, OpenAPI --------------------------------------------------------------------------------

def test_logs_carry_no_patient_identifiers(client, caplog):
    caplog.set_level(logging.INFO, logger="ctedge.server")
    response = client.post("/api/v1/studies", data={"files": dicom_files()}, headers=AUTH)
    wait_done(client, response.get_json()["id"])
    client.post("/api/v1/studies", data={"files": [(io.BytesIO(b"x"), "DOE_JOHN.txt")]}, headers=AUTH)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert response.get_json()["id"] in text and "(10 files)" in text
    ds = pydicom.dcmread(next(P002.glob("*.dcm")), stop_before_pixels=True)
    for identifier in (str(ds.get("PatientName", "")), str(ds.get("PatientID", "")), "IM0001", "DOE_JOHN"):
        if identifier:
            assert identifier not in text, identifier


def test_openapi_describes_exactly_the_routes(app):
    spec = yaml.safe_load((REPO / "edge" / "server" / "openapi.yaml").read_text())
    assert spec["openapi"].startswith("3.")
    described = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops
                 if not method.startswith("x-") and "x-requires" not in ops}   # STOW-RS: only with a dicom section
    routed = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        routed |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert described == routed
    assert "post" in spec["paths"]["/dicom-web/studies"]   # described, though this app has no dicom section
    served = app.test_client().get("/api/v1/openapi.yaml")
    assert served.mimetype == "application/yaml" and yaml.safe_load(served.data) == spec
    json.dumps(spec)  # plain data, no YAML-only types


def test_the_api_reports_the_answer_of_a_known_answer_model(tmp_path, monkeypatch, constant_bundle):
    """Independent of what the bundled demonstration model says: a fixture bundle that answers
    other_pneumonia 0.8 for every study (tests/helpers/bundles.py) goes through upload, queue and API."""
    from tests.helpers.bundles import KNOWN_LABEL, KNOWN_PROBABILITIES

    monkeypatch.setenv("CTEDGE_API_TOKEN", TOKEN)
    engine = Engine.from_bundle(constant_bundle, "float32", threads=1)
    (tmp_path / "server").mkdir()
    app = create_app(load_profile(write_profile(tmp_path / "server")), engine)
    try:
        client = app.test_client()
        response = client.post("/api/v1/studies", data={"files": dicom_files()}, headers=AUTH)
        assert response.status_code == 202
        state = wait_done(client, response.get_json()["id"])
        assert state["status"] == "done", state
        result = state["result"]
        assert result["label"] == KNOWN_LABEL
        assert [result["probabilities"][c] for c in CLASSES] == pytest.approx(KNOWN_PROBABILITIES, abs=1e-5)
        assert result["model"]["name"] == "constant-test-model" and result["heatmaps"] == []
    finally:
        app.extensions["ctedge"]["jobs"].stop()
