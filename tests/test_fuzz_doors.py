"""A fuzz test per door (issue 23): seeded random and crafted bytes go in through C-STORE, STOW-RS,
the upload API, the watched folder and ``ctedge predict``, each served by a real process whose
resident memory is sampled; every input ends in a typed refusal (a DICOM status, an HTTP error, a
``failed/`` record, exit 2 naming the file) or is accepted, never a crash, and the process stays
within a fixed memory bound."""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path

import psutil
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, _config

from edge.dicomnet.receiver import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SOP_CLASS_NOT_SUPPORTED, SUCCESS
from edge.watch import SUMMARY
from tests.helpers.dicomnet import echo, phantom_study
from tests.helpers.profiles import write_profile as write_device_profile
from tests.helpers.server import multipart, serve
from tests.test_security_bounds import MB, RUNNER, REPO, peak_rss_mb, rss_mb
from tests.test_security_doors import (EMPTY_ITEM, ITEM_END, ITEM_START, SQ_END, SQ_START, dicom_profile,
                                       stow, with_sequence)

pytestmark = pytest.mark.slow   # five real processes; about a minute in all
SEED = 23
MEMORY_MB = 250   # the most any door's process may grow while it is fed the cases


def data_start(template: bytes) -> int:
    """Where the data set of a Part 10 file begins (after the preamble and the file meta group)."""
    group_length = struct.unpack("<L", template[140:144])[0]   # (0002,0000) UL, the first meta element
    return 144 + group_length


def fuzz_cases(folder: Path) -> list[tuple[str, bytes]]:
    """About 20 inputs: random bytes, a valid slice with random bytes after its header, flipped bytes,
    truncations, and crafted ones (zeros, 0xFF, nesting and item bombs, a deflate bomb)."""
    rng = random.Random(SEED)
    slices = phantom_study(folder / "template", n_slices=2, size=64)
    template = slices[0].read_bytes()
    start = data_start(template)
    cases = [(f"random-{n}.dcm", rng.randbytes(size)) for n, size in enumerate((0, 1, 131, 5000, 300_000))]
    cases += [(f"header-random-{n}.dcm", template[:start] + rng.randbytes(size)) for n, size in enumerate((8, 700, 40_000))]
    for n in range(5):
        flipped = bytearray(template)
        for _ in range(rng.choice((1, 10, 100))):
            flipped[rng.randrange(start, len(flipped))] = rng.randrange(256)
        cases.append((f"flipped-{n}.dcm", bytes(flipped)))
    cases += [(f"truncated-{n}.dcm", template[:rng.randrange(start, len(template))]) for n in range(2)]
    deflated = pydicom.dcmread(slices[1])
    deflate_bomb = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = struct.pack("<HH2sHL", 0x0011, 0x1010, b"OB", 0, 300 * MB) + bytes(0)
    bomb = deflate_bomb.compress(body) + b"".join(deflate_bomb.compress(bytes(MB)) for _ in range(300)) + deflate_bomb.flush()
    deflated.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    deflated.save_as(folder / "deflated.dcm", enforce_file_format=True)
    deflated_bytes = (folder / "deflated.dcm").read_bytes()
    cases += [
        ("zeros.dcm", bytes(2 * MB)),
        ("ones.dcm", b"\xff" * MB),
        ("depth.dcm", with_sequence(slices[1], folder / "d.dcm", (SQ_START + ITEM_START) * 5000
                                    + (ITEM_END + SQ_END) * 5000).read_bytes()),
        ("items.dcm", with_sequence(slices[1], folder / "i.dcm", SQ_START + EMPTY_ITEM * 300_000 + SQ_END).read_bytes()),
        ("deflate-bomb.dcm", deflated_bytes[:data_start(deflated_bytes)] + bomb),
    ]
    return cases


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> list[tuple[str, bytes]]:
    return fuzz_cases(tmp_path_factory.mktemp("fuzz"))


