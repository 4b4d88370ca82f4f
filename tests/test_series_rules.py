"""The series rules of issue 24 on the real sample studies: each case copies part of a real series
into tmp_path, changes one property with pydicom and asserts the new outcome (docs/series-rules.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from edge.card import Range
from edge.cli import main
from edge.cli.predict import summary
from edge.engine import Engine
from edge.errors import GeometryError, NoUsableSeriesError, OutsideIntendedUseError
from edge.ingest import load_study
from edge.ingest.flags import lossy_flag
from edge.ingest.radiograph import load_radiograph
from edge.pipeline import prepare_study, run_study
from edge.report import render_report
from tests.helpers.dicom import edit_tags
from tests.helpers.paths import SAMPLES

NORMAL = "Normal_normal001"
RG1 = Path(get_testdata_file("RG1_UNCR.dcm"))


def _by_z(folder: Path) -> list[Path]:
    """The files of a real series, most superior first."""
    files = list(folder.glob("*.dcm"))
    z = {p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in files}
    return sorted(files, key=lambda p: -z[p])


@pytest.fixture(scope="module")
def normal(shared_data) -> list[Path]:
    return _by_z(shared_data / NORMAL)


def _copy(files: list[Path], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(p, folder / p.name)) for p in files]


def _edit(path: Path, **tags) -> None:
    edit_tags(path, path, **tags)


def _codes(volume) -> list[str]:
    return [f.code for f in volume.flags]


@pytest.fixture
def chest(tmp_path, normal) -> list[Path]:
    """30 contiguous 2 mm slices from the middle of the normal study (60 mm of lung)."""
    return _copy(normal[50:80], tmp_path / "study")


@pytest.mark.shared_data
def test_an_untouched_real_series_has_no_flag(chest):
    v = load_study(chest[0].parent)
    assert v.n_slices == 30 and _codes(v) == ["short_extent"]      # 60 mm: a part of the chest
    assert "only candidate" in v.series_why and v.dropped_files == []


@pytest.mark.shared_data
def test_a_20_mm_gap_is_refused_naming_the_files_either_side(tmp_path, normal):
    study = _copy(normal[40:60] + normal[70:90], tmp_path / "study")
    with pytest.raises(GeometryError, match=rf"gap of 22 mm between {normal[59].name} and {normal[70].name}") as err:
        load_study(study[0].parent)
    assert Path(err.value.path).name == normal[59].name


@pytest.mark.shared_data
def test_one_missing_slice_is_a_gap_warning_saying_where(tmp_path, normal):
    study = _copy(normal[40:60] + normal[61:80], tmp_path / "study")
    v = load_study(study[0].parent)
    gap = next(f for f in v.flags if f.code == "gap")
    assert gap.details["gaps"] == [{"after": normal[59].name, "before": normal[61].name, "mm": 4.0,
                                    "from_mm": pytest.approx(v.position_mm[19]), "to_mm": pytest.approx(v.position_mm[20])}]
    assert gap.message in v.warnings and "4 mm between" in gap.message


@pytest.mark.shared_data
def test_without_any_position_the_series_is_refused_not_read_in_file_name_order(chest):
    for p in chest:
        _edit(p, ImagePositionPatient=None, SliceLocation=None, InstanceNumber=None)
    with pytest.raises(GeometryError, match="slice order is unknown"):
        load_study(chest[0].parent)


@pytest.mark.shared_data
def test_instance_number_order_is_stated_and_used(chest):
    reference = load_study(chest[0].parent).hu
    for i, p in enumerate(chest):
        _edit(p, ImagePositionPatient=None, SliceLocation=None, InstanceNumber=i + 1)
    v = load_study(chest[0].parent)
    flag = next(f for f in v.flags if f.code == "no_position")
    assert flag.details == {"order": "InstanceNumber"} and "ordered by InstanceNumber" in flag.message
    assert np.array_equal(v.hu, reference)


def _scout(source: Path, target: Path) -> Path:
    ds = pydicom.dcmread(source)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(target)
    return target


@pytest.mark.shared_data
def test_two_scouts_whose_names_sort_first_are_dropped_and_the_series_read(chest):
    reference = load_study(chest[0].parent).hu
    scouts = [_scout(chest[0], chest[0].parent / f"0000-scout-{k}.dcm").name for k in (1, 2)]
    v = load_study(chest[0].parent)
    assert np.array_equal(v.hu, reference) and not set(scouts) & set(v.files)
    assert [(d.file, d.code) for d in v.dropped_files] == [(s, "scout_dropped") for s in scouts]
    assert "scout_dropped" in _codes(v)


@pytest.mark.shared_data
def test_one_scout_inside_the_series_is_never_a_slice(chest):
    scout = _scout(chest[15], chest[0].parent / "scout.dcm")
    _edit(scout, ImageOrientationPatient=[1, 0, 0, 0, 1, 0])    # even with axial orientation: ImageType decides
    v = load_study(chest[0].parent)
    assert v.n_slices == 30 and "scout.dcm" not in v.files
    assert v.dropped_files[0].file == "scout.dcm" and "localizer" in v.dropped_files[0].reason


@pytest.mark.shared_data
def test_an_image_of_another_orientation_inside_the_series_is_dropped_by_name(chest):
    _edit(chest[10], ImageOrientationPatient=[1, 0, 0, 0, 0.94, 0.342])    # 20 degrees off
    v = load_study(chest[0].parent)
    assert chest[10].name not in v.files
    assert v.dropped_files[0].code == "odd_image_dropped" and "20 degrees" in v.dropped_files[0].reason


def _thin_series(files: list[Path], folder: Path) -> None:
    """A 1 mm series over the same anatomy: every slice twice, 1 mm apart (new UIDs)."""
    folder.mkdir()
    uid = generate_uid()
    for p in files:
        for shift in (0.0, 1.0):
            ds = pydicom.dcmread(p)
            ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SliceThickness = uid, generate_uid(), 1.0
            ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + shift]
            ds.SliceLocation = float(ds.SliceLocation) + shift
            ds.save_as(folder / f"thin-{shift:g}-{p.name}")


@pytest.mark.slow
@pytest.mark.shared_data
def test_the_series_at_the_model_training_thickness_wins_over_the_one_with_most_slices(chest):
    _thin_series(chest, chest[0].parent.parent / "thin")
    study = chest[0].parent.parent
    engine = Engine.default()                     # the demonstration card: trained on 2 mm slices
    assert engine.training_range.slice_thickness_mm == Range(2.0, 2.0)
    v = engine.read(study).data
    assert v.n_slices == 30 and v.slice_thickness_mm == 2.0
    assert "inside the model's training range" in v.series_why and "chosen among 2" in v.series_why
    assert not any(f.code == "outside_training_range" for f in engine.run(engine.read(study)).volume.flags)
    skipped = v.skipped_series[0]
    assert skipped.code == "not_chosen" and "60 slices" in skipped.reason and "outside the model's training range" in skipped.reason
    assert load_study(study).n_slices == 60, "without a training range the most slices win"


@pytest.mark.parametrize("tilt, refused", [(5.0, False), (20.0, True)])
@pytest.mark.shared_data
def test_gantry_tilt_is_flagged_then_refused_above_10_degrees(chest, tilt, refused):
    for p in chest:
        _edit(p, GantryDetectorTilt=tilt)
    if refused:
        with pytest.raises(GeometryError, match="gantry tilt of 20.0 degrees"):
            load_study(chest[0].parent)
    else:
        flag = next(f for f in load_study(chest[0].parent).flags if f.code == "gantry_tilt")
        assert flag.details == {"degrees": 5.0}


@pytest.mark.shared_data
def test_a_sheared_stack_is_a_gantry_tilt_even_without_the_tag(chest):
    for p in chest:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        x, y, z = map(float, ds.ImagePositionPatient)
        _edit(p, ImagePositionPatient=[x, y + z * np.tan(np.radians(15)), z])
    with pytest.raises(GeometryError, match="gantry tilt of 15.0 degrees .from its slice positions"):
        load_study(chest[0].parent)


@pytest.mark.shared_data
def test_duplicate_positions_holding_different_pixels_are_left_out_and_named(chest):
    extras = []
    for k in (3, 9, 15, 21, 27):                 # a neighbour's pixels at these positions
        ds = pydicom.dcmread(chest[k + 1])
        target = pydicom.dcmread(chest[k], stop_before_pixels=True)
        ds.ImagePositionPatient, ds.SliceLocation, ds.SOPInstanceUID = target.ImagePositionPatient, target.SliceLocation, generate_uid()
        ds.save_as(chest[0].parent / f"0-dup-{k}.dcm")
        extras.append(f"0-dup-{k}.dcm")
    v = load_study(chest[0].parent)
    assert v.n_slices == 25 and not set(extras) & set(v.files)
    flag = next(f for f in v.flags if f.code == "duplicate_position")
    assert [sorted(c["files"]) for c in flag.details["positions"]] == [sorted([f"0-dup-{k}.dcm", chest[k].name])
                                                                       for k in (3, 9, 15, 21, 27)]
    assert {d.file for d in v.dropped_files} == set(extras) | {chest[k].name for k in (3, 9, 15, 21, 27)}
    assert "gap" in _codes(v), "each position left out is a gap"


@pytest.mark.shared_data
def test_an_identical_copy_is_dropped_quietly_as_a_duplicate(chest):
    shutil.copy(chest[5], chest[0].parent / "copy.dcm")
    v = load_study(chest[0].parent)
    assert v.n_slices == 30 and [d.code for d in v.dropped_files] == ["duplicate_dropped"]


@pytest.mark.parametrize("part", ["HEAD", "NECK", "ABDOMEN", "Extremity"])
@pytest.mark.shared_data
def test_a_ct_of_another_body_part_is_refused_as_outside_the_intended_use(chest, part):
    for p in chest:
        _edit(p, BodyPartExamined=part)
    with pytest.raises(OutsideIntendedUseError, match=f"BodyPartExamined {part}"):
        load_study(chest[0].parent)


def test_the_command_exits_2_naming_the_file_for_a_head_ct(tmp_path, capsys):
    study = _copy(sorted(SAMPLES.joinpath("COVID-19_P002").glob("*.dcm")), tmp_path / "head")
    for p in study:
        _edit(p, BodyPartExamined="HEAD")
    assert main(["predict", str(study[0].parent)]) == 2
    err = capsys.readouterr().err
    assert "outside the intended use" in err and "IM00" in err


@pytest.mark.shared_data
def test_files_without_modality_are_read_as_ct_only_from_their_sop_class(chest):
    for p in chest:
        _edit(p, Modality=None)
    assert "no_modality" in _codes(load_study(chest[0].parent))
    for p in chest:
        _edit(p, SOPClassUID="1.2.840.10008.5.1.4.1.1.4")     # MR Image Storage
    with pytest.raises(NoUsableSeriesError, match="no Modality"):
        load_study(chest[0].parent)


@pytest.mark.parametrize("part, rows", [("neck", slice(0, 12)), ("abdomen", slice(-16, None))])
@pytest.mark.shared_data
def test_a_stack_without_lung_is_refused_by_its_lung_fraction(tmp_path, normal, part, rows):
    study = _copy(normal[rows], tmp_path / part)
    for p in study:
        _edit(p, BodyPartExamined=None)
    with pytest.raises(OutsideIntendedUseError, match="slices show lung"):
        prepare_study(study[0].parent)


@pytest.mark.slow
@pytest.mark.shared_data
def test_a_whole_real_chest_ct_passes_the_lung_fraction(shared_data):
    assert prepare_study(shared_data / NORMAL).selection.keep.sum() > 100


def test_an_extremity_radiograph_and_a_16_pixel_one_are_refused(tmp_path):
    tibia = edit_tags(RG1, tmp_path / "tibia.dcm", BodyPartExamined="EXTREMITY")
    with pytest.raises(OutsideIntendedUseError, match="BodyPartExamined EXTREMITY") as err:
        load_radiograph(tibia)
    assert err.value.path == str(tibia)
    tiny = edit_tags(RG1, tmp_path / "tiny.dcm", Rows=16, Columns=16, PixelData=bytes(16 * 16 * 2))
    with pytest.raises(OutsideIntendedUseError, match="16 x 16 pixels"):
        load_radiograph(tiny)
    cv2.imwrite(str(tmp_path / "tiny.png"), np.zeros((16, 16), np.uint8))
    with pytest.raises(OutsideIntendedUseError, match="16 x 16 pixels"):
        load_radiograph(tmp_path / "tiny.png")


def test_a_radiograph_without_view_or_with_lossy_pixels_is_flagged(tmp_path):
    picture = load_radiograph(edit_tags(RG1, tmp_path / "noview.dcm", ViewPosition=None))
    assert [f.code for f in picture.flags] == ["view_unknown"] and picture.warnings == [picture.flags[0].message]
    picture = load_radiograph(edit_tags(RG1, tmp_path / "lossy.dcm", ViewPosition="PA", LossyImageCompression="01"))
    assert [f.code for f in picture.flags] == ["lossy"] and picture.flags[0].details["files"] == ["lossy.dcm"]


def test_lossy_input_is_flagged_in_the_result_and_the_report(tmp_path):
    study = _copy(sorted(SAMPLES.joinpath("COVID-19_P002").glob("*.dcm")), tmp_path / "lossy")
    _edit(study[3], LossyImageCompression="01", LossyImageCompressionRatio=12.5)
    doc = run_study(study[0].parent).to_dict()
    flag = next(f for f in doc["flags"] if f["code"] == "lossy")
    assert flag["files"] == [study[3].name] and flag["message"] in doc["warnings"]
    page = render_report(doc)
    assert '<code>lossy</code>' in page and page.count(flag["message"]) == 1
    assert doc["series"]["why"].startswith("the only candidate") and doc["files_dropped"] == []


def test_a_lossy_transfer_syntax_is_flagged_unless_the_image_says_lossless(tmp_path):
    ds = pydicom.dcmread(sorted(SAMPLES.joinpath("COVID-19_P002").glob("*.dcm"))[0], stop_before_pixels=True)
    assert lossy_flag([("a.dcm", ds)]) is None                      # JPEG Lossless SV1, LossyImageCompression 00
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.91"          # JPEG 2000 (lossy allowed)
    assert lossy_flag([("a.dcm", ds)]) is None, "the image says 00"
    del ds.LossyImageCompression
    assert "JPEG 2000" in lossy_flag([("a.dcm", ds)]).message
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"          # JPEG Baseline: always lossy
    assert lossy_flag([("a.dcm", ds)]).details["transfer_syntaxes"] == ["JPEG Baseline"]


def test_the_report_page_names_the_dropped_scout_and_the_series_choice(tmp_path):
    study = _copy(sorted(SAMPLES.joinpath("Normal_normal001").glob("*.dcm")), tmp_path / "scout")
    _scout(study[0], study[0].parent / "0-scout.dcm")
    doc = run_study(study[0].parent).to_dict()
    assert doc["files_dropped"] == [{"file": "0-scout.dcm", "code": "scout_dropped",
                                     "reason": "localizer (scout) image (ImageType ORIGINAL\\PRIMARY\\LOCALIZER)"}]
    assert [f["code"] for f in doc["flags"]] == ["scout_dropped"] and doc["n_slices_read"] == 10
    page = render_report(doc)
    assert 'data-code="scout_dropped"' in page and "0-scout.dcm: localizer" in page
    assert 'id="series-why">Series: the only candidate series (10 slices, 2 mm thick)' in page
    text = summary(doc)
    assert "Not analysed: 0-scout.dcm (scout_dropped): localizer" in text
    assert "Warning [scout_dropped]: 1 image(s) of the series dropped" in text
