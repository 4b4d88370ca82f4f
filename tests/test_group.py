import numpy as np
import pytest

from edge.preprocess.group import assemble, group_plan


def _real(plan):
    return plan[~np.isnan(plan)]


@pytest.mark.parametrize("n", [1, 10, 49])
def test_fewer_than_a_group_is_one_padded_group(n):
    plans = group_plan(n)
    assert len(plans) == 1 and len(plans[0]) == 50
    assert np.array_equal(_real(plans[0]), np.arange(n))
    assert np.isnan(plans[0][n:]).all()


def test_exact_multiple_needs_no_padding_or_interpolation():
    plans = group_plan(100)
    assert [p.tolist() for p in plans] == [list(range(50)), list(range(50, 100))]


def test_remainder_of_26_is_padded_with_black_slices():
    plans = group_plan(76)
    assert len(plans) == 2
    assert np.array_equal(_real(plans[1]), np.arange(50, 76))
    assert np.isnan(plans[1]).sum() == 24


def test_remainder_of_25_interpolates_last_two_groups_down_to_50():
    plans = group_plan(75)
    assert len(plans) == 1
    last = plans[0]
    assert len(last) == 50 and not np.isnan(last).any()
    assert last[0] == 0 and last[-1] == 74 and np.all(np.diff(last) > 0)


def test_remainder_of_1_after_two_groups():
    plans = group_plan(101)
    assert len(plans) == 2
    assert np.array_equal(plans[0], np.arange(50))
    assert plans[1][0] == 50 and plans[1][-1] == 100 and len(plans[1]) == 50


def test_every_slice_feeds_some_group():
    for n in range(1, 240):
        covered = np.unique(np.concatenate([np.floor(_real(p)) for p in group_plan(n)] +
                                           [np.ceil(_real(p)) for p in group_plan(n)]))
        assert np.array_equal(covered, np.arange(n)), n


def test_assemble_interpolates_and_pads_black():
    slices = np.stack([np.full((4, 4), v, np.uint8) for v in (0, 100, 200)])
    group = assemble(slices, np.array([0.0, 0.5, 1.5, 2.0, np.nan]))
    assert group.dtype == np.uint8
    assert [int(s[0, 0]) for s in group] == [0, 50, 150, 200, 0]


def test_no_slices_is_an_error():
    with pytest.raises(ValueError):
        group_plan(0)
