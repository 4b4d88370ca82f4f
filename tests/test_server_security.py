"""Findings of the adversarial test of the server (issue 11), each reproduced and refused: open
redirect, unpack limit per upload, pixel-data bombs, full disk, owner-only storage and retention,
session revocation, Host/Origin checks, per-route body limits, login throttling, interrupted uploads."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from edge.engine import Device, Engine
from edge.errors import FileTooLargeError, NotDicomError, UserError
from edge.ingest.dicom_files import decode_hu, read_header
from edge.ingest.sources import Limits, extract_zip
from edge.ingest.study import load_study
from edge.profile import load_profile
from edge.server import create_app
from edge.server.auth import ServerConfigError, add_user
from edge.server.jobs import StudyStore
from edge.server.throttle import FREE_FAILURES
from edge.server.uploads import UploadPolicy
from tests.helpers.server import (AUTH, PASSWORD, TOKEN, USER, csrf, login, multipart, phantom_study, serve, wait_done,
                                  write_profile)
from tests.test_server import P002, dicom_files, study_folders, zip_bytes


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    return Device.from_profile(load_profile(write_profile(tmp_path_factory.mktemp("engine"))))


@pytest.fixture
def make_app(tmp_path, engine, monkeypatch):
    """``make_app(**server_settings)``: an app on a fresh results folder; its workers stop afterwards."""
    monkeypatch.setenv("CTEDGE_API_TOKEN", TOKEN)
    apps = []

    def make(engine_=None, folder: Path | None = None, **server):
        profile = load_profile(write_profile(folder or tmp_path, **server))
        app = create_app(profile, engine_ or engine)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["ctedge"]["jobs"].stop()


# --- 1. open redirect after login ---------------------------------------------------------------------

@pytest.mark.parametrize("target", ["/%09/evil.example", "//evil.example", "/%5Cevil.example", "https://evil.example",
                                    "/%0D%0A/evil.example", "%2F%2Fevil.example"])
def test_login_never_redirects_off_site(make_app, target):
    client = make_app().test_client()
    response = client.post(f"/login?next={target}", data={"user": USER, "password": PASSWORD,
                                                           "csrf_token": csrf(client)})
    assert response.status_code == 303 and response.headers["Location"] == "/"


def test_login_keeps_an_on_site_target(make_app):
    client = make_app().test_client()
    response = client.post("/login?next=/history", data={"user": USER, "password": PASSWORD,
                                                         "csrf_token": csrf(client)})
    assert response.headers["Location"] == "/history"


# --- 2. unpack limit per upload -------------------------------------------------------------------------

def test_unpack_limit_is_per_upload_not_per_zip(make_app):
    app = make_app(max_unpacked_mb=1)
    dicom = (P002 / "IM0001.dcm").read_bytes()
    half = zip_bytes({"a/IM0001.dcm": dicom, "a/pad.bin": os.urandom(400_000)})   # ~0.6 MB unpacked each
    response = app.test_client().post("/api/v1/studies", headers=AUTH, data={
        "files": [(io.BytesIO(half), "one.zip"), (io.BytesIO(half), "two.zip")]})
    assert response.status_code == 413, response.get_json()
    assert response.get_json()["error"] == ("two.zip: the upload unpacks to more than the limit of 1 MB "
                                            "(server.max_unpacked_mb)")
    assert study_folders(app) == []


# --- 3. pixel-data bomb ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def j2k_bomb(tmp_path_factory) -> Path:
    """A valid JPEG 2000 slice of about 1 KB that decodes to 8192 x 8192 pixels (128 MB)."""
    folder = tmp_path_factory.mktemp("bomb")
    path = phantom_study(folder, n_slices=2, size=64)[0]
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 8192
    ds.PixelRepresentation = 0
    ds.compress(JPEG2000Lossless, np.zeros((8192, 8192), np.uint16))
    ds.save_as(bomb := folder / "bomb.dcm")
    assert bomb.stat().st_size < 10_000
    return bomb


def test_pixel_bomb_is_refused_before_decoding(j2k_bomb, monkeypatch):
    ds = read_header(j2k_bomb)
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array",
                        property(lambda self: pytest.fail("the pixel data was decoded")))
    with pytest.raises(FileTooLargeError, match=r"bomb.dcm: declares 8192 x 8192 pixels x 1 frame\(s\)"):
        decode_hu(ds, j2k_bomb)


def test_a_study_of_pixel_bombs_fails_naming_the_file(j2k_bomb, tmp_path):
    for n in (1, 2):
        ds = pydicom.dcmread(j2k_bomb)
        ds.InstanceNumber, ds.SOPInstanceUID = n, pydicom.uid.generate_uid()
        ds.ImagePositionPatient = [0, 0, float(n)]
        ds.save_as(tmp_path / f"bomb{n}.dcm")
    with pytest.raises(FileTooLargeError, match=r"bomb[12].dcm: declares 8192 x 8192"):
        load_study(tmp_path)


# --- 4. full disk ---------------------------------------------------------------------------------------

class DiskFullEngine:
    """Raises ENOSPC from analyse while ``full`` is set, else delegates to the real engine; analyses
    start only once ``go`` is set, so that a test can prepare the disk before the worker writes."""

    def __init__(self, engine: Engine):
        self.engine, self.info, self.full = engine, engine.info, True
        self.go = threading.Event()

    def analyse(self, source: Path, out_dir: Path, progress=None) -> dict:
        self.go.wait(30)
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.engine.analyse(source, out_dir, progress)


def test_worker_survives_a_full_disk_and_resumes(make_app, engine, monkeypatch):
    """Injected ENOSPC from the engine and from writing status.json: the worker lives on, the study
    is failed with the reason (served from memory), and written to disk once space returns."""
    fake = DiskFullEngine(engine)
    real_replace = os.replace

    def replace(src, dst):
        if fake.full and str(dst).endswith("status.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    app = make_app(fake)
    client = app.test_client()
    study_id = client.post("/api/v1/studies", data={"files": dicom_files()}, headers=AUTH).get_json()["id"]
    monkeypatch.setattr("edge.server.jobs.os.replace", replace)
    fake.go.set()
    state = wait_done(client, study_id)
    assert state["status"] == "failed" and state["error"].startswith("the server's disk is full")
    assert client.get("/health", headers=AUTH).get_json()["queue"]["workers"] == 1
    on_disk = json.loads((app.extensions["ctedge"]["store"].folder(study_id) / "status.json").read_text())
    assert on_disk["status"] != "failed"
    fake.full = False
    second = client.post("/api/v1/studies", data={"files": dicom_files()}, headers=AUTH)
    assert second.status_code == 202
    assert wait_done(client, second.get_json()["id"])["status"] == "done"
    on_disk = json.loads((app.extensions["ctedge"]["store"].folder(study_id) / "status.json").read_text())
    assert on_disk["status"] == "failed" and "disk is full" in on_disk["error"]


def test_upload_onto_a_full_disk_is_507(make_app, monkeypatch):
    app = make_app()
    client = app.test_client()

    def full(self, dst, buffer_size=16384):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("werkzeug.datastructures.FileStorage.save", full)
    response = client.post("/api/v1/studies", data={"files": dicom_files()}, headers=AUTH)
    assert response.status_code == 507 and "disk is full" in response.get_json()["error"]
    assert study_folders(app) == []


@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave: int) -> Path:
    """Write a filler file until at most ``leave`` bytes are free on ``folder``'s file system."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        with contextlib.suppress(OSError):
            while shutil.disk_usage(folder).free > leave:
                f.write(bytes(min(2**20, max(4096, shutil.disk_usage(folder).free - leave))))
                f.flush()
    return filler


