"""Chest radiographs over DICOM: a pynetdicom SCU sends pydicom-data's RG1_UNCR.dcm (a real PA chest CR)
to the receiver of a device with a CT and an X-ray bundle; it is stored, analysed as X-ray with the known
answer of the untrained placeholder bundle, and the SR and the heatmap Secondary Capture reach a storage
SCP. A receiver accepts the images of the modalities its device has a model for, and no others."""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import (ComprehensiveSRStorage, ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
                         DigitalXRayImageStorageForProcessing, SecondaryCaptureImageStorage)

from edge import CLASSES
from edge.card import PLACEHOLDER_BANNER, load_card
from edge.cli.serve import serve_app
from edge.dicomnet.receiver import SOP_CLASS_NOT_SUPPORTED, Receiver
from edge.dicomnet.results import FINDINGS, patient_orientation, result_objects
from edge.dicomnet.service import DicomService
from edge.engine import DEFAULT_BUNDLE, Device, Engine
from edge.explain import overlay
from edge.ingest.radiograph import study_modality
from edge.pipeline import prepare_radiograph
from edge.profile import WatcherSettings, load_profile
from edge.report import _captioned, _legible
from edge.watch import watch
from tests.helpers.bundles import IMAGE_WEIGHT, slice_probabilities
from tests.helpers.dicomnet import (StorageSCP, code_of, free_port, phantom_study, send, send_statuses, sr_by_meaning,
                                   sr_items)
from tests.helpers.profiles import DEMO_BUNDLE
from tests.helpers.profiles import write_profile as device_profile
from tests.helpers.server import write_profile as server_profile

NOW = WatcherSettings(poll_seconds=0.1, stable_seconds=0.0)


