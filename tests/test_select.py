import numpy as np
import pytest

from edge.preprocess.select import (dark_pixel_counts, lung_area_ratio, select_lung_extent, select_rahimzadeh,
                                    select_seed_area, select_slices)

# lung area relative to the peak along 13 slices, top (apex) to bottom (base)
RATIO = np.array([0.0, 0.02, 0.1, 0.3, 0.45, 0.8, 1.0, 0.2, 0.95, 0.92, 0.7, 0.04, 0.0])


def test_lung_extent_keeps_the_whole_run_including_a_consolidated_dip():
    s = select_lung_extent(RATIO)
    assert s.kept_indices.tolist() == list(range(2, 11))
    assert "apex" in s.reasons[1] and "base" in s.reasons[11] and s.reasons[7] == ""


def test_seed_area_reads_0_4_on_upper_side_and_0_9_on_lower_side():
    s = select_seed_area(RATIO)
    assert s.kept_indices.tolist() == [4, 5, 6, 7, 8, 9]
    assert "0.4" in s.reasons[3] and "0.9" in s.reasons[10]


def test_no_lung_drops_everything_with_a_reason():
    s = select_lung_extent(np.zeros(5))
    assert not s.keep.any() and all("no lung" in r for r in s.reasons)


def test_lung_area_ratio_relative_to_largest_slice():
    mask = np.zeros((3, 4, 4), bool)
    mask[0, :2, :2] = True
    mask[1] = True
    assert lung_area_ratio(mask).tolist() == [0.25, 1.0, 0.0]


def test_rahimzadeh_counts_dark_pixels_in_the_published_region():
    hu = np.full((4, 512, 512), 40, np.int16)
    hu[0, 240:340, 120:370] = -800          # lung open over the whole region: 25000 dark pixels
    hu[1, 240:340, 120:245] = -800          # half open
    hu[2, 240:340, 120:370] = -700          # -700 HU is not below -724: not dark
    hu[3, :240, :] = -1000                  # dark, but outside the region
    counts = dark_pixel_counts(hu)
    assert counts.tolist() == [25000, 12500, 0, 0]
    s = select_rahimzadeh(hu)
    # threshold = (25000 - 0) / 1.5 = 16667: only the fully open slice passes
    assert s.kept_indices.tolist() == [0]
    assert "16667" in s.reasons[1]


def test_rahimzadeh_region_scales_with_matrix_size():
    hu = np.full((2, 256, 256), 40, np.int16)
    hu[0, 120:170, 60:185] = -900
    assert dark_pixel_counts(hu).tolist() == [50 * 125, 0]


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="lung-extent"):
        select_slices("bogus", np.zeros((2, 8, 8)), np.zeros((2, 8, 8), bool))
