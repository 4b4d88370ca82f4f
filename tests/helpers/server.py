"""Helpers shared by the server tests: a test profile, small studies, the API token, logging in and
waiting for a study through Flask's test client, a real ``ctedge serve`` process."""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from edge.server.auth import add_user
from tests.helpers.paths import REPO
from tests.helpers.profiles import DEMO_BUNDLE
from tests.helpers.profiles import write_profile as write_device_profile

USER, PASSWORD = "clinician", "correct horse battery"
TOKEN = "test-token-0123456789"       # set it as CTEDGE_API_TOKEN; AUTH is the header that carries it
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def write_profile(folder: Path, bundle: Path = DEMO_BUNDLE, *more_bundles: Path, model: dict | None = None,
                  sections: dict | None = None, **server) -> Path:
    """``folder``/profile.yaml: a device running ``bundle`` (default the bundled demo model; one thread, and
    the ``model`` keys given) with results (and the test user) under ``folder``, the ``server`` settings
    given and other top-level ``sections`` (``dicom``, ``watcher``)."""
    settings = {"results_dir": str(folder / "results"), "max_upload_mb": 4, "workers": 1, "queue_size": 4} | server
    path = write_device_profile(folder / "profile.yaml", bundle, *more_bundles, name="test-box", description="server tests",
                                model={"threads": 1} | (model or {}), server=settings, **(sections or {}))
    add_user(folder / "results" / "users.txt", USER, PASSWORD)
    return path


def csrf(client, page: str = "/login") -> str:
    """The CSRF token of a page's form."""
    html = client.get(page).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(client) -> str:
    """Log in as the test user; return the session's CSRF token (a new one: login rotates it)."""
    before = csrf(client)
    response = client.post("/login", data={"user": USER, "password": PASSWORD, "csrf_token": before})
    assert response.status_code == 303
    after = csrf(client, "/")
    assert after != before
    return after


def wait_done(client, study_id: str, timeout: float = 60) -> dict:
    """The API state of a study once it is done or failed (asked with :data:`AUTH`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get(f"/api/v1/studies/{study_id}", headers=AUTH).get_json()
        if state["status"] in ("done", "failed"):
            return state
        time.sleep(0.1)
    raise AssertionError(f"study {study_id} still {state['status']} after {timeout} s")


def phantom_study(folder: Path, n_slices: int = 12, size: int = 96, seed: int = 0) -> list[Path]:
    """A small synthetic axial CT series written as DICOM."""
    from edge.phantom import make_phantom, write_dicom_series

    return write_dicom_series(make_phantom(n_slices=n_slices, size=size, seed=seed, ground_glass=2), folder, seed=seed)


def multipart(files: list[tuple[str, bytes]], fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """Encode ``files`` (name, content) as the field ``files`` of a multipart/form-data body."""
    boundary = uuid.uuid4().hex
    parts = []
    for key, value in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    for name, content in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@dataclass
class Served:
    """A running ``ctedge serve`` subprocess."""

    process: subprocess.Popen
    host: str
    port: int
    token: str
    output: list[str] = field(default_factory=list)   # what the server printed and logged

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                token: bool = True, timeout: float = 30) -> tuple[int, dict, bytes]:
        """One request on a fresh connection; returns (status, headers, body)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=(headers or {}) | (
                {"Authorization": f"Bearer {self.token}"} if token else {}))
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def json(self, path: str) -> dict:
        status, _, body = self.request("GET", path)
        assert status == 200, (status, body)
        return json.loads(body)


@contextmanager
def serve(profile: Path, env: dict[str, str] | None = None, new_session: bool = False) -> Iterator[Served]:
    """Start ``ctedge serve --port 0`` on loopback (with ``env`` added to its environment; in a session
    of its own with ``new_session``) and stop it afterwards."""
    token = secrets.token_urlsafe(24)
    env = os.environ | {"CTEDGE_API_TOKEN": token, "PYTHONUNBUFFERED": "1"} | (env or {})
    process = subprocess.Popen([sys.executable, "-m", "edge.cli", "serve", "--config", str(profile), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
                               start_new_session=new_session)
    try:
        line = process.stdout.readline()
        while line and "serving on" not in line:
            line = process.stdout.readline()
        assert "serving on http://" in line, f"ctedge serve did not start: {line!r} (exit {process.poll()})"
        address = line.split("http://", 1)[1].split("/", 1)[0]
        host, port = address.rsplit(":", 1)
        served = Served(process, host, int(port), token, [line])
        threading.Thread(target=lambda: served.output.extend(process.stdout), daemon=True).start()
        yield served
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