def pydicom_data(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom-data's {name} is not installed (pip install pydicom-data)")
    return Path(path)


@pytest.fixture(scope="module")
def rg1() -> Path:
    return pydicom_data("RG1_UNCR.dcm")


def device(folder: Path, bundles: list[Path], **dicom) -> Path:
    """A device profile with these bundles (the first one ``model.bundle``) and a ``dicom:`` section."""
    return device_profile(folder / "device.yaml", *bundles, name="box", model={"variant": "float32"}, dicom={"port": 0} | dicom)


def receiver_of(folder: Path, bundles: list[Path]) -> Receiver:
    """The started receiver of a device with these bundles, built as ``ctedge receive`` builds it."""
    profile = load_profile(device(folder, bundles))
    receiver = Receiver(profile.dicom, folder / "inbox", profile.model.modalities)
    receiver.start()
    return receiver


def stored(inbox: Path) -> list[Path]:
    return sorted(p for p in inbox.rglob("*.dcm") if ".receiving" not in p.parts)


def test_a_radiograph_is_received_analysed_as_xray_and_its_sr_and_heatmap_reach_pacs(tmp_path, rg1, xray_bundle,
                                                                                      caplog):
    pacs = StorageSCP("PACS").start()
    profile = load_profile(device(tmp_path, [DEFAULT_BUNDLE, xray_bundle],
                                  destinations=[{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}]))
    assert profile.model.modalities == ("ct", "xray")
    engine = Device.from_profile(profile)
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    service = DicomService(profile.dicom, inbox, outbox, profile.model.modalities)
    with caplog.at_level(logging.INFO, "ctedge.dicom"):
        service.start(send=False)
    try:
        assert send(service.receiver.port, [rg1]) == [0]
        summary = watch(engine, inbox, outbox, NOW, once=True, after_pass=service.after_pass)
    finally:
        service.stop()
        pacs.stop()
    assert "for CT, X-ray images" in caplog.text
    source = pydicom.dcmread(rg1)
    [received] = stored(inbox)
    assert received == inbox / source.StudyInstanceUID / f"{source.SOPInstanceUID}.dcm"
    assert pydicom.dcmread(received).PixelData == source.PixelData
    assert summary.done == 1

    # analysed as X-ray: the known answer of the placeholder, computed from the radiograph as the model reads it
    image = prepare_radiograph(rg1, load_card(xray_bundle).preprocessing).images[0]
    expected = slice_probabilities(np.array([image.mean()]), weight=IMAGE_WEIGHT)[0]
    doc = json.loads((outbox / source.StudyInstanceUID / "result.json").read_text())
    assert doc["modality"] == "xray" and doc["model"]["name"] == "xray-test-placeholder" and doc["input"]["view"] == "PA"
    np.testing.assert_allclose([doc["probabilities"][c] for c in CLASSES], expected, atol=1e-4)
    assert doc["label"] == CLASSES[int(np.argmax(expected))] and len(doc["heatmaps"]) == 1

    assert [ds.SOPClassUID for ds in pacs.received] == [ComprehensiveSRStorage, SecondaryCaptureImageStorage]
    assert all(ds.StudyInstanceUID == source.StudyInstanceUID for ds in pacs.received)
    assert len({ds.SeriesInstanceUID for ds in pacs.received}) == 2
    sr, sc = pacs.received
    assert (sr.PatientID, sr.Manufacturer) == (source.PatientID, "ctedge")
    assert sr.SeriesDescription == "ctedge X-ray verdict (not for clinical use)"
    items = sr_by_meaning(sr)
    assert code_of(items["Finding"]) == (FINDINGS[doc["label"]].value, "SCT", FINDINGS[doc["label"]].meaning)
    for c, p in doc["probabilities"].items():
        assert float(items[f"Probability of {c}"].MeasuredValueSequence[0].NumericValue) == pytest.approx(p, abs=1e-6)
    assert items["Decision rule"].TextValue == "most probable class of the radiograph"
    assert items["Algorithm Name"].TextValue == "xray-test-placeholder"
    assert items["Procedure reported"].ConceptCodeSequence[0].CodeValue == "399208008"    # Plain X-ray of chest
    assert items["Model status"].TextValue == "placeholder"
    assert items["Comment"].TextValue.startswith(PLACEHOLDER_BANNER + ". Test fixture, untrained")
    assert items["Validation evidence"].TextValue == "no validation recorded"
    assert code_of(items["Modality"]) == ("CR", "DCM", "Computed Radiography")    # of the image library group
    [reference] = [i.ReferencedSOPSequence[0] for i in sr_items(sr) if i.ValueType == "IMAGE"]
    assert (reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID) == \
        (ComputedRadiographyImageStorage, source.SOPInstanceUID)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence] == \
        [source.SOPInstanceUID]

    # the SC: the Grad-CAM of the identity-convolution placeholder (its input, scaled to 1) over the
    # radiograph, enlarged, with the caption and the placeholder banner burned in underneath
    heat = image.astype(np.float32) / image.max()
    picture = _legible(overlay(image, heat))
    bar = _captioned(np.zeros((0, picture.shape[1], 3), np.uint8), f"Grad-CAM for {doc['label']} on radiograph, view PA",
                     PLACEHOLDER_BANNER)
    expected_sc = cv2.cvtColor(np.vstack([picture, bar]), cv2.COLOR_BGR2RGB)
    assert sc.pixel_array.shape == expected_sc.shape
    assert np.abs(sc.pixel_array.astype(int) - expected_sc).max() <= 1
    np.testing.assert_array_equal(sc.pixel_array[-len(bar):], expected_sc[-len(bar):])   # the text exactly
    assert sc.BurnedInAnnotation == "YES" and sc.PatientID == source.PatientID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID and "Laterality" not in sc
    assert list(sc.PatientOrientation) == ["L", "F"]      # as the radiograph's


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG1_J2KR.dcm"])
@pytest.mark.parametrize("sop_class", [ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
                                       DigitalXRayImageStorageForProcessing])
def test_cr_and_dx_are_stored_as_sent_by_a_device_with_an_xray_model(tmp_path, xray_bundle, name, sop_class):
    ds = pydicom.dcmread(pydicom_data(name))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.Modality = "CR" if sop_class == ComputedRadiographyImageStorage else "DX"
    ds.save_as(tmp_path / name)
    receiver = receiver_of(tmp_path, [xray_bundle])
    try:
        assert send(receiver.port, [tmp_path / name]) == [0]
    finally:
        receiver.stop()
    [received] = stored(tmp_path / "inbox")
    copy = pydicom.dcmread(received)
    assert copy.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID and copy.PixelData == ds.PixelData
    assert study_modality(received.parent) == "xray"


def test_a_device_with_only_a_ct_model_refuses_a_radiograph(tmp_path, rg1, caplog):
    receiver = receiver_of(tmp_path, [DEFAULT_BUNDLE])
    try:
        with caplog.at_level(logging.WARNING, "ctedge.dicom"):
            [status] = send_statuses(receiver.port, [rg1])
    finally:
        receiver.stop()
    assert status.Status == SOP_CLASS_NOT_SUPPORTED
    assert status.ErrorComment == "this device has no X-ray model (it reads: CT)"
    assert "refused a Computed Radiography Image Storage instance from 'TESTSCU': this device has no X-ray model " \
           "(it reads: CT)" in caplog.text
    assert stored(tmp_path / "inbox") == []


