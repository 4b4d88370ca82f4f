"""kill -9 of ``ctedge receive`` during a transfer: no partial file is visible in the study folder,
and every acknowledged instance is there after the restart."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from tests.helpers.dicomnet import free_port, phantom_study, send
from tests.helpers.paths import REPO
from tests.helpers.profiles import write_profile

pytestmark = pytest.mark.slow


def start_receiver(profile: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "receive", "--config", str(profile)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    assert "receiving DICOM" in line, line + proc.stdout.read()
    return proc


def test_kill_during_transfer_loses_no_acknowledged_instance(tmp_path):
    study = phantom_study(tmp_path / "src", n_slices=80, size=512, seed=5)
    port = free_port()
    profile = write_profile(tmp_path / "p.yaml", dicom={"port": port, "inbox": tmp_path / "inbox", "allowed_callers": ["TESTSCU"]})
    proc = start_receiver(profile)
    acknowledged: list[str] = []

    def sender() -> None:
        ae = AE("TESTSCU")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="CTEDGE")
        for f in study:
            try:
                rsp = assoc.send_c_store(f)
            except RuntimeError:  # the association died with the receiver
                return
            if not rsp or rsp.get("Status") != 0:
                return
            acknowledged.append(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)

    thread = threading.Thread(target=sender)
    thread.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 15 and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    thread.join(30)
    assert 15 <= len(acknowledged) < len(study), "the kill did not land during the transfer"
    inbox = tmp_path / "inbox"
    visible = [p for p in inbox.rglob("*") if p.is_file() and ".receiving" not in p.parts]
    assert all(p.suffix == ".dcm" for p in visible)
    for p in visible:  # every visible file is complete
        assert len(pydicom.dcmread(p).PixelData) == 512 * 512 * 2
    assert set(acknowledged) <= {p.stem for p in visible}

    proc = start_receiver(profile)  # restart: leftovers gone, the rest of the study arrives
    try:
        assert not list((inbox / ".receiving").iterdir())
        assert send(port, study) == [0] * len(study)
    finally:
        proc.terminate()
        proc.wait(10)
    assert len([p for p in inbox.rglob("*.dcm") if ".receiving" not in p.parts]) == len(study)
