"""The DICOM receiver and sender against pynetdicom peers on loopback (no apt packages needed):
receive -> study complete -> verdict -> SR and Secondary Capture delivered to a storage SCP."""

from __future__ import annotations

import json
import shutil
import stat
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import (ComprehensiveSRStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless,
                         RLELossless, SecondaryCaptureImageStorage)

from edge.dicomnet.outbox import Outbox
from edge.dicomnet.receiver import CANNOT_UNDERSTAND, SOP_CLASS_NOT_SUPPORTED, Receiver
from edge.dicomnet.results import FINDINGS
from edge.dicomnet.service import DicomService
from edge import __version__
from edge.cli import main
from edge.engine import Engine
from edge.ingest import load_study
from edge.phantom import make_phantom, write_dicom_series
from edge.profile import DicomPeer, DicomSettings, WatcherSettings
from edge.watch import scan, watch
from tests.helpers.dicomnet import StorageSCP, code_of, echo, free_port, phantom_study, send, sr_by_meaning, sr_items
from tests.helpers.paths import SAMPLES
from tests.helpers.profiles import write_profile

NOW = WatcherSettings(poll_seconds=0.1, stable_seconds=0.0)
CT = ("ct",)   # the modality of the demonstration model: what these receivers accept


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.default()


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> list[Path]:
    return phantom_study(tmp_path_factory.mktemp("phantom") / "s", ground_glass=3)


@pytest.fixture
def receiver(tmp_path):
    r = Receiver(DicomSettings(port=0, allowed_callers=(DicomPeer("TESTSCU"), DicomPeer("LOCALONLY", "127.0.0.1"))),
                 tmp_path / "inbox", CT)
    r.start()
    yield r
    r.stop()


def stored(inbox: Path) -> list[Path]:
    return sorted(p for p in inbox.rglob("*.dcm") if ".receiving" not in p.parts)


def test_instances_are_stored_unchanged_under_the_study_uid_owner_only(receiver, study):
    assert send(receiver.port, study) == [0] * len(study)
    study_uid = pydicom.dcmread(study[0]).StudyInstanceUID
    files = stored(receiver.inbox.root)
    assert {p.parent.name for p in files} == {study_uid}
    by_uid = {pydicom.dcmread(p).SOPInstanceUID: p for p in study}
    for p in files:  # the data set bytes as sent: no re-encoding
        assert pydicom.dcmread(p).PixelData == pydicom.dcmread(by_uid[p.stem]).PixelData
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(files[0].parent.stat().st_mode) == 0o700
    assert not list(receiver.inbox.receiving.iterdir())


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless])
def test_every_phantom_transfer_syntax_is_received_as_sent_and_ingested(receiver, tmp_path, syntax):
    files = write_dicom_series(make_phantom(n_slices=6, size=64, seed=1), tmp_path / "src", transfer_syntax=syntax)
    assert send(receiver.port, files) == [0] * len(files)
    received = stored(receiver.inbox.root)
    assert {pydicom.dcmread(p).file_meta.TransferSyntaxUID for p in received} == {syntax}
    assert load_study(received[0].parent).n_slices == len(files)


def test_c_echo_and_allowed_callers(receiver):
    assert echo(receiver.port, "TESTSCU") == (True, False, 0)
    assert echo(receiver.port, "LOCALONLY") == (True, False, 0)
    established, rejected, _ = echo(receiver.port, "INTRUDER")
    assert not established and rejected


def test_caller_from_another_address_is_rejected(tmp_path):
    r = Receiver(DicomSettings(port=0, allowed_callers=(DicomPeer("TESTSCU", "192.0.2.7"),)), tmp_path / "inbox", CT)
    r.start()
    try:
        assert echo(r.port, "TESTSCU")[:2] == (False, True)
    finally:
        r.stop()


def test_non_ct_and_truncated_instances_are_refused_cleanly(receiver, study, tmp_path):
    sc = pydicom.dcmread(study[0])
    sc.SOPClassUID = sc.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    sc.save_as(tmp_path / "sc.dcm")
    data = study[1].read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 5000])
    assert send(receiver.port, [tmp_path / "sc.dcm"]) == [SOP_CLASS_NOT_SUPPORTED]
    assert send(receiver.port, [tmp_path / "cut.dcm"]) == [CANNOT_UNDERSTAND]
    assert send(receiver.port, study[2:3]) == [0]  # the receiver still works
    assert len(stored(receiver.inbox.root)) == 1


@pytest.mark.slow
def test_same_study_twice_changes_nothing_and_dropped_association_keeps_acknowledged(receiver, study):
    assert send(receiver.port, study[:10], abort_after=6) == [0] * 6
    assert len(stored(receiver.inbox.root)) == 6
    assert send(receiver.port, study) == [0] * len(study)
    before = {p: p.stat().st_mtime_ns for p in stored(receiver.inbox.root)}
    assert send(receiver.port, study) == [0] * len(study)
    assert {p: p.stat().st_mtime_ns for p in stored(receiver.inbox.root)} == before
    assert len(before) == len(study)


