"""The synthetic phantom itself: deterministic anatomy, lesions where they belong, valid files."""

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, JPEGLossless, RLELossless

from edge.phantom import CONSOLIDATION, GGO, make_phantom, write_dicom_series, write_image_slices


def test_deterministic_for_a_seed():
    a, b, c = make_phantom(8, 96, seed=1), make_phantom(8, 96, seed=1), make_phantom(8, 96, seed=2)
    assert np.array_equal(a.hu, b.hu) and not np.array_equal(a.hu, c.hu)
    assert a.hu.shape == (8, 96, 96) and a.hu.dtype == np.float32


def test_lungs_only_inside_their_extent_and_largest_in_the_middle():
    p = make_phantom(40, 128, lung_extent=(0.2, 0.8), noise_hu=0)
    area = p.lung_mask.sum(axis=(1, 2))
    frac = np.linspace(0, 1, 40)
    assert (area[(frac < 0.2) | (frac > 0.8)] == 0).all()
    assert area.argmax() in range(17, 23) and area[frac == frac[5]].item() < area.max()
    assert np.all(np.diff(p.z_mm) < 0)


def test_lesions_sit_inside_the_lungs_with_their_density():
    p = make_phantom(40, 128, ground_glass=2, consolidation=2, noise_hu=0, seed=3)
    assert p.lesion_mask.any() and not (p.lesion_mask & ~p.lung_mask).any()
    values = set(np.unique(p.hu[p.lesion_mask]).tolist())
    assert values <= {GGO, CONSOLIDATION} and CONSOLIDATION in values


def test_a_consolidation_touches_the_lateral_chest_wall():
    p = make_phantom(40, 128, consolidation=2, noise_hu=0, seed=4)
    touching = 0
    for k in range(40):
        dense = p.lesion_mask[k] & (p.hu[k] == CONSOLIDATION)
        for row in np.flatnonzero(dense.any(axis=1)):
            lung = np.flatnonzero(p.lung_mask[k, row])
            cols = np.flatnonzero(dense[row])
            touching += int(cols.min() == lung.min() or cols.max() == lung.max())
    assert touching > 0


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless])
def test_dicom_round_trip_for_each_transfer_syntax(tmp_path, syntax):
    p = make_phantom(4, 64, seed=5)
    paths = write_dicom_series(p, tmp_path, transfer_syntax=syntax)
    expected = np.clip(np.rint(p.hu + 1024), 0, 4095) - 1024
    for path in paths:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == syntax
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.array_equal(hu, expected[ds.InstanceNumber - 1])
    assert sorted(p.name for p in paths) != [p.name for p in paths], "file names must not give slice order"


def test_coronal_series_and_unencodable_syntax(tmp_path):
    p = make_phantom(3, 32)
    path = write_dicom_series(p, tmp_path, orientation="coronal")[0]
    assert list(map(float, pydicom.dcmread(path).ImageOrientationPatient)) == [1, 0, 0, 0, 0, -1]
    with pytest.raises(ValueError, match="JPEG Lossless"):
        write_dicom_series(p, tmp_path / "jpeg", transfer_syntax=JPEGLossless)


def test_image_slices(tmp_path):
    p = make_phantom(3, 32, seed=6)
    eight = write_image_slices(p, tmp_path / "8", bit_depth=8)
    sixteen = write_image_slices(p, tmp_path / "16", bit_depth=16, ext=".tif")
    assert cv2.imread(str(eight[0]), cv2.IMREAD_UNCHANGED).dtype == np.uint8
    img = cv2.imread(str(sixteen[1]), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint16 and np.array_equal(img, np.clip(np.rint(p.hu[1] + 1024), 0, 65535))
