"""``ctedge doctor``: each problem of a box is a failed check naming the file or setting; exit 0 only when ready."""

from __future__ import annotations

import json
import os
import pwd
import socket
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from edge.cli import main
from edge.doctor import run_checks
from edge.server.auth import add_user
from tests.helpers.dicomnet import free_port as another_port
from tests.helpers.paths import REPO
from tests.helpers.profiles import write_profile

ME = pwd.getpwuid(os.getuid())


def box(tmp_path: Path, port: int, token: str = "x" * 32) -> Path:
    """A ready box in ``tmp_path``: profile, env file with a token, one login, an owner-only results folder."""
    results = tmp_path / "results"
    results.mkdir(mode=0o700)
    add_user(results / "users.txt", "radiologist", "correct horse battery")
    (tmp_path / "ctedge.env").write_text(f"# token\nCTEDGE_API_TOKEN={token}\n")
    (tmp_path / "ctedge.env").chmod(0o600)
    return write_profile(tmp_path / "ctedge.yaml", name="test-box", server={"port": port, "results_dir": results})


def failed(checks) -> dict[str, str]:
    return {c.name: c.detail for c in checks if not c.ok and not c.warning}


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ready_box_exits_0(tmp_path, free_port, capsys, monkeypatch):
    monkeypatch.delenv("CTEDGE_API_TOKEN", raising=False)
    profile = box(tmp_path, free_port)
    assert main(["doctor", "--config", str(profile)]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("READY") and "[  ok] model: cnn-bilstm-demo" in out
    assert main(["doctor", "--config", str(profile), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ready"] is True and {c["name"] for c in doc["checks"]} >= {"model", "port", "api token", "login users"}


def test_each_problem_is_named(tmp_path, free_port, monkeypatch):
    monkeypatch.delenv("CTEDGE_API_TOKEN", raising=False)
    profile = box(tmp_path, free_port, token="")
    (tmp_path / "results").chmod(0o755)
    (tmp_path / "results/users.txt").unlink()
    inbox = tmp_path / "inbox"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port))
        busy.listen()
        problems = failed(run_checks(profile, [inbox], ME, tmp_path / "ctedge.env"))
    assert "mode 0755" in problems[f"folder {tmp_path / 'results'}"]
    assert "does not exist" in problems[f"folder {inbox}"]
    assert f"127.0.0.1:{free_port}" in problems["port"]
    assert "CTEDGE_API_TOKEN" in problems["api token"] and "not set" in problems["api token"]
    assert "--add-user" in problems["login users"]


def test_bad_profile_stops_early_naming_the_key(tmp_path, capsys):
    assert main(["doctor", "--config", str(REPO / "firmware_config/coral-edgetpu.yaml")]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] profile:" in out and "model.variant" in out and "NOT READY" in out


def test_the_model_check_classifies_an_input_of_the_bundle_s_own_kind(tmp_path, slice_bundle, monkeypatch):
    """A slice bundle takes one slice, not a group: the check feeds each kind its own unit."""
    from edge.doctor import check_bundle
    from edge.profile import default_profile

    monkeypatch.setenv("CTEDGE_TUNE_CACHE", str(tmp_path / "tuned.json"))  # untuned, whatever ran before
    bundle = slice_bundle
    model, variant = check_bundle(default_profile(bundle), bundle)
    assert model.ok and f"CT bundle {bundle}" in model.detail, model.detail
    assert variant.detail.startswith(f"CT bundle {bundle}: not tuned on this CPU yet") and variant.detail.endswith("float32")


def test_a_token_file_others_can_read_fails(tmp_path, free_port, monkeypatch):
    monkeypatch.delenv("CTEDGE_API_TOKEN", raising=False)
    profile = box(tmp_path, free_port)
    env = tmp_path / "ctedge.env"
    env.chmod(0o644)
    problems = failed(run_checks(profile, [], ME, env))
    assert "mode 0644" in problems["secret file"] and f"chmod 600 {env}" in problems["secret file"]
    env.chmod(0o600)
    assert "secret file" not in failed(run_checks(profile, [], ME, env))


def test_the_dicom_section_is_checked(tmp_path, free_port, monkeypatch):
    monkeypatch.delenv("CTEDGE_API_TOKEN", raising=False)
    box(tmp_path, free_port)
    pacs_port, dead_port = another_port(), another_port()
    profile = write_profile(tmp_path / "dicom.yaml", server={"port": free_port, "results_dir": tmp_path / "results"},
                            dicom={"port": free_port, "inbox": tmp_path / "inbox", "ae_title": "CTEDGE",
                                   "destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port},
                                                    {"ae_title": "DOWN", "host": "127.0.0.1", "port": dead_port}]})
    pacs = AE("PACS")
    pacs.add_supported_context(Verification)
    server = pacs.start_server(("127.0.0.1", pacs_port), block=False)
    try:
        with socket.socket() as busy:   # the receiver's port is taken by something that is not a receiver
            busy.bind(("127.0.0.1", free_port))
            busy.listen()
            checks = {c.name: c for c in run_checks(profile, [], ME, tmp_path / "ctedge.env")}
    finally:
        server.shutdown()
    assert checks["dicom ae titles"].ok and "CTEDGE, PACS, DOWN" in checks["dicom ae titles"].detail
    assert not checks["dicom port"].ok and f"127.0.0.1:{free_port} cannot be used" in checks["dicom port"].detail
    assert checks["dicom destination 0"].ok and "PACS@127.0.0.1" in checks["dicom destination 0"].detail
    assert not checks["dicom destination 1"].ok and "no association" in checks["dicom destination 1"].detail
