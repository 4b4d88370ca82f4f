"""Enhanced CT and Legacy Converted Enhanced CT (one multi-frame object) built with highdicom from the
real sample series: read frame by frame into the same volume and verdict as the single-frame series,
received over DICOM (C-STORE and STOW-RS) and analysed, malformed objects refused naming the file."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (ComprehensiveSRStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless,
                         LegacyConvertedEnhancedCTImageStorage, SecondaryCaptureImageStorage)

from edge.cli import main
from edge.dicomnet.receiver import SOP_CLASS_NOT_SUPPORTED, Receiver
from edge.dicomnet.service import DicomService
from edge.engine import Engine
from edge.errors import CorruptFileError, FileTooLargeError, NoUsableSeriesError
from edge.ingest import load_study
from edge.limits import MAX_FRAMES
from edge.profile import DicomPeer, DicomSettings, WatcherSettings, load_profile
from edge.watch import watch
from tests.helpers.dicomnet import StorageSCP, dciodvfy_errors, send, send_statuses, sr_items
from tests.helpers.enhanced import enhanced_ct, legacy_enhanced_ct, reorder_frames
from tests.helpers.paths import SAMPLES

SERIES = SAMPLES / "Normal_normal001"      # 10 real slices of a real series with valid UIDs
KINDS = ("legacy", "enhanced")
SHUFFLE = [3, 7, 0, 9, 1, 5, 2, 8, 6, 4]   # frame i of the object holds what was frame SHUFFLE[i]


def sources(folder: Path = SERIES) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def build(kind: str, target: Path, series: Path = SERIES, transfer_syntax: str | None = None) -> Path:
    """The series as one object of ``kind`` at ``target`` (alone in its folder)."""
    legacy = legacy_enhanced_ct(sources(series), target.with_name("legacy.tmp"), transfer_syntax)
    if kind == "legacy":
        return legacy.rename(target)
    enhanced_ct(legacy, target)
    legacy.unlink()
    return target


@pytest.fixture(scope="module")
def objects(tmp_path_factory) -> dict[str, Path]:
    """Each kind as the only file of its study folder, in the sources' JPEG Lossless."""
    root = tmp_path_factory.mktemp("multiframe")
    return {kind: build(kind, root / kind / f"{kind}.dcm") for kind in KINDS}


@pytest.fixture(scope="module")
def single_frame():
    return load_study(SERIES)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.default()


def copy_alone(tmp_path: Path, source: Path, name: str = "object.dcm") -> Path:
    folder = tmp_path / uuid.uuid4().hex[:8]
    folder.mkdir()
    return shutil.copy(source, folder / name)


@pytest.mark.parametrize("kind", KINDS)
def test_the_object_gives_the_volume_of_the_single_frame_series(objects, single_frame, kind):
    assert pydicom.dcmread(objects[kind], stop_before_pixels=True).SOPClassUID == {
        "legacy": LegacyConvertedEnhancedCTImageStorage, "enhanced": EnhancedCTImageStorage}[kind]
    volume = load_study(objects[kind].parent)
    assert volume.n_slices == single_frame.n_slices == 10
    assert np.array_equal(volume.hu, single_frame.hu), "the same HU, frame for slice"
    assert np.array_equal(volume.position_mm, single_frame.position_mm)
    assert (volume.pixel_spacing_mm, volume.slice_thickness_mm) == (single_frame.pixel_spacing_mm, 2.0)
    assert volume.series_uid == pydicom.dcmread(objects[kind], stop_before_pixels=True).SeriesInstanceUID
    assert volume.files == [objects[kind].name] * 10 and volume.warnings == []


def test_uncompressed_frames_and_resizing_while_decoding(tmp_path, single_frame):
    path = build("legacy", tmp_path / "s" / "native.dcm", transfer_syntax=ExplicitVRLittleEndian)
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(load_study(path.parent).hu, single_frame.hu)
    resized, expected = load_study(path.parent, resize_to=64), load_study(SERIES, resize_to=64)
    assert resized.hu is None and np.array_equal(resized.resized, expected.resized)