def pacs_and_service(tmp_path: Path) -> tuple[StorageSCP, DicomService]:
    """A storage SCP standing for PACS and a service (inbox, outbox under ``tmp_path``) receiving and
    sending to it, its results delivered after each watcher pass (no sender thread)."""
    pacs = StorageSCP("PACS").start()
    settings = DicomSettings(port=0, destinations=(DicomPeer("PACS", "127.0.0.1", pacs.port),))
    service = DicomService(settings, tmp_path / "inbox", tmp_path / "outbox", CT)
    service.start(send=False)
    return pacs, service


@pytest.mark.slow
def test_received_study_is_analysed_and_the_sr_reaches_pacs(tmp_path, study, engine):
    pacs, service = pacs_and_service(tmp_path)
    inbox, outbox = service.inbox, service.results
    try:
        assert send(service.receiver.port, study) == [0] * len(study)
        summary = watch(engine, inbox, outbox, NOW, once=True, after_pass=service.after_pass)
    finally:
        service.stop()
        pacs.stop()
    assert summary.done == 1
    study_uid = pydicom.dcmread(study[0]).StudyInstanceUID
    doc = json.loads((outbox / study_uid / "result.json").read_text())
    classes = [ds.SOPClassUID for ds in pacs.received]
    assert classes == [ComprehensiveSRStorage] + [SecondaryCaptureImageStorage] * len(doc["heatmaps"])
    assert all(ds.StudyInstanceUID == study_uid for ds in pacs.received)
    assert len({ds.SeriesInstanceUID for ds in pacs.received}) == 2
    sr = pacs.received[0]
    assert sr.PatientID == "PHANTOM-0001" and sr.Manufacturer == "ctedge"
    items = sr_by_meaning(sr)
    assert code_of(items["Finding"]) == (FINDINGS[doc["label"]].value, "SCT", FINDINGS[doc["label"]].meaning)
    for c, p in doc["probabilities"].items():
        assert float(items[f"Probability of {c}"].MeasuredValueSequence[0].NumericValue) == pytest.approx(p, abs=1e-6)
    assert items["Comment"].TextValue.startswith(doc["model"]["banner"] + ".")
    assert items["Validation evidence"].TextValue == doc["model"]["validation"] == "no validation recorded"
    referenced = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in sr_items(sr) if i.ValueType == "IMAGE"}
    sources = {pydicom.dcmread(inbox / study_uid / s["file"]).SOPInstanceUID for s in doc["slices_used"]}
    assert referenced == sources
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == study_uid
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(study[0]).SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence} == sources
    for sc, heatmap in zip(pacs.received[1:], doc["heatmaps"]):  # the overlay with its caption and banner
        png = cv2.imread(str(outbox / study_uid / heatmap["png"]))
        assert np.array_equal(sc.pixel_array, cv2.cvtColor(png, cv2.COLOR_BGR2RGB))
        assert sc.BurnedInAnnotation == "YES" and sc.PatientID == "PHANTOM-0001"
        assert (sc.Manufacturer, sc.SoftwareVersions) == ("ctedge", __version__)
    assert service.outbox.status() == {"pending": 0, "failing": 0, "sent": 1, "skipped": 0, "failures": []}


def test_the_sr_is_queued_as_soon_as_the_verdict_is_known_and_the_heatmaps_follow(tmp_path, study, engine):
    pacs, service = pacs_and_service(tmp_path)
    inbox, outbox = service.inbox, service.results
    told = []

    def on_verdict(entry, doc):
        service.send_verdict(entry, doc)
        told.append((doc.get("heatmaps"), [p.name for p in outbox.rglob("*.png")], service.outbox.status()["pending"]))

    try:
        assert send(service.receiver.port, study) == [0] * len(study)
        summary = watch(engine, inbox, outbox, NOW, once=True, after_pass=service.after_pass, on_verdict=on_verdict)
    finally:
        service.stop()
        pacs.stop()
    assert summary.done == 1
    assert told == [(None, [], 1)]      # queued before any heatmap or slice image was made
    study_uid = pydicom.dcmread(study[0]).StudyInstanceUID
    doc = json.loads((outbox / study_uid / "result.json").read_text())
    assert doc["heatmaps"]
    assert [ds.SOPClassUID for ds in pacs.received] == \
        [ComprehensiveSRStorage] + [SecondaryCaptureImageStorage] * len(doc["heatmaps"])
    sr = pacs.received[0]
    items = sr_by_meaning(sr)
    assert code_of(items["Finding"]) == (FINDINGS[doc["label"]].value, "SCT", FINDINGS[doc["label"]].meaning)
    referenced = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in sr_items(sr) if i.ValueType == "IMAGE"]
    assert referenced == [pydicom.dcmread(inbox / study_uid / s["file"]).SOPInstanceUID for s in doc["slices_used"]]
    assert service.outbox.status() == {"pending": 0, "failing": 0, "sent": 2, "skipped": 0, "failures": []}
    # analysed again (same fingerprint, e.g. after a crash before the commit): nothing is sent twice
    service.send_verdict(next(iter(scan(inbox).entries)), doc)
    assert service.queue_results() == 0 and service.outbox.status()["sent"] == 2


