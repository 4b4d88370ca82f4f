"""Every preprocessing rule on synthetic phantoms, where the truth is known."""

import numpy as np
import pytest
from pydicom.uid import generate_uid

from edge.errors import MixedSizesError, NoUsableSeriesError, TooFewSlicesError
from edge.ingest import load_study
from edge.phantom import make_phantom, write_dicom_series
from edge.pipeline import run_study
from edge.preprocess.segment import ThresholdSegmenter
from edge.preprocess.select import select_slices


@pytest.fixture(scope="module")
def sick():
    """Dense consolidation (two at the chest wall) and ground glass in 2.5 mm slices."""
    return make_phantom(n_slices=60, size=256, ground_glass=2, consolidation=4, seed=11)


def test_lung_mask_includes_consolidation_and_ground_glass(sick):
    """Seed 11 consolidates one lung apex from wall to hilum: only the mirrored outline recovers it."""
    mask = ThresholdSegmenter().segment(sick.hu)
    truth = sick.lung_mask
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.9
    lesion_cover = (mask & sick.lesion_mask).sum() / sick.lesion_mask.sum()
    air_only_cover = ((sick.hu < -320) & sick.lesion_mask).sum() / sick.lesion_mask.sum()
    assert lesion_cover > 0.9, f"only {lesion_cover:.0%} of lesion voxels inside the lung mask"
    assert air_only_cover < 0.6, "the phantom must make a plain air threshold miss lesions"


@pytest.mark.parametrize("seed", [1, 2, 3, 11])
def test_default_selection_keeps_lesion_slices_and_drops_slices_without_lung(seed):
    sick = make_phantom(n_slices=60, size=256, ground_glass=2, consolidation=4, seed=seed)
    mask = ThresholdSegmenter().segment(sick.hu)
    s = select_slices("lung-extent", sick.hu, mask)
    has_lesion = sick.lesion_mask.any(axis=(1, 2))
    has_lung = sick.lung_mask.any(axis=(1, 2))
    # Only an apex tip filled wall to wall by a lesion can be lost: no air is left to see there.
    assert s.keep[has_lesion].mean() >= 0.95
    assert sick.lesion_mask[s.keep].sum() >= 0.99 * sick.lesion_mask.sum()
    assert not s.keep[~has_lung].any(), "slices above the apex and below the base are dropped"
    assert s.keep.sum() >= 0.85 * has_lung.sum()


def test_rahimzadeh_rule_as_published_on_a_phantom(sick):
    s = select_slices("rahimzadeh", sick.hu, np.zeros(sick.hu.shape, bool))
    has_lung = sick.lung_mask.any(axis=(1, 2))
    widest = int(np.argmax(sick.lung_mask.sum(axis=(1, 2))))
    # Without lung the central region holds no air (0 dark pixels, never above a positive threshold);
    # the widest lung slice has the most dark pixels there, far above 1/1.5 of the range.
    assert not s.keep[~has_lung].any() and s.keep[widest]
    assert 0 < s.keep.sum() < has_lung.sum(), "the apices and bases, narrow in the central region, are dropped"


def expected_groups(k: int) -> int:
    return 1 if k <= 50 else k // 50 + (1 if k % 50 > 25 else 0)


@pytest.mark.parametrize("n_slices", [40, 95, 120])
def test_whole_pipeline_on_a_shuffled_phantom_series(tmp_path, n_slices):
    p = make_phantom(n_slices=n_slices, size=128, lung_extent=(0.05, 0.95), seed=n_slices)
    write_dicom_series(p, tmp_path, seed=n_slices)
    r = run_study(tmp_path)
    assert np.allclose(r.volume.position_mm, p.z_mm)
    assert np.array_equal(r.volume.hu, np.clip(np.rint(p.hu + 1024), 0, 4095).astype(np.int16) - 1024)
    k = int(r.selection.keep.sum())
    assert len(r.groups) == expected_groups(k)
    d = r.to_dict()
    assert d["n_slices_used"] == k and len(d["slices_dropped"]) == n_slices - k
    assert all(g["slice_range"][1] <= r.selection.kept_indices.max() for g in d["groups"])


def test_two_series_the_larger_axial_one_wins(tmp_path):
    big, small = make_phantom(30, 64, seed=1), make_phantom(12, 64, seed=2)
    write_dicom_series(big, tmp_path / "a", seed=1)
    write_dicom_series(small, tmp_path / "b", seed=2, series_uid=generate_uid())
    write_dicom_series(small, tmp_path / "c", seed=3, orientation="coronal", series_uid=generate_uid())
    v = load_study(tmp_path)
    assert v.n_slices == 30
    assert sorted(s.reason.split(":")[0].split(" (")[0] for s in v.skipped_series) == ["not axial", "not chosen"]


def test_mixed_matrix_sizes_in_one_series(tmp_path):
    uid = generate_uid()
    write_dicom_series(make_phantom(5, 64), tmp_path, series_uid=uid, seed=1)
    odd = write_dicom_series(make_phantom(5, 32), tmp_path / "odd", series_uid=uid, seed=2, slice_indices=[0])
    with pytest.raises(MixedSizesError, match=odd[0].name):
        load_study(tmp_path)


def test_single_slice_and_coronal_only(tmp_path):
    write_dicom_series(make_phantom(5, 32), tmp_path / "one", slice_indices=[2])
    with pytest.raises(TooFewSlicesError):
        load_study(tmp_path / "one")
    write_dicom_series(make_phantom(5, 32), tmp_path / "cor", orientation="coronal")
    with pytest.raises(NoUsableSeriesError, match="not axial"):
        load_study(tmp_path / "cor")
