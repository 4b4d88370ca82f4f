"""Ingestion on the bundled real slices: formats, series rules, ordering and every bad-input error."""

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from edge.errors import (CorruptFileError, EmptyStudyError, FileTooLargeError, MixedSizesError, NoPixelDataError,
                         NotDicomError, NoUsableSeriesError, TooFewSlicesError, UnsafeArchiveError,
                         UnsupportedTransferSyntaxError)
from edge.ingest import Limits, load_study
from tests.helpers.dicom import edit_tags
from tests.helpers.paths import SAMPLES

STUDY = SAMPLES / "COVID-19_P002"


@pytest.fixture
def study(tmp_path) -> Path:
    dst = tmp_path / "study"
    shutil.copytree(STUDY, dst)
    return dst


def _edit(path: Path, **tags) -> None:
    edit_tags(path, path, **tags)


def test_reads_real_jpeg_lossless_slices_in_z_order():
    v = load_study(STUDY)
    assert v.hu.shape == (10, 512, 512) and v.hu.dtype == np.int16
    assert np.all(np.diff(v.position_mm) < 0), "slice 0 must be the most superior"
    assert v.hu.min() == -1024 and 1000 < v.hu.max() < 3100
    assert v.series_uid and v.hu_exact and v.warnings == []
    assert v.pixel_spacing_mm == pytest.approx(0.6035, abs=1e-3)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless])
def test_every_common_transfer_syntax_gives_the_same_hu(study, syntax):
    reference = load_study(STUDY).hu
    for path in study.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.decompress()
        if syntax.is_compressed:
            ds.compress(syntax)
        else:
            ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True)
    v = load_study(study)
    assert pydicom.dcmread(next(study.glob("*.dcm"))).file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(v.hu, reference)


def test_zip_and_file_list_read_like_the_folder(tmp_path):
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in STUDY.glob("*.dcm"):
            zf.write(p, f"patient/series/{p.name}")
    reference = load_study(STUDY).hu
    assert np.array_equal(load_study(archive).hu, reference)
    assert np.array_equal(load_study(sorted(STUDY.glob("*.dcm"))).hu, reference)


