"""The ``dicom:`` section of a device profile: the keys scripts rely on, and clear mistakes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge.profile import DicomPeer, ProfileError, load_profile
from tests.helpers.paths import REPO

BASE = "name: x\ndescription: y\nmodel:\n  bundle: model\n"


def write(tmp_path: Path, text: str) -> Path:
    shutil.copytree(REPO / "edge" / "models" / "demo", tmp_path / "model")
    (tmp_path / "device.yaml").write_text(BASE + text)
    return tmp_path / "device.yaml"


def test_dicom_section_keys(tmp_path):
    profile = load_profile(write(tmp_path, """dicom:
  ae_title: EDGE1
  port: 11113
  allowed_callers: [ORTHANC, {ae_title: CT1, host: 10.0.0.21}]
  inbox: received
  destinations:
    - {ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
"""))
    d = profile.dicom
    assert (d.ae_title, d.host, d.port) == ("EDGE1", "127.0.0.1", 11113)
    assert d.allowed_callers == (DicomPeer("ORTHANC"), DicomPeer("CT1", "10.0.0.21"))
    assert d.inbox == tmp_path / "received"
    assert d.destinations == (DicomPeer("ORTHANC", "127.0.0.1", 4242),)


def test_no_dicom_section_means_no_receiver(tmp_path):
    assert load_profile(write(tmp_path, "")).dicom is None
    assert load_profile(write(tmp_path / "b", "dicom: {}\n")).dicom.port == 11112


@pytest.mark.parametrize("text, message", [
    ("dicom:\n  aetitle: X\n", "unknown key 'dicom.aetitle'"),
    ("dicom:\n  allowed_callers: ORTHANC\n", "dicom.allowed_callers must be a list"),
    ("dicom:\n  allowed_callers: [{ae_title: A, hots: h}]\n", "unknown key 'dicom.allowed_callers[0].hots'"),
    ("dicom:\n  destinations: [{ae_title: PACS, port: 104}]\n", "dicom.destinations[0].host is missing"),
    ("dicom:\n  destinations: [{ae_title: PACS, host: h, port: 70000}]\n", "dicom.destinations[0].port must be"),
    ("dicom:\n  ae_title: A_TITLE_LONGER_THAN_16\n", "dicom.ae_title must be 1 to 16"),
])
def test_dicom_mistakes_name_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert str(path) in str(err.value) and message in str(err.value)