def test_full_tmpfs_gives_507_and_processing_resumes(tmp_path, make_app):
    with tmpfs(tmp_path / "disk", "24m") as disk:
        app = make_app(folder=disk, min_free_mb=1)
        client = app.test_client()
        (disk / "study.zip").write_bytes(zip_bytes({f"IM{i}.dcm": os.urandom(300_000) for i in range(4)}))
        filler = fill(disk, 512 * 2**10)
        response = client.post("/api/v1/studies", data={"files": dicom_files()}, headers=AUTH)
        assert response.status_code == 507, response.get_json()
        assert "the server's disk is full" in response.get_json()["error"] and study_folders(app) == []
        assert client.get("/health").get_json()["status"] == "ok"
        app.extensions["ctedge"]["uploads"] = UploadPolicy(Limits(), 0)   # no reserve: the disk fills while saving
        response = client.post("/api/v1/studies", data={"files": [(io.BytesIO((disk / "study.zip").read_bytes()),
                                                                   "study.zip")]}, headers=AUTH)
        assert response.status_code == 507 and "disk is full" in response.get_json()["error"]
        assert study_folders(app) == []
        with pytest.raises(OSError) as caught:       # a full disk is not a damaged zip
            extract_zip(disk / "study.zip", disk / "unpacked")
        assert caught.value.errno == errno.ENOSPC
        filler.unlink()
        shutil.rmtree(disk / "unpacked")
        response = client.post("/api/v1/studies", data={"files": dicom_files()}, headers=AUTH)
        assert response.status_code == 202
        assert wait_done(client, response.get_json()["id"])["status"] == "done"