def test_series_are_split_and_the_largest_axial_ct_is_chosen(study):
    files = sorted(study.glob("*.dcm"))
    second, third = generate_uid(), generate_uid()
    for p in files[:3]:
        _edit(p, SeriesInstanceUID=second)
    for p in files[3:5]:
        _edit(p, SeriesInstanceUID=third, ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    v = load_study(study)
    assert v.n_slices == 5
    reasons = {s.uid: s.reason for s in v.skipped_series}
    assert "not chosen: 3 slices" in reasons[second]
    assert "not axial" in reasons[third]


def test_non_ct_and_localizer_series_are_reported_not_used(study):
    files = sorted(study.glob("*.dcm"))
    mr, scout = generate_uid(), generate_uid()
    _edit(files[0], SeriesInstanceUID=mr, Modality="MR")
    _edit(files[1], SeriesInstanceUID=scout, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    reasons = sorted(s.reason for s in load_study(study).skipped_series)
    assert reasons == ["localizer (scout) images", "modality MR, not CT"]


def test_only_non_axial_series_is_a_clear_error(study):
    for p in study.glob("*.dcm"):
        _edit(p, ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    with pytest.raises(NoUsableSeriesError, match="not axial"):
        load_study(study)


def test_slices_without_position_fall_back_to_slice_location_then_instance_number(study):
    reference = load_study(STUDY).hu
    for p in study.glob("*.dcm"):
        _edit(p, ImagePositionPatient=None)
    v = load_study(study)
    assert np.array_equal(v.hu, reference) and "SliceLocation" in v.warnings[0]
    for p in study.glob("*.dcm"):
        ds = pydicom.dcmread(p)
        ds.InstanceNumber = int(round(-ds.SliceLocation))  # instance numbers counting from the head
        del ds.SliceLocation
        ds.save_as(p)
    v = load_study(study)
    assert np.array_equal(v.hu, reference) and "InstanceNumber" in v.warnings[0]


def test_one_slice_without_position_is_dropped_and_reported(study):
    _edit(sorted(study.glob("*.dcm"))[4], ImagePositionPatient=None)
    v = load_study(study)
    assert v.n_slices == 9 and any("without ImagePositionPatient" in w for w in v.warnings)


def test_missing_rescale_tags_are_tolerated_with_a_warning(study):
    for p in study.glob("*.dcm"):
        _edit(p, RescaleSlope=None, RescaleIntercept=None)
    v = load_study(study)
    assert v.hu.min() == 0 and any("RescaleSlope" in w for w in v.warnings)


def test_truncated_slice_in_good_series_is_skipped_and_reported(study):
    victim = sorted(study.glob("*.dcm"))[3]
    victim.write_bytes(victim.read_bytes()[:60_000])
    v = load_study(study)
    assert v.n_slices == 9
    assert any(victim.name in w and "skipped" in w for w in v.warnings)


def test_truncated_single_file_is_a_corrupt_file_error(tmp_path):
    src = next(STUDY.glob("*.dcm"))
    bad = tmp_path / "cut.dcm"
    bad.write_bytes(src.read_bytes()[:60_000])
    with pytest.raises(CorruptFileError, match="cut.dcm: truncated"):
        load_study(bad)
    with pytest.raises(CorruptFileError, match="1 other file"):
        load_study([bad, shutil.copy(bad, tmp_path / "cut2.dcm")])


def test_non_dicom_files_beside_a_study_are_reported(study):
    (study / "notes.txt").write_text("radiology request")
    v = load_study(study)
    assert v.n_slices == 10 and any("notes.txt: not a DICOM file" in w for w in v.warnings)


def test_a_lone_non_dicom_file_is_named(tmp_path):
    f = tmp_path / "report.pdf"
    f.write_bytes(b"%PDF-1.4 not a ct")
    with pytest.raises(NotDicomError, match="report.pdf: not a DICOM file"):
        load_study(f)


def test_empty_folder(tmp_path):
    with pytest.raises(EmptyStudyError, match="no files"):
        load_study(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(EmptyStudyError, match="no such file"):
        load_study(tmp_path / "nope")


def test_no_pixel_data(study):
    for p in study.glob("*.dcm"):
        _edit(p, PixelData=None)
    with pytest.raises(NoPixelDataError, match="no pixel data"):
        load_study(study)


def test_unsupported_transfer_syntax_names_the_syntax(study):
    for p in study.glob("*.dcm"):
        ds = pydicom.dcmread(p)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
        ds.save_as(p)
    with pytest.raises(UnsupportedTransferSyntaxError, match="MPEG2"):
        load_study(study)


def test_mixed_sizes_name_the_odd_file(study):
    odd = sorted(study.glob("*.dcm"))[2]
    _edit(odd, Rows=256)
    with pytest.raises(MixedSizesError, match=f"{odd.name}: slice is 256x512"):
        load_study(study)


def test_single_slice_is_refused(tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(next(STUDY.glob("*.dcm")), one)
    with pytest.raises(TooFewSlicesError, match="single slice"):
        load_study(one)


def test_zip_slip_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../etc/cron.d/evil", b"x")
    with pytest.raises(UnsafeArchiveError, match="outside the archive root"):
        load_study(archive)
    assert not (tmp_path.parent / "etc").exists()


def test_zip_bomb_is_refused(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.dcm", bytes(20 * 2**20))
    with pytest.raises(UnsafeArchiveError, match="compression ratio"):
        load_study(archive)


def test_huge_file_is_refused_before_reading(study):
    with pytest.raises(FileTooLargeError, match="larger than the limit"):
        load_study(study, Limits(max_file_bytes=100_000))
