"""Bounded cost for crafted inputs (issue 23, docs/security-bounds.md): each test sends what an
attacker would and asserts a refusal within a fixed memory / time bound. The receiver runs in its
own process so that its resident memory (psutil) is the receiver's alone."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil
import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import _config

from edge.limits import ASSOCIATION_PHASE_S, MAX_CONTROL_PDU_BYTES
from tests.dicom_support import echo, phantom_study, send_statuses

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]
MB = 2**20
RUNNER = """
import sys, time
from pathlib import Path
import edge.limits
edge.limits.MAX_INSTANCE_BYTES = int(sys.argv[2])  # before the receiver imports it
from edge.profile import DicomSettings
from edge.dicomnet.receiver import Receiver
r = Receiver(DicomSettings(port=0), Path(sys.argv[1]), ("ct",))
r.start()
print(r.port, flush=True)
time.sleep(600)
"""


@pytest.fixture
def receiver_process(tmp_path):
    """A receiver in its own process: (port, psutil.Process); its instance limit is 8 MB."""
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(tmp_path / "inbox"), str(8 * MB)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield port, psutil.Process(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def rss_mb(process: psutil.Process) -> float:
    return process.memory_info().rss / MB


def peak_rss_mb(process: psutil.Process, work: Callable[[], T]) -> tuple[float, T]:
    """The highest resident memory of ``process`` (sampled every 10 ms) while ``work`` runs, and its result."""
    peak, done = [rss_mb(process)], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak.append(rss_mb(process))
            time.sleep(0.01)
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = work()
    finally:
        done.set()
        sampler.join()
    return max(peak), result


def stream(port: int, header: bytes, total: int) -> int:
    """Send ``header`` then up to ``total`` zero bytes; return how many were sent before the receiver closed."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as s:
        try:
            s.sendall(header)
            chunk = bytes(MB)
            while sent < total:
                s.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        time.sleep(0.5)  # let the receiver read what arrived
    return sent


def test_an_association_request_announcing_500_mb_is_aborted_unread(receiver_process):
    port, process = receiver_process
    assert echo(port)[2] == 0
    before = rss_mb(process)
    header = struct.pack(">BBL", 0x01, 0, 500_000_000)
    peak, sent = peak_rss_mb(process, lambda: [stream(port, header, 300 * MB) for _ in range(3)])
    print(f"receiver RSS {before:.0f} MB -> peak {peak:.0f} MB during 3 requests announcing 500 MB "
          f"({', '.join(f'{s // MB}' for s in sent)} MB accepted by the socket)")
    assert peak - before < 30
    assert all(s < 50 * MB for s in sent)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(header)
        s.settimeout(5)
        assert s.recv(10)[:1] == b"\x07"  # an A-ABORT, before any of the 500 MB was sent
    assert echo(port)[2] == 0  # still serving


def test_a_pdu_just_above_the_control_limit_is_refused_and_one_below_is_read(receiver_process):
    port, _ = receiver_process
    for length, aborted in ((MAX_CONTROL_PDU_BYTES + 1, True), (1000, False)):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(struct.pack(">BBL", 0x01, 0, length) + bytes(length if not aborted else 0))
            s.settimeout(5)
            reply = s.recv(10)
        # 1000 zero bytes are read and found invalid (pynetdicom's own A-ABORT, reason 0); the other is not read
        assert reply[:1] == b"\x07" and (reply[9] == 0x06) == aborted


def test_idle_connections_do_not_hold_the_association_slots(receiver_process):
    port, _ = receiver_process
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(15)]
    started = time.monotonic()
    results = [echo(port) for _ in range(5)]
    took = time.monotonic() - started
    for s in idle:
        s.close()
    assert [r[2] for r in results] == [0] * 5
    assert took < ASSOCIATION_PHASE_S


def test_a_connection_stalling_mid_request_is_closed_after_the_association_phase(tmp_path, monkeypatch):
    import edge.dicomnet.guard as guard
    from edge.dicomnet.receiver import Receiver
    from edge.profile import DicomSettings

    monkeypatch.setattr(guard, "ASSOCIATION_PHASE_S", 1.0)
    receiver = Receiver(DicomSettings(port=0), tmp_path / "inbox", ("ct",))
    receiver.start()
    try:
        with socket.create_connection(("127.0.0.1", receiver.port)) as s:
            s.sendall(struct.pack(">BBL", 0x01, 0, 5000) + bytes(100))  # and nothing more
            s.settimeout(10)
            started = time.monotonic()
            assert s.recv(100) == b""  # closed by the receiver
            assert time.monotonic() - started < 3.0
    finally:
        receiver.stop()


@pytest.fixture
def chunked_send():
    _config.STORE_SEND_CHUNKED_DATASET = True  # the sender streams the file: the test process stays small
    yield
    _config.STORE_SEND_CHUNKED_DATASET = False


def test_an_instance_above_the_size_limit_is_refused_without_being_held(receiver_process, tmp_path, chunked_send):
    port, process = receiver_process
    ok = phantom_study(tmp_path / "s", n_slices=2, size=64)
    big = pydicom.dcmread(ok[0])
    big.Rows = big.Columns = 4096
    big.PixelData = bytes(4096 * 4096 * 2)  # 32 MB, 4x the limit of this receiver
    big.SOPInstanceUID = big.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    big.save_as(tmp_path / "big.dcm")
    before = rss_mb(process)
    peak, statuses = peak_rss_mb(process, lambda: send_statuses(port, [tmp_path / "big.dcm", ok[1]]))
    print(f"receiver RSS {before:.0f} MB -> peak {peak:.0f} MB receiving a 32 MB instance (limit 8 MB)")
    assert statuses[0].Status == 0xA700 and "larger than 8 MB" in statuses[0].ErrorComment
    assert statuses[1].Status == 0x0000  # the association goes on
    assert peak - before < 3.5 * 8  # what arrived up to the limit (and BytesIO's growth), not 4x the instance
    stored = [p.name for p in (tmp_path / "inbox").rglob("*.dcm")]
    assert stored == [f"{pydicom.dcmread(ok[1]).SOPInstanceUID}.dcm"]