def test_a_device_with_only_an_xray_model_refuses_ct_and_other_objects(tmp_path, xray_bundle):
    study = phantom_study(tmp_path / "ct", n_slices=2, size=64, seed=5)
    sc = pydicom.dcmread(study[1])
    sc.SOPClassUID = sc.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    receiver = receiver_of(tmp_path, [xray_bundle])
    try:
        ct, other = send_statuses(receiver.port, [study[0], sc])
    finally:
        receiver.stop()
    assert (ct.Status, ct.ErrorComment) == (SOP_CLASS_NOT_SUPPORTED, "this device has no CT model (it reads: X-ray)")
    assert (other.Status, other.ErrorComment) == \
        (SOP_CLASS_NOT_SUPPORTED, "this device reads X-ray images only")
    assert stored(tmp_path / "inbox") == []


def test_making_the_results_of_rg1_logs_no_patient_or_physician_name(rg1, xray_bundle, tmp_path, caplog):
    """highdicom warns with the name itself about a person name without a ``^`` (RG1's referring
    physician, ``ward``): the results give it the delimiter, the same name in DICOM."""
    source = pydicom.dcmread(rg1, stop_before_pixels=True)
    assert str(source.ReferringPhysicianName) == "ward"
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(rg1, study)
    Engine.from_bundle(xray_bundle, "float32").analyse(study, tmp_path / "out")
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        objects = result_objects(tmp_path / "out", study)
    said = caplog.text + "\n".join(str(w.message) for w in caught)
    for value in ("ward", source.PatientName.family_name, str(source.PatientName), source.PatientID):
        assert not re.search(rf"\b{re.escape(value)}\b", said), value
    for ds in objects:
        assert (ds.PatientName, ds.PatientID) == (source.PatientName, source.PatientID)
        assert (ds.ReferringPhysicianName.family_name, ds.ReferringPhysicianName.given_name) == ("ward", "")


def test_the_overlay_keeps_the_patient_orientation_of_its_source(rg1, tmp_path):
    radiograph = pydicom.dcmread(rg1, stop_before_pixels=True)
    assert patient_orientation(radiograph) == ("L", "F")
    axial, coronal = (pydicom.dcmread(p, stop_before_pixels=True) for p in phantom_study(tmp_path, n_slices=2, size=32))
    assert patient_orientation(axial) == ("L", "P")                  # ImageOrientationPatient 1,0,0 / 0,1,0
    coronal.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    assert patient_orientation(coronal) == ("L", "F")
    del radiograph.PatientOrientation
    assert patient_orientation(radiograph) is None


def test_ctedge_serve_receives_a_radiograph_and_sends_its_sr(tmp_path, rg1, xray_bundle, monkeypatch):
    """The serve path: ``serve_app`` starts ``DicomService.for_server`` with the server's engine and the
    profile's bundles."""
    monkeypatch.setenv("CTEDGE_API_TOKEN", "xray-serve-token")
    auth = {"Authorization": "Bearer xray-serve-token"}   # /health shows the sends only with the token
    pacs = StorageSCP("PACS").start()
    port = free_port()
    path = server_profile(tmp_path, DEMO_BUNDLE, xray_bundle, model={"variant": "float32"}, sections={
        "watcher": {"poll_seconds": 0.2, "stable_seconds": 0.2},
        "dicom": {"port": port, "inbox": str(tmp_path / "received"),
                  "destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}]}})
    profile = load_profile(path)
    app = serve_app(profile, Device.from_profile(profile))
    client = app.test_client()
    try:
        assert send(port, [rg1]) == [0]
        deadline = time.monotonic() + 90
        while client.get("/health", headers=auth).get_json()["dicom_send"]["sent"] < 1:
            assert time.monotonic() < deadline, client.get("/health", headers=auth).get_json()
            time.sleep(0.2)
    finally:
        app.extensions["ctedge"]["dicom"].stop()
        app.extensions["ctedge"]["jobs"].stop()
        pacs.stop()
    sr = pacs.received[0]
    assert sr.SOPClassUID == ComprehensiveSRStorage and sr.SeriesDescription.startswith("ctedge X-ray verdict")
    assert sr_by_meaning(sr)["Comment"].TextValue.startswith(PLACEHOLDER_BANNER)