def test_destination_down_keeps_the_result_until_it_is_up(tmp_path, study, engine):
    port = free_port()
    settings = DicomSettings(port=0, destinations=(DicomPeer("PACS", "127.0.0.1", port),))
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    (inbox / "s").mkdir(parents=True)
    for f in study:
        (inbox / "s" / f.name).write_bytes(f.read_bytes())
    service = DicomService(settings, inbox, outbox, CT, retry_base_s=0.01)
    watch(engine, inbox, outbox, NOW, once=True, after_pass=service.after_pass)
    status = service.outbox.status()
    assert status["pending"] == 1 and status["failing"] == 1 and "no association" in status["failures"][0]["last_error"]
    restarted = DicomService(settings, inbox, outbox, CT)  # the queue survives a restart
    pacs = StorageSCP("PACS", port).start()
    try:
        assert restarted.outbox.deliver_due(now=float("inf")) == 1
    finally:
        pacs.stop()
    assert pacs.received[0].SOPClassUID == ComprehensiveSRStorage
    assert restarted.outbox.status()["pending"] == 0
    restarted.after_pass()  # delivered once: never queued again
    assert restarted.outbox.status() == {"pending": 0, "failing": 0, "sent": 1, "skipped": 0, "failures": []}
    assert not list((outbox / ".dicom-send" / "sent").rglob("*.dcm"))


def test_the_sender_thread_delivers_a_queued_job_at_once_and_stops_when_told(tmp_path, study):
    pacs = StorageSCP("PACS").start()
    outbox = Outbox(tmp_path / "send", "CTEDGE")
    stop = threading.Event()
    sender = threading.Thread(target=outbox.run, args=(stop, 600.0), daemon=True)   # a poll far longer than the test
    sender.start()
    try:
        time.sleep(0.2)                                                 # the sender is waiting now
        outbox.enqueue("job", "s", DicomPeer("PACS", "127.0.0.1", pacs.port), [pydicom.dcmread(study[0])])
        deadline = time.monotonic() + 60
        while not pacs.received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(pacs.received) == 1, "delivered when queued, not at the next poll"
    finally:
        stop.set()
        outbox.wake()
        sender.join(30)
        pacs.stop()
    assert not sender.is_alive()


def test_ctedge_watch_with_a_dicom_profile_sends_results(tmp_path, study):
    pacs = StorageSCP("PACS").start()
    (tmp_path / "inbox" / "s").mkdir(parents=True)
    for f in study:
        (tmp_path / "inbox" / "s" / f.name).write_bytes(f.read_bytes())
    profile = write_profile(tmp_path / "p.yaml", watcher={"stable_seconds": 0},
                            dicom={"port": 0, "destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}]})
    try:
        assert main(["watch", str(tmp_path / "inbox"), "--out", str(tmp_path / "outbox"), "--config", str(profile),
                     "--once"]) == 0
    finally:
        pacs.stop()
    assert [ds.Modality for ds in pacs.received][:2] == ["SR", "OT"]


def test_study_with_invalid_uids_is_analysed_but_not_sent(tmp_path, engine):
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    shutil.copytree(SAMPLES / "COVID-19_P002", inbox / "P002")  # hyphenated GUIDs as UIDs
    settings = DicomSettings(port=0, destinations=(DicomPeer("PACS", "127.0.0.1", free_port()),))
    service = DicomService(settings, inbox, outbox, CT)
    assert watch(engine, inbox, outbox, NOW, once=True, after_pass=service.after_pass).done == 1
    status = service.outbox.status()
    assert (status["pending"], status["skipped"]) == (0, 1)
    reason = service.outbox.jobs("skipped")[0].last_error
    assert "is not a valid DICOM UID" in reason and "P002" in reason


def test_a_refused_instance_is_retried_alone_and_nothing_is_sent_twice(tmp_path, study):
    pacs = StorageSCP("PACS", refuse_once={pydicom.dcmread(study[1]).SOPInstanceUID}).start()
    outbox = Outbox(tmp_path / "send", "CTEDGE", retry_base_s=0.01)
    try:
        assert outbox.enqueue("job1", "s", DicomPeer("PACS", "127.0.0.1", pacs.port), [pydicom.dcmread(f) for f in study[:3]])
        assert outbox.deliver_due() == 0
        job = outbox.jobs()[0]
        assert job.attempts == 1 and "status 0xA700" in job.last_error and len(job.acknowledged) == 1
        assert outbox.deliver_due(now=float("inf")) == 1
    finally:
        pacs.stop()
    assert sorted(ds.SOPInstanceUID for ds in pacs.received) == sorted(pydicom.dcmread(f).SOPInstanceUID for f in study[:3])