# --- 5. owner-only storage and retention ------------------------------------------------------------------

def modes(root: Path) -> set[str]:
    """Every permission found under ``root`` (itself included), as 'dir 700' / 'file 600'."""
    found = {f"dir {root.stat().st_mode & 0o777:o}"}
    for path in root.rglob("*"):
        found.add(f"{'dir' if path.is_dir() else 'file'} {path.stat().st_mode & 0o777:o}")
    return found


def test_results_are_owner_only_whatever_the_umask(make_app):
    old = os.umask(0o022)
    try:
        app = make_app(keep_uploads_days=1)
        client = app.test_client()
        study_id = client.post("/api/v1/studies", data={"files": dicom_files()}, headers=AUTH).get_json()["id"]
        assert wait_done(client, study_id)["status"] == "done"
    finally:
        os.umask(old)
    store = app.extensions["ctedge"]["store"]
    assert (store.upload_dir(study_id) / "IM0001.dcm").is_file()
    assert modes(store.root) == {"dir 700", "file 600"}


def test_uploads_are_deleted_once_analysed_by_default(make_app):
    app = make_app()
    client = app.test_client()
    study_id = client.post("/api/v1/studies", data={"files": dicom_files()}, headers=AUTH).get_json()["id"]
    assert wait_done(client, study_id)["status"] == "done"
    store = app.extensions["ctedge"]["store"]
    assert not store.upload_dir(study_id).exists() and (store.folder(study_id) / "result.json").is_file()


def test_uploads_are_kept_for_keep_uploads_days(tmp_path):
    store = StudyStore(tmp_path / "results")
    study_id = store.create()
    (store.upload_dir(study_id) / "IM0001.dcm").write_bytes(b"x")
    store.write_status(study_id, status="done", finished=datetime.now(timezone.utc).isoformat())
    assert store.purge_uploads(2) == 0 and store.upload_dir(study_id).exists()
    assert store.purge_uploads(2, datetime.now(timezone.utc) + timedelta(days=3)) == 1
    assert not store.upload_dir(study_id).exists() and store.status(study_id)["status"] == "done"


# --- 6. sessions end at logout and user removal ----------------------------------------------------------

def test_logout_ends_the_session_even_for_a_saved_cookie(make_app):
    client = make_app().test_client()
    token = login(client)
    saved = client.get_cookie("ctedge_session").value
    assert client.post("/logout", data={"csrf_token": token}).status_code == 303
    client.set_cookie("ctedge_session", saved)
    response = client.get("/history")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_removing_a_user_ends_their_sessions(make_app, tmp_path):
    app = make_app()
    client = app.test_client()
    token = login(client)
    assert client.get("/history").status_code == 200
    users = app.config["USERS_FILE"]
    users.unlink()
    add_user(users, "someone-else", "another password")
    assert client.get("/history").status_code == 302
    response = client.post("/studies", data={"files": dicom_files(), "csrf_token": token})
    assert response.status_code == 302 and study_folders(app) == []


# --- 7. Host and Origin -----------------------------------------------------------------------------------

def test_cross_origin_posts_are_refused_even_without_login(make_app, monkeypatch):
    monkeypatch.delenv("CTEDGE_API_TOKEN")
    app = make_app(login_required=False)
    client = app.test_client()
    token = csrf(client, "/")
    for origin in ("http://evil.example", "null"):
        response = client.post("/studies", data={"files": dicom_files(), "csrf_token": token},
                               headers={"Origin": origin})
        assert response.status_code == 403 and "another site" in response.get_data(as_text=True)
        api = client.post("/api/v1/studies", data={"files": dicom_files()}, headers={"Origin": origin})
        assert api.status_code == 403 and "another site" in api.get_json()["error"]
    assert study_folders(app) == []
    same = client.post("/api/v1/studies", data={"files": dicom_files()}, headers={"Origin": "http://localhost"})
    assert same.status_code == 202