def store_raw(port: int, files: list[Path], monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    """C-STORE each file as CT Image Storage, its data set bytes sent as they are, unread; the statuses."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE("FUZZ")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="CTEDGE")
    assert assoc.is_established
    statuses = [(assoc.send_c_store(f) or Dataset()).get("Status") for f in files]
    assoc.release()
    return statuses


def test_c_store(cases, tmp_path, monkeypatch):
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(tmp_path / "inbox"), str(64 * MB)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        process = psutil.Process(proc.pid)
        template = cases[5][1][:data_start(cases[5][1])]   # a valid file meta: pynetdicom sends the rest as it is
        files = []
        for name, data in cases:
            dataset = data[data_start(data):] if data.startswith(template[:132]) and len(data) > 144 else data
            (tmp_path / name).write_bytes(template + dataset)
            files.append(tmp_path / name)
        before = rss_mb(process)
        peak, statuses = peak_rss_mb(process, lambda: store_raw(port, files, monkeypatch))
        assert echo(port)[2] == 0 and proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    print(f"C-STORE fuzz: {len(cases)} cases, statuses {sorted(set(statuses))}, RSS {before:.0f} -> {peak:.0f} MB")
    assert len(statuses) == len(cases) and set(statuses) <= {SUCCESS, CANNOT_UNDERSTAND, OUT_OF_RESOURCES,
                                                             SOP_CLASS_NOT_SUPPORTED}
    assert statuses.count(CANNOT_UNDERSTAND) >= len(cases) // 2
    assert peak - before < MEMORY_MB


def test_stow_rs_and_upload(cases, tmp_path):
    with serve(dicom_profile(tmp_path, stable_seconds=600, max_upload_mb=16, queue_size=64)) as served:
        process = psutil.Process(served.process.pid)
        before = rss_mb(process)
        boundary = uuid.uuid4().hex
        body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
                        for _, data in cases) + f"--{boundary}--\r\n".encode()
        crafted = [b"", b"--" + boundary.encode(), f"--{boundary}\r\n".encode() + b"x" * 20_000,
                   random.Random(SEED).randbytes(10_000)]

        def feed() -> tuple[list, list]:
            stow_answers = [stow(served, b, boundary) for b in [body, *crafted]]
            uploads = []
            for name, data in cases:
                form, content_type = multipart([(name, data)])
                status, _, answer = served.request("POST", "/api/v1/studies", form, {"Content-Type": content_type})
                uploads.append((name, status, json.loads(answer)))
            return stow_answers, uploads
        peak, (stow_answers, uploads) = peak_rss_mb(process, feed)
        states = {}
        for name, status, answer in uploads:
            if status == 202:
                deadline = time.monotonic() + 60
                while (state := served.json(answer["url"]))["status"] in ("queued", "running") and time.monotonic() < deadline:
                    time.sleep(0.2)
                states[name] = state
        assert served.process.poll() is None and served.json("/health")["status"] == "ok"
    print(f"STOW-RS and upload fuzz: {len(cases)} cases, STOW {[s for s, _ in stow_answers]}, uploads "
          f"{sorted({s for _, s, _ in uploads})}, RSS {before:.0f} -> {peak:.0f} MB")
    status, answer = stow_answers[0]
    assert status in (202, 409) and len(answer.get("00081199", {}).get("Value", [])) + len(answer["00081198"]["Value"]) == len(cases)
    assert all(s in (400, 409) for s, _ in stow_answers[1:]), stow_answers[1:]
    for name, status, answer in uploads:
        assert status in (202, 400, 413, 415), (name, status, answer)
        if status == 202:
            assert states[name]["status"] in ("done", "failed"), (name, states[name])
            if states[name]["status"] == "failed":
                assert states[name]["error"] and "internal error" not in states[name]["error"], (name, states[name])
    assert peak - before < MEMORY_MB


WATCH_OR_PREDICT = """
import sys
from pathlib import Path
from edge.cli import main
if sys.argv[1] == "watch":
    sys.exit(main(["watch", sys.argv[2], "--out", sys.argv[3], "--once", "--config", sys.argv[4]]))
for case in sorted(Path(sys.argv[2]).iterdir()):
    print("RC", case.name, main(["predict", str(case), "--json"]), flush=True)
"""


@pytest.mark.parametrize("door", ["watch", "predict"])
def test_watched_folder_and_predict(cases, tmp_path, door):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    for name, data in cases:
        (inbox / name).write_bytes(data)
    profile = write_device_profile(tmp_path / "watch.yaml", watcher={"stable_seconds": 0})
    proc = subprocess.Popen([sys.executable, "-c", WATCH_OR_PREDICT, door, str(inbox), str(out), str(profile)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    process = psutil.Process(proc.pid)
    time.sleep(1.5)   # past the interpreter's and TFLite's start
    before = rss_mb(process)
    peak, output = peak_rss_mb(process, lambda: proc.communicate(timeout=300)[0])
    print(f"{door} fuzz: {len(cases)} cases, exit {proc.returncode}, RSS {before:.0f} -> {peak:.0f} MB")
    assert "internal error" not in output and "Traceback" not in output, output[-3000:]
    if door == "watch":
        assert proc.returncode == 0, output[-3000:]
        failed = {p.name for p in (out / "failed").iterdir()}
        done = {p.name for p in out.iterdir() if p.name not in ("failed", SUMMARY) and not p.name.startswith(".")}
        assert failed | done == {name for name, _ in cases}   # a stray file is a study of its own
        assert all((out / "failed" / n / "error.txt").read_text().strip() for n in failed)
    else:
        codes = dict(line.split()[1:] for line in output.splitlines() if line.startswith("RC "))
        assert len(codes) == len(cases) and set(codes.values()) <= {"0", "2"}, codes
    assert peak - before < MEMORY_MB
