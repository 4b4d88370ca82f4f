"""Bounded cost at the server's and the receiver's doors (issue 23, second round; docs/security-bounds.md):
STOW-RS streams its body with a part limit (N7), ``/health`` says nothing without the token (N9).
Real ``ctedge serve`` processes on loopback; the inputs are crafted here."""

from __future__ import annotations

import json
import re
import struct
import time
import uuid
from pathlib import Path

import psutil
import pydicom
import pytest

from edge import __version__
from edge.dicomnet.receiver import check_instance
from edge.ingest.dicom_files import read_header
from edge.ingest.dicom_scan import TooManyElementsError
from edge.limits import MAX_SEQUENCE_DEPTH, MAX_STOW_PARTS, MAX_TOTAL_ELEMENTS
from edge.profile import load_profile
from tests.helpers.dicomnet import StorageSCP, free_port, phantom_study, send, sr_items
from tests.helpers.server import Served, serve, write_profile
from tests.test_security_bounds import MB, peak_rss_mb, rss_mb, with_raw_elements


def dicom_profile(folder: Path, stable_seconds: float = 0.5, **server) -> Path:
    """A server profile with a receiver and a PACS destination where nothing listens."""
    return write_profile(folder, sections={
        "watcher": {"poll_seconds": 0.2, "stable_seconds": stable_seconds},
        "dicom": {"port": free_port(), "inbox": str(folder / "received"),
                  "destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}]}},
        **server)


def stow(served: Served, body: bytes, boundary: str) -> tuple[int, dict]:
    status, _, answer = served.request("POST", "/dicom-web/studies", body, timeout=120, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    return status, json.loads(answer or b"{}")


def log_lines(served: Served, text: str) -> list[str]:
    time.sleep(0.3)  # the reader thread
    return [line for line in served.output if text in line]


def test_stow_refuses_a_4_mb_body_of_tiny_parts_at_the_part_limit_with_one_log_line(tmp_path):
    boundary = uuid.uuid4().hex
    part = f"--{boundary}\r\n\r\nx\r\n".encode()
    body = part * (4 * MB // len(part)) + f"--{boundary}--\r\n".encode()
    with serve(dicom_profile(tmp_path, stable_seconds=600, max_upload_mb=8)) as served:
        process = psutil.Process(served.process.pid)
        before = rss_mb(process)
        start = time.monotonic()
        peak, (status, answer) = peak_rss_mb(process, lambda: stow(served, body, boundary))
        seconds = time.monotonic() - start
        lines = log_lines(served, "STOW-RS")
    print(f"STOW-RS, {len(body) // len(part)} tiny parts in {len(body) / MB:.1f} MB: {status} in {seconds:.1f} s, "
          f"server RSS {before:.0f} -> peak {peak:.0f} MB, {len(lines)} log line(s)")
    assert status == 413 and f"more than {MAX_STOW_PARTS} parts" in answer["error"]
    assert len(lines) == 1 and f"{MAX_STOW_PARTS} refused" in lines[0]
    assert seconds < 20 and peak - before < 60


def test_stow_holds_one_part_at_a_time_of_a_large_body(tmp_path):
    study = phantom_study(tmp_path / "src", n_slices=4, size=64)
    boundary = uuid.uuid4().hex
    junk = b"\xff" * (2 * MB)
    parts = [p.read_bytes() for p in study] + [junk] * 60
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
                    for p in parts) + f"--{boundary}--\r\n".encode()
    with serve(dicom_profile(tmp_path, stable_seconds=600, max_upload_mb=200)) as served:
        process = psutil.Process(served.process.pid)
        before = rss_mb(process)
        peak, (status, answer) = peak_rss_mb(process, lambda: stow(served, body, boundary))
        lines = log_lines(served, "STOW-RS")
    print(f"STOW-RS, {len(body) / MB:.0f} MB body of {len(parts)} parts: {status}, server RSS {before:.0f} -> "
          f"peak {peak:.0f} MB, {len(lines)} log line(s)")
    assert status == 202 and len(answer["00081199"]["Value"]) == len(study) and len(answer["00081198"]["Value"]) == 60
    assert len(lines) == 1 and f"{len(study)} instance(s) stored, 60 refused" in lines[0]
    assert peak - before < 60, "the body (120 MB) must not be held in memory"


@pytest.mark.slow   # an analysis whose results cannot be sent
def test_health_without_the_token_tells_liveness_only(tmp_path):
    study = phantom_study(tmp_path / "src", n_slices=8, size=64)
    with serve(dicom_profile(tmp_path)) as served:
        assert send(receiver_port(tmp_path), study) == [0] * len(study)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            full = served.json("/health")
            if full["dicom_send"]["failing"]:
                break
            time.sleep(0.3)
        status, _, body = served.request("GET", "/health", token=False)
    assert full["dicom_send"]["failures"][0]["last_error"], full  # the token sees the PACS's error
    assert status == 200 and json.loads(body) == {"status": "ok", "version": __version__}
    study_uid = full["dicom_send"]["failures"][0]["study"]
    assert study_uid.encode() not in body and b"127.0.0.1" not in body and b"PACS" not in body


def receiver_port(folder: Path) -> int:
    return load_profile(folder / "profile.yaml").dicom.port  # type: ignore[union-attr]


with_sequence = with_raw_elements   # a private SQ element's bytes


SQ_START = struct.pack("<HH2sHL", 0x0011, 0x1010, b"SQ", 0, 0xFFFFFFFF)   # a private SQ of undefined length
ITEM_START, ITEM_END, SQ_END = (struct.pack("<HHL", 0xFFFE, e, n) for e, n in ((0xE000, 0xFFFFFFFF), (0xE00D, 0), (0xE0DD, 0)))
EMPTY_ITEM = struct.pack("<HHL", 0xFFFE, 0xE000, 0)


@pytest.mark.parametrize("kind", ["items", "depth"])
def test_nested_elements_are_counted_at_every_depth_before_pydicom_parses_them(tmp_path, kind):
    study = phantom_study(tmp_path / "s", n_slices=2, size=64)
    if kind == "items":   # 300,000 empty items in one sequence: 2.4 MB
        sequence, problem = SQ_START + EMPTY_ITEM * 300_000 + SQ_END, f"more than {MAX_TOTAL_ELEMENTS} data elements in all"
    else:                 # sequences nested 5,000 deep: 100 KB
        sequence, problem = (SQ_START + ITEM_START) * 5000 + (ITEM_END + SQ_END) * 5000, \
            f"sequences nested more than {MAX_SEQUENCE_DEPTH} deep"
    bomb = with_sequence(study[0], tmp_path / "bomb.dcm", sequence)
    start = time.monotonic()
    with pytest.raises(TooManyElementsError, match=f"bomb.dcm: {problem}"):
        read_header(bomb)
    with pytest.raises(ValueError, match=problem):
        check_instance(bomb.read_bytes())
    assert time.monotonic() - start < 3
    fine = with_sequence(study[1], tmp_path / "fine.dcm", (SQ_START + ITEM_START) * 8 + (ITEM_END + SQ_END) * 8
                         + SQ_START + EMPTY_ITEM * 1000 + SQ_END)
    assert read_header(fine).Rows == 64 and check_instance(fine.read_bytes()).Rows == 64


def pacs_profile(tmp_path: Path, pacs: StorageSCP) -> Path:
    """A server profile receiving DICOM into tmp_path/received, quick to call a study complete (0.5 s
    quiet), sending results to ``pacs``."""
    return write_profile(tmp_path, sections={
        "watcher": {"poll_seconds": 0.2, "stable_seconds": 0.5},
        "dicom": {"port": free_port(), "inbox": str(tmp_path / "received"),
                  "destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}]}})


@pytest.mark.slow   # two analyses of a study, results into a PACS
def test_a_study_analysed_again_after_more_images_supersedes_its_earlier_report(tmp_path):
    pacs = StorageSCP("PACS").start()
    path = pacs_profile(tmp_path, pacs)
    study = phantom_study(tmp_path / "src", n_slices=24, size=96, seed=2)
    try:
        with serve(path) as served:
            for n, part in enumerate((study[:12], study[12:]), start=1):   # the sender pauses between halves
                assert send(receiver_port(tmp_path), part) == [0] * len(part)
                deadline = time.monotonic() + 120
                while served.json("/health")["dicom_send"]["sent"] < 2 * n and time.monotonic() < deadline:  # SR, heatmaps
                    time.sleep(0.3)
    finally:
        pacs.stop()
    first, second = [ds for ds in pacs.received if ds.Modality == "SR"]
    predecessor = second.PredecessorDocumentsSequence[0]
    assert predecessor.StudyInstanceUID == first.StudyInstanceUID == second.StudyInstanceUID
    assert predecessor.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID == second.SeriesInstanceUID
    assert predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert (first.InstanceNumber, second.InstanceNumber) == (1, 2)
    assert any(f"supersedes report {first.SOPInstanceUID}" in str(item.get("TextValue", ""))
               for item in sr_items(second))
    assert "PredecessorDocumentsSequence" not in first
    [old_page] = (tmp_path / "results" / "dicom" / ".superseded").glob("*/report.html")
    link = re.search(r'class="superseded">.*?href="([^"]+)"', old_page.read_text()).group(1)
    assert (old_page.parent / link).resolve() == (tmp_path / "results" / "dicom" / first.StudyInstanceUID / "report.html")


@pytest.mark.slow   # an analysis, results into a PACS
def test_a_sender_pausing_inside_its_association_gets_one_verdict_on_the_whole_study(tmp_path):
    pacs = StorageSCP("PACS").start()
    path = pacs_profile(tmp_path, pacs)
    study = phantom_study(tmp_path / "src", n_slices=24, size=96, seed=2)
    try:
        with serve(path) as served:   # a pause of 20 x stable_seconds (longer than an analysis) after 12 of 24 slices, the association open
            assert send(receiver_port(tmp_path), study, pause=(12, 10.0)) == [0] * len(study)
            record = tmp_path / "results" / "dicom" / pydicom.dcmread(study[0]).StudyInstanceUID / "source.json"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not (
                    record.is_file() and json.loads(record.read_text())["n_files"] == len(study)
                    and (health := served.json("/health"))["dicom_send"]["sent"] == 2 and not health["dicom_send"]["pending"]):
                time.sleep(0.3)   # two jobs: the SR, then the heatmaps
    finally:
        pacs.stop()
    assert health["dicom_send"]["sent"] == 2 and health["dicom_send"]["pending"] == 0
    assert [ds.Modality for ds in pacs.received].count("SR") == 1
    assert not (tmp_path / "results" / "dicom" / ".superseded").exists()


@pytest.mark.slow   # an analysis, results into a PACS
def test_a_study_announcing_its_instance_count_waits_for_all_of_them(tmp_path):
    pacs = StorageSCP("PACS").start()
    path = pacs_profile(tmp_path, pacs)
    study = []
    for source in phantom_study(tmp_path / "src", n_slices=24, size=96, seed=2):
        ds = pydicom.dcmread(source)
        ds.NumberOfStudyRelatedInstances = 24
        ds.save_as(source)
        study.append(source)
    try:
        with serve(path) as served:   # two associations, 10 s (20 x stable_seconds) apart
            assert send(receiver_port(tmp_path), study[:12]) == [0] * 12
            time.sleep(10)
            assert send(receiver_port(tmp_path), study[12:]) == [0] * 12
            record = tmp_path / "results" / "dicom" / pydicom.dcmread(study[0]).StudyInstanceUID / "source.json"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not (
                    record.is_file() and (health := served.json("/health"))["dicom_send"]["sent"]
                    and not health["dicom_send"]["pending"]):
                time.sleep(0.3)
    finally:
        pacs.stop()
    assert json.loads(record.read_text())["n_files"] == len(study)
    assert [ds.Modality for ds in pacs.received].count("SR") == 1
    assert not (tmp_path / "results" / "dicom" / ".superseded").exists()