def test_unknown_host_names_are_refused(make_app, monkeypatch):
    monkeypatch.delenv("CTEDGE_API_TOKEN")
    client = make_app(login_required=False).test_client()
    for host in ("evil.example", "evil.example:8080", "127.0.0.1.evil.example", "evil.example@localhost"):
        response = client.get("/api/v1/model", headers={"Host": host})
        assert response.status_code == 400 and "server.allowed_hosts" in response.get_json()["error"], host
    for host in ("localhost", "127.0.0.1:8080", "[::1]:8080"):
        assert client.get("/api/v1/model", headers={"Host": host}).status_code == 200, host


def test_allowed_hosts_setting(make_app, tmp_path, engine):
    client = make_app(allowed_hosts="ct.hospital.example, 10.0.0.5").test_client()
    assert client.get("/login", headers={"Host": "ct.hospital.example"}).status_code == 200
    assert client.get("/login", headers={"Host": "10.0.0.5:8080"}).status_code == 200
    assert client.get("/login", headers={"Host": "other.example"}).status_code == 400
    (tmp_path / "wild").mkdir()
    profile = load_profile(write_profile(tmp_path / "wild", host="0.0.0.0"))
    with pytest.raises(ServerConfigError, match="list the host names clients use in server.allowed_hosts"):
        create_app(profile, engine, start_workers=False)


# --- 8. request body limits per route, before buffering (real waitress) ------------------------------------

def send_headers_only(server, head: str, timeout: float = 5) -> tuple[int, dict, float]:
    """Send a request head announcing a body, never the body; return (status, JSON body, seconds)."""
    start = time.monotonic()
    with socket.create_connection((server.host, server.port), timeout=timeout) as sock:
        sock.sendall(head.encode())
        data = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    assert data, f"no answer within {timeout} s: the server waits for the body"
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1]), time.monotonic() - start


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with serve(write_profile(tmp_path_factory.mktemp("served"))) as server:
        yield server


def test_large_bodies_are_refused_before_buffering(served):
    host = f"Host: {served.host}:{served.port}\r\n"
    status, body, seconds = send_headers_only(
        served, f"POST /login HTTP/1.1\r\n{host}Content-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: 300000000\r\n\r\n")
    assert status == 413 and "may carry at most 64 KB of body" in body["error"] and seconds < 2
    status, body, _ = send_headers_only(
        served, f"POST /api/v1/studies HTTP/1.1\r\n{host}Content-Type: application/zip\r\n"
                f"Content-Length: 3000000\r\n\r\n")
    assert status == 401 and "valid API token" in body["error"]
    status, body, _ = send_headers_only(
        served, f"POST /studies HTTP/1.1\r\n{host}Cookie: ctedge_session=forged\r\nContent-Type: multipart/form-data; "
                f"boundary=x\r\nContent-Length: 3000000\r\n\r\n")
    assert status == 401
    status, body, _ = send_headers_only(
        served, f"POST /api/v1/studies HTTP/1.1\r\n{host}Authorization: Bearer {served.token}\r\n"
                f"Content-Type: application/zip\r\nContent-Length: 300000000\r\n\r\n")
    assert status == 413 and "larger than the limit of 4 MB" in body["error"]


def test_uploads_with_credentials_may_use_the_upload_limit(served, tmp_path):
    files = phantom_study(tmp_path / "study", n_slices=12, size=96)
    body, content_type = multipart([(f.name, f.read_bytes()) for f in files])
    assert len(body) > 64 * 2**10
    status, _, data = served.request("POST", "/api/v1/studies", body, {"Content-Type": content_type})
    assert status == 202, data


def test_stow_with_the_token_may_use_the_upload_limit_and_without_it_gets_401(make_app):
    from edge.server.bodies import SMALL_BODY, body_limit

    app = make_app()
    limit, _ = body_limit(app, "POST", "/dicom-web/studies", {"AUTHORIZATION": AUTH["Authorization"]})
    assert limit > app.config["MAX_UPLOAD_MB"] * 2**20
    limit, refusal = body_limit(app, "POST", "/dicom-web/studies", {"AUTHORIZATION": "Bearer wrong"})
    assert limit == SMALL_BODY and refusal.code == 401


