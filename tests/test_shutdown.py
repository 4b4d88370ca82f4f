"""Stops leave nothing behind: ``ctedge serve``, ``watch`` and ``receive`` run as real processes in a
session of their own, with the decoding worker pool started; after SIGTERM, SIGINT or a SIGKILL of
the command, no process of that session survives (forkserver, resource tracker, workers). A stop
re-queues the work in flight instead of losing or failing it; the systemd units stop the whole group."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from edge.server.jobs import JobQueue, StudyStore
from edge.watch import PARTIAL
from tests.helpers.dicomnet import free_port
from tests.helpers.paths import REPO
from tests.helpers.profiles import write_profile
from tests.helpers.server import multipart, phantom_study, serve
from tests.helpers.server import write_profile as write_server_profile

DECODE_IN_PROCESSES = {"CTEDGE_DECODE": "processes", "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
STOP_S = 60.0
SETTLE_S = 20.0   # a worker notices its parent's death at once (pidfd); this is only the test's patience


def session(sid: int) -> list[psutil.Process]:
    """The live processes of session ``sid`` (the command and everything it started), zombies left out."""
    found = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getsid(process.pid) == sid and process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (ProcessLookupError, PermissionError):
            continue
    return found


def default_sigint() -> None:
    """In the child: Ctrl-C as on a terminal (a test run started in the background inherits SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def survivors(sid: int) -> list[str]:
    """The processes of session ``sid`` still alive SETTLE_S after the stop, described; they are killed
    (they would hold the command's output pipe open)."""
    deadline = time.monotonic() + SETTLE_S
    while (alive := session(sid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    described = [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in alive]
    for p in alive:
        p.kill()
    return described


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def workers_started(sid: int) -> bool:
    """The command, the resource tracker, the forkserver and at least one decoding worker."""
    return len(session(sid)) >= 4


def stop(process: subprocess.Popen, how: signal.Signals) -> int:
    """Send ``how``; a command that has not exited after STOP_S is made to print its threads' stacks (SIGABRT)."""
    process.send_signal(how)
    try:
        return process.wait(STOP_S)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        process.wait(10)
        pytest.fail(f"ctedge did not exit within {STOP_S} s of {how.name}; its output:\n" + (
            process.stdout.read() if process.stdout else ""))


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_watch_with_dicom_leaves_no_process(tmp_path, how):
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    phantom_study(inbox / "s1", n_slices=20, size=64)
    profile = write_profile(tmp_path / "p.yaml", model={"threads": 1}, watcher={"stable_seconds": 0, "poll_seconds": 0.2},
                            dicom={"port": free_port(), "inbox": inbox, "allowed_callers": ["TESTSCU"]})
    process = subprocess.Popen([sys.executable, "-m", "edge.cli", "watch", str(inbox), "--out", str(outbox),
                                "--config", str(profile)], cwd=REPO, env=os.environ | DECODE_IN_PROCESSES,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               preexec_fn=default_sigint)
    try:
        wait_for(lambda: (outbox / "s1" / "result.json").exists() and workers_started(process.pid), "the first result")
        rc = stop(process, how)
    finally:
        left = survivors(process.pid)
        process.kill()
    out = process.stdout.read()
    assert not left, "processes outlived the stop:\n" + "\n".join(left)
    if how == signal.SIGTERM:
        assert rc == 0 and "ctedge: stopped" in out, out
    assert not list((outbox / PARTIAL).glob("*")) or how == signal.SIGKILL


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_serve_leaves_no_process(tmp_path, how):
    profile = write_server_profile(tmp_path)
    study = phantom_study(tmp_path / "study", n_slices=20, size=64)
    with serve(profile, env=DECODE_IN_PROCESSES, new_session=True) as served:
        body, content_type = multipart([(f.name, f.read_bytes()) for f in study])
        status, _, answer = served.request("POST", "/api/v1/studies", body, {"Content-Type": content_type})
        assert status == 202, answer
        study_id = json.loads(answer)["id"]
        try:
            wait_for(lambda: served.json(f"/api/v1/studies/{study_id}")["status"] == "done"
                     and workers_started(served.process.pid), "the study's result")
            rc = stop(served.process, how)
        finally:
            left = survivors(served.process.pid)
    assert not left, "processes outlived the stop:\n" + "\n".join(left)
    if how == signal.SIGTERM:
        assert rc == 0, "".join(served.output)


@pytest.mark.slow
def test_receive_stops_on_sigterm(tmp_path):
    profile = write_profile(tmp_path / "p.yaml", dicom={"port": free_port(), "inbox": tmp_path / "inbox",
                                                         "allowed_callers": ["TESTSCU"]})
    process = subprocess.Popen([sys.executable, "-m", "edge.cli", "receive", "--config", str(profile)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert "receiving DICOM" in process.stdout.readline()
        rc = stop(process, signal.SIGTERM)
    finally:
        left = survivors(process.pid)
        process.kill()
    assert rc == 0 and not left
    assert "ctedge: stopped" in process.stdout.read()


class Blocking:
    """An engine whose analysis waits until ``release`` is set, then fails as a cut-off decode does."""

    info = routes = None

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()

    def analyse(self, source: Path, out_dir: Path, progress: object = None) -> dict:
        self.started.set()
        self.release.wait(30)
        raise RuntimeError("cannot schedule new futures after shutdown")


@pytest.mark.parametrize("released", [False, True], ids=["still-running", "cut-short"])
def test_a_stop_requeues_the_running_study_without_counting_an_attempt(tmp_path, released):
    store = StudyStore(tmp_path / "results")
    engine = Blocking()
    jobs = JobQueue(store, engine, workers=1, queue_size=4)
    jobs.start()
    study_id = store.create()
    jobs.submit(study_id, 1)
    assert engine.started.wait(10)
    assert store.status(study_id)["attempts"] == 1
    if released:   # the analysis ends (with an error) during the stop: it must not be recorded as failed
        threading.Timer(0.2, engine.release.set).start()
    jobs.stop(timeout=2.0 if released else 0.3)
    engine.release.set()
    time.sleep(0.3)
    state = store.status(study_id)
    assert (state["status"], state["attempts"], state["error"]) == ("queued", 0, None)
    again = JobQueue(store, engine, workers=0, queue_size=4)
    again.start()
    assert again.position(study_id) == 0


@pytest.mark.parametrize("unit", ["ctedge-serve.service.in", "ctedge-watch.service.in"])
def test_the_units_stop_the_whole_group_in_time(unit):
    lines = dict(line.split("=", 1) for line in (REPO / "installer" / unit).read_text().splitlines()
                 if "=" in line and not line.startswith("#"))
    assert lines.get("KillMode") in ("mixed", "control-group")
    assert 10 <= int(lines["TimeoutStopSec"].rstrip("s")) <= 120
    assert lines.get("KillSignal", "SIGTERM") == "SIGTERM"