@pytest.mark.parametrize("kind", KINDS)
def test_frames_are_ordered_by_their_positions_not_by_frame_number(objects, single_frame, tmp_path, kind):
    path = reorder_frames(objects[kind], tmp_path / "shuffled.dcm", SHUFFLE)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in ds.PerFrameFunctionalGroupsSequence]
    assert z != sorted(z, reverse=True), "the frame numbers no longer follow the positions"
    volume = load_study(path)
    assert np.array_equal(volume.hu, single_frame.hu)
    assert np.array_equal(volume.position_mm, single_frame.position_mm)


@pytest.mark.parametrize("kind", KINDS)
def test_the_object_gets_the_verdict_of_the_single_frame_series(objects, engine, kind):
    single = engine.run(SERIES).to_dict()
    multi = engine.run(objects[kind].parent).to_dict()
    assert multi["probabilities"] == single["probabilities"]
    assert multi["label"] == single["label"]
    assert [s["z"] for s in multi["slices_used"]] == [s["z"] for s in single["slices_used"]]


def test_ctedge_predict_reads_the_object(objects, capsys):
    assert main(["predict", str(objects["enhanced"].parent), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["series"]["chosen"] == pydicom.dcmread(objects["enhanced"], stop_before_pixels=True).SeriesInstanceUID
    assert doc["input"]["slice_thickness_mm"] == 2.0 and doc["input"]["n_files"] == 1


def test_a_frame_without_position_is_refused_naming_the_file_and_the_frame(objects, tmp_path, capsys):
    path = copy_alone(tmp_path, objects["enhanced"], "no-position.dcm")
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[3].PlanePositionSequence
    ds.save_as(path)
    with pytest.raises(CorruptFileError) as caught:
        load_study(path.parent)
    assert Path(caught.value.path) == path
    assert "frame 4 of 10 states no position (PlanePositionSequence" in caught.value.problem
    assert main(["predict", str(path.parent)]) == 2
    err = capsys.readouterr().err
    assert "no-position.dcm: frame 4 of 10 states no position" in err and "Traceback" not in err


def test_an_object_declaring_more_frames_than_the_limit_is_refused_before_decoding(objects, tmp_path):
    path = copy_alone(tmp_path, objects["legacy"], "many-frames.dcm")
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = MAX_FRAMES + 1
    ds.save_as(path)
    with pytest.raises(FileTooLargeError) as caught:
        load_study(path.parent)
    assert Path(caught.value.path) == path
    assert caught.value.problem == f"declares {MAX_FRAMES + 1} frames, above the limit of {MAX_FRAMES}; not read"


def test_frames_larger_than_a_slice_and_a_wrong_frame_count_are_refused(objects, tmp_path):
    path = copy_alone(tmp_path, objects["legacy"], "huge.dcm")
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 4096
    ds.save_as(path)
    with pytest.raises(FileTooLargeError, match="frames of 4096 x 4096 pixels"):
        load_study(path.parent)
    path = copy_alone(tmp_path, objects["legacy"], "short.dcm")
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[-1]
    ds.save_as(path)
    with pytest.raises(CorruptFileError, match="PerFrameFunctionalGroupsSequence has 9 item.s. for 10 frames"):
        load_study(path.parent)


def test_a_jpeg_2000_frame_stating_another_size_is_refused_before_decoding(tmp_path, single_frame):
    path = build("legacy", tmp_path / "s" / "j2k.dcm", transfer_syntax=JPEG2000Lossless)
    assert np.array_equal(load_study(path.parent).hu, single_frame.hu)
    ds = pydicom.dcmread(path)
    frames = [bytearray(f) for f in generate_frames(ds.PixelData, number_of_frames=10)]
    frames[2][8:16] = struct.pack(">2I", 65536, 65536)    # the SIZ marker's image width and height
    ds.PixelData = encapsulate([bytes(f) for f in frames])
    ds.save_as(path)
    with pytest.raises(CorruptFileError, match=r"codestream of frame 3 states \(65536, 65536, 1\), the header 512 x 512"):
        load_study(path.parent)


def test_the_frame_type_is_each_frames_image_type(objects, tmp_path):
    path = copy_alone(tmp_path, objects["enhanced"], "scout.dcm")
    ds = pydicom.dcmread(path)
    assert ds.ImageType[2] == "AXIAL"
    ds.SharedFunctionalGroupsSequence[0].CTImageFrameTypeSequence[0].FrameType = ["ORIGINAL", "PRIMARY", "LOCALIZER",
                                                                                  "NONE"]
    ds.save_as(path)
    with pytest.raises(NoUsableSeriesError, match="no axial CT series: localizer"):
        load_study(path.parent)


def test_a_bad_object_beside_a_good_series_is_skipped_with_a_warning(objects, tmp_path, single_frame):
    study = tmp_path / "study"
    shutil.copytree(SERIES, study)
    ds = pydicom.dcmread(objects["legacy"])
    for item in ds.PerFrameFunctionalGroupsSequence:
        del item.PlanePositionSequence
    ds.save_as(study / "converted.dcm")
    volume = load_study(study)
    assert np.array_equal(volume.hu, single_frame.hu)
    assert any("converted.dcm: frame 1 of 10 states no position" in w for w in volume.warnings)


# --- over DICOM ------------------------------------------------------------------------------------

def test_the_receiver_negotiates_and_stores_both_classes(objects, tmp_path):
    receiver = Receiver(DicomSettings(port=0), tmp_path / "inbox", ("ct",))
    xray_only = Receiver(DicomSettings(port=0), tmp_path / "xray-inbox", ("xray",))
    assert receiver.refusal(EnhancedCTImageStorage) is None
    assert receiver.refusal(LegacyConvertedEnhancedCTImageStorage) is None
    assert xray_only.refusal(EnhancedCTImageStorage) == "this device has no CT model (it reads: X-ray)"
    receiver.start()
    try:
        statuses = send_statuses(receiver.port, [objects["legacy"], objects["enhanced"]])
    finally:
        receiver.stop()
    assert [s.Status for s in statuses] == [0, 0], [s.get("ErrorComment") for s in statuses]
    stored = sorted(p for p in (tmp_path / "inbox").rglob("*.dcm") if ".receiving" not in p.parts)
    assert len(stored) == 2 and len({p.parent for p in stored}) == 1    # one study
    for path in stored:
        assert load_study(path).n_slices == 10
    xray_only.start()
    try:
        assert send(xray_only.port, [objects["enhanced"]]) == [SOP_CLASS_NOT_SUPPORTED]
    finally:
        xray_only.stop()


@pytest.mark.external
def test_dcmtk_storescu_sends_both_classes_when_it_proposes_them(objects, tmp_path):
    """storescu's default list of presentation contexts has no Legacy Converted Enhanced CT: ``-R``
    proposes the classes of the files sent, ``-xs`` their JPEG Lossless (docs/dicom.md)."""
    if shutil.which("storescu") is None:
        pytest.skip("storescu (dcmtk) is not installed")
    receiver = Receiver(DicomSettings(port=0), tmp_path / "inbox", ("ct",))
    receiver.start()
    try:
        command = ["storescu", "-aec", "CTEDGE", "127.0.0.1", str(receiver.port), str(objects["legacy"])]
        default = subprocess.run(command, capture_output=True, text=True, timeout=60)
        proposed = subprocess.run([*command[:1], "-R", "-xs", *command[1:], str(objects["enhanced"])],
                                  capture_output=True, text=True, timeout=60)
    finally:
        receiver.stop()
    assert default.returncode != 0 and "No presentation context for: (CTl)" in default.stderr
    assert proposed.returncode == 0, proposed.stderr
    stored = [p for p in (tmp_path / "inbox").rglob("*.dcm") if ".receiving" not in p.parts]
    assert sorted(load_study(p).n_slices for p in stored) == [10, 10]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_an_object_sent_by_c_store_is_analysed_and_its_sr_reaches_pacs(objects, engine, tmp_path, kind):
    pacs = StorageSCP("PACS").start()
    settings = DicomSettings(port=0, destinations=(DicomPeer("PACS", "127.0.0.1", pacs.port),))
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    service = DicomService(settings, inbox, outbox, ("ct",))
    service.start(send=False)
    try:
        assert send(service.receiver.port, [objects[kind]]) == [0]
        summary = watch(engine, inbox, outbox, WatcherSettings(poll_seconds=0.1, stable_seconds=0.0), once=True,
                        after_pass=service.after_pass)
    finally:
        service.stop()
        pacs.stop()
    assert summary.done == 1
    header = pydicom.dcmread(objects[kind], stop_before_pixels=True)
    doc = json.loads((outbox / header.StudyInstanceUID / "result.json").read_text())
    assert doc["probabilities"] == engine.run(SERIES).to_dict()["probabilities"]
    sr = next(ds for ds in pacs.received if ds.SOPClassUID == ComprehensiveSRStorage)
    referenced = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in sr_items(sr) if i.ValueType == "IMAGE"}
    assert referenced == {header.SOPInstanceUID}
    captures = [ds for ds in pacs.received if ds.SOPClassUID == SecondaryCaptureImageStorage]
    assert len(captures) == len(doc["heatmaps"]) > 0
    assert all(ds.StudyInstanceUID == header.StudyInstanceUID for ds in captures)


@pytest.mark.slow
def test_stow_rs_stores_the_object_and_the_api_upload_analyses_it(objects, engine, tmp_path, monkeypatch):
    from edge.cli.serve import serve_app
    from tests.helpers.server import write_profile

    monkeypatch.setenv("CTEDGE_API_TOKEN", "stow-token")
    auth = {"Authorization": "Bearer stow-token"}
    path = write_profile(tmp_path, sections={"dicom": {"port": 0, "inbox": str(tmp_path / "received")}})
    app = serve_app(load_profile(path), engine)
    client = app.test_client()
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + objects["enhanced"].read_bytes()
            + f"\r\n--{boundary}--\r\n".encode())
    try:
        answer = client.post("/dicom-web/studies", data=body, headers={
            **auth, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        upload = client.post("/api/v1/studies", headers=auth,
                             data={"files": [(io.BytesIO(objects["legacy"].read_bytes()), "legacy.dcm")]})
        assert upload.status_code == 202, upload.get_json()
        deadline, state = time.monotonic() + 90, {}
        while time.monotonic() < deadline and state.get("status") not in ("done", "failed"):
            time.sleep(0.2)
            state = client.get(upload.headers["Location"], headers=auth).get_json()
    finally:
        app.extensions["ctedge"]["dicom"].stop()
        app.extensions["ctedge"]["jobs"].stop()
    assert answer.status_code == 200, answer.get_json()
    header = pydicom.dcmread(objects["enhanced"], stop_before_pixels=True)
    assert (tmp_path / "received" / header.StudyInstanceUID / f"{header.SOPInstanceUID}.dcm").is_file()
    assert state["status"] == "done", state
    assert state["result"]["probabilities"] == engine.run(SERIES).to_dict()["probabilities"]


# --- the whole real series ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("kind", KINDS)
def test_the_whole_real_series_as_one_object_gives_the_same_hu_and_probabilities(shared_data, engine, tmp_path, kind):
    series = shared_data / "Normal_normal001"
    path = build(kind, tmp_path / kind / f"{kind}.dcm", series)
    single, multi = load_study(series), load_study(path.parent)
    assert multi.n_slices == single.n_slices == 154
    assert np.array_equal(multi.hu, single.hu) and np.array_equal(multi.position_mm, single.position_mm)
    assert engine.run(path.parent).to_dict()["probabilities"] == engine.run(series).to_dict()["probabilities"]


# --- the test objects themselves ---------------------------------------------------------------------

@pytest.mark.external
@pytest.mark.parametrize("kind", KINDS)
def test_the_built_objects_pass_dciodvfy(objects, kind):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    assert dciodvfy_errors(objects[kind]) == []