def test_stow_answers_a_missing_token_as_the_api_does(make_app):
    """One token check for every route: STOW-RS's 401 names the scheme (WWW-Authenticate) like the API's."""
    from edge.server.stow import bp

    app = make_app()
    app.register_blueprint(bp)
    client = app.test_client()
    for path in ("/api/v1/studies", "/dicom-web/studies"):
        response = client.post(path, data=b"--b--", headers={"Content-Type": 'multipart/related; type="application/dicom"; '
                                                                             'boundary=b'})
        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="ctedge"', path
        assert "token" in response.json["error"]


def test_a_removed_user_s_session_may_not_send_a_large_body(make_app):
    """The body limit asks the same session check as the pages: a user removed from the users file
    loses the upload limit at once, not only the pages."""
    from edge.server.bodies import SMALL_BODY, body_limit

    app = make_app()
    client = app.test_client()
    login(client)
    cookie = {"COOKIE": f"ctedge_session={client.get_cookie('ctedge_session').value}"}
    assert body_limit(app, "POST", "/studies", cookie)[0] > app.config["MAX_UPLOAD_MB"] * 2**20
    users = app.config["USERS_FILE"]
    users.unlink()
    add_user(users, "someone-else", "another password")
    limit, refusal = body_limit(app, "POST", "/studies", cookie)
    assert limit == SMALL_BODY and refusal.code == 401


def test_without_login_a_configured_api_token_still_guards_upload_bodies(make_app):
    """login_required false on loopback opens the pages; the API still wants its token when one is set,
    and the body limit says so before the body is read (the route would answer 401 after reading it)."""
    from edge.server.bodies import SMALL_BODY, body_limit

    app = make_app(login_required=False)
    limit, refusal = body_limit(app, "POST", "/api/v1/studies", {})
    assert limit == SMALL_BODY and refusal.code == 401
    assert app.test_client().post("/api/v1/studies", data=b"").status_code == 401
    assert body_limit(app, "POST", "/api/v1/studies", {"AUTHORIZATION": AUTH["Authorization"]})[0] > SMALL_BODY
    assert body_limit(app, "POST", "/studies", {})[0] > SMALL_BODY


# --- 9. login throttling -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_failed_logins_back_off_per_user_and_are_logged(make_app, caplog):
    caplog.set_level(logging.WARNING, logger="ctedge.server")
    app = make_app()
    clock = [1000.0]
    app.extensions["ctedge"]["throttle"].clock = lambda: clock[0]
    client = app.test_client()
    token = csrf(client)

    def attempt(password: str, user: str = USER):
        return client.post("/login", data={"user": user, "password": password, "csrf_token": token})

    for _ in range(FREE_FAILURES["user"]):
        assert attempt("wrong guess").status_code == 401
    locked = attempt(PASSWORD)
    assert locked.status_code == 429 and locked.headers["Retry-After"] == "1"
    assert "too many failed logins" in locked.get_data(as_text=True)
    clock[0] += 1.5
    assert attempt("wrong again").status_code == 401
    assert attempt(PASSWORD).headers["Retry-After"] == "2"   # the back-off doubles
    clock[0] += 2.5
    assert attempt(PASSWORD).status_code == 303
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "login locked for 1 s after 5 failures: user clinician" in text
    assert "wrong guess" not in text and PASSWORD not in text


@pytest.mark.slow
def test_failed_logins_back_off_per_address(make_app, caplog):
    caplog.set_level(logging.WARNING, logger="ctedge.server")
    app = make_app()
    client = app.test_client()
    token = csrf(client)
    for n in range(FREE_FAILURES["address"]):
        client.post("/login", data={"user": f"guess-{n}\n<fake log line>", "password": "x", "csrf_token": token})
    response = client.post("/login", data={"user": USER, "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 429
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "address 127.0.0.1" in text and "\n<fake" not in text and "guess-4\\n<fake log line>" not in text


# --- 10. uploads interrupted by a stop --------------------------------------------------------------------------

def test_interrupted_uploads_are_removed_at_start_up(tmp_path, make_app, caplog):
    caplog.set_level(logging.WARNING, logger="ctedge.server")
    store = StudyStore(tmp_path / "results")
    cut = store.create()
    (store.upload_dir(cut) / "IM0001.dcm").write_bytes((P002 / "IM0001.dcm").read_bytes()[:5000])
    kept = store.create()
    shutil.copy(P002 / "IM0001.dcm", store.upload_dir(kept))
    store.write_status(kept, status="failed", error="earlier failure")
    app = make_app()
    assert study_folders(app) == [kept]
    assert not store.folder(cut).exists()
    assert "removed 1 upload(s) interrupted by a stop of the server" in caplog.text


# --- beyond the list -------------------------------------------------------------------------------------------

def test_profile_rejects_negative_retention(tmp_path):
    with pytest.raises(UserError, match="server.keep_uploads_days must be positive, got -1"):
        load_profile(write_profile(tmp_path, keep_uploads_days=-1))



def test_image_slice_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    """An 8-bit PNG of about 70 KB declaring 8192 x 8192 pixels."""
    import cv2

    from edge.ingest.image_files import read_image_hu

    big = tmp_path / "slice_0001.png"
    assert cv2.imwrite(str(big), np.zeros((8192, 8192), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert big.stat().st_size < 1_000_000
    monkeypatch.setattr("cv2.imread", lambda *a: pytest.fail("the image was decoded"))
    with pytest.raises(FileTooLargeError, match="slice_0001.png: declares 8192 x 8192 pixels"):
        read_image_hu(big)


@pytest.mark.parametrize("kind", ["dicom", "png"])
def test_a_study_with_too_many_pixels_is_refused(tmp_path, monkeypatch, kind):
    """Thousands of tiny compressed slices must not decode into more memory than MAX_VOLUME_PIXELS."""
    from edge.phantom import make_phantom, write_image_slices

    phantom = make_phantom(n_slices=8, size=64, seed=0)
    if kind == "dicom":
        phantom_study(tmp_path / "study", n_slices=8, size=64)
    else:
        write_image_slices(phantom, tmp_path / "study")
    monkeypatch.setattr("edge.ingest.study.MAX_VOLUME_PIXELS", 5 * 64 * 64)
    with pytest.raises(FileTooLargeError, match=r"study: the study has more than 20480 pixels"):
        load_study(tmp_path / "study")
    monkeypatch.setattr("edge.ingest.study.MAX_VOLUME_PIXELS", 8 * 64 * 64)
    assert load_study(tmp_path / "study").hu.shape == (8, 64, 64)


def test_an_upload_of_many_non_dicom_files_is_refused_after_a_bounded_check(make_app, monkeypatch):
    read = []

    def read_header(path):
        read.append(path)
        raise NotDicomError(path, "not a DICOM file")

    monkeypatch.setattr("edge.server.uploads.read_header", read_header)
    app = make_app()
    files = [(io.BytesIO(b"junk"), f"junk-{i:04d}.bin") for i in range(1000)]
    response = app.test_client().post("/api/v1/studies", data={"files": files}, headers=AUTH)
    assert response.status_code == 415
    assert "none of the first 200 of 1000 uploaded files is DICOM" in response.get_json()["error"]
    assert len(read) == 200


def test_an_undecodable_bits_allocated_is_a_named_corrupt_file(tmp_path):
    """Found by the fuzz test: the size check must not crash on a tag pydicom cannot decode."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    from edge.errors import CorruptFileError

    path = phantom_study(tmp_path, n_slices=2, size=64)[0]
    ds = read_header(path)
    ds._dict[Tag(0x00280100)] = RawDataElement(Tag(0x00280100), "US", 5, b"\0" * 5, 0, False, True)
    with pytest.raises(CorruptFileError, match=r"IM0001.dcm: the pixel matrix tags cannot be read"):
        decode_hu(ds, path)


def test_many_files_of_one_name_are_saved_in_linear_time(make_app, monkeypatch):
    """2 000 parts named a.dcm once cost 2 million existence checks (O(n²)) in the request thread."""
    checks = [0]
    exists = Path.exists

    def counting(self):
        checks[0] += 1
        return exists(self)

    app = make_app()
    files = [(io.BytesIO(b"x"), "a.dcm") for _ in range(2000)]
    monkeypatch.setattr(Path, "exists", counting)
    response = app.test_client().post("/api/v1/studies", data={"files": files}, headers=AUTH)
    monkeypatch.setattr(Path, "exists", exists)
    assert response.status_code == 415 and "a-1.dcm: none of the first 200 of 2000" in response.get_json()["error"]
    assert checks[0] < 10 * len(files)


def test_a_new_password_ends_the_user_s_sessions(make_app):
    app = make_app()
    client = app.test_client()
    login(client)
    assert client.get("/history").status_code == 200
    add_user(app.config["USERS_FILE"], USER, "a brand new password")
    assert client.get("/history").status_code == 302
