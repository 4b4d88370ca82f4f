"""The full real studies of ../shared/data/covid-ct-md (skipped where absent)."""

import numpy as np
import pytest
from scipy import ndimage

from edge.ingest import load_study
from edge.pipeline import run_study
from edge.preprocess.group import group_plan
from edge.selection_report import read_labels
from tests.helpers.paths import STUDIES

pytestmark = pytest.mark.slow  # the full real studies, read and selected

EXPECTED_SLICES = {"COVID-19_P002": 133, "CAP_cap002": 131, "Normal_normal001": 154}


@pytest.fixture(scope="module", params=STUDIES)
def result(request, shared_data):
    return request.param, run_study(shared_data / request.param)


def test_slice_count_order_and_hu_range(result):
    name, r = result
    v = r.volume
    assert v.n_slices == EXPECTED_SLICES[name]
    assert np.all(np.diff(v.position_mm) < 0), "z must fall strictly from the first (most superior) slice"
    assert np.allclose(np.diff(v.position_mm), -2.0, atol=0.01)  # 2 mm reconstructions
    assert v.hu.min() == -1024 and 900 < v.hu.max() < 3100
    body = v.hu[v.n_slices // 2, 200:300, 200:300]
    assert -200 < np.median(body) < 200, "the centre of a mid slice is soft tissue"


def test_lung_masks_cover_the_lungs_on_mid_slices(result):
    _, r = result
    kept = r.selection.kept_indices
    for i in kept[len(kept) // 2 - 2: len(kept) // 2 + 3]:
        mask = r.lung_mask[i]
        hu = ndimage.zoom(r.volume.hu[i].astype(float), 0.5, order=1)
        air = hu < -700
        labels, _ = ndimage.label(air)
        outside = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        inner_air = air & ~np.isin(labels, outside)
        assert (mask & inner_air).sum() >= 0.95 * inner_air.sum(), f"slice {i}: lung air outside the mask"
        assert 0.10 < mask.mean() < 0.50, f"slice {i}: implausible lung area {mask.mean():.2f}"
        assert np.median(hu[mask]) < -600, f"slice {i}: mask is mostly not lung"
        cols = np.flatnonzero(mask.any(axis=0))
        assert cols.min() < 100 and cols.max() > 156, f"slice {i}: both lungs expected"


def test_default_selection_drops_slices_without_lung_and_groups_follow_the_rule(result):
    _, r = result
    kept = r.selection.kept_indices
    assert np.array_equal(kept, np.arange(kept[0], kept[-1] + 1)), "default selection is one contiguous run"
    area = r.lung_mask.reshape(len(r.lung_mask), -1).sum(axis=1)
    assert kept[0] > 0, "the slices above the lung apex are dropped"
    assert area[: kept[0]].max() < 0.05 * area.max()
    below = area[kept[-1] + 1:]  # CAP_cap002's scan ends before the lung bases do: nothing to drop there
    assert below.size == 0 or below.max() < 0.05 * area.max()
    assert 90 <= len(kept) <= 140, "about 20-28 cm of lung at 2 mm"
    assert len(r.groups) == len(group_plan(len(kept)))
    assert r.groups[0].source[0] == kept[0] and r.groups[-1].source[-1] == kept[-1]


@pytest.mark.parametrize("name", ["COVID-19_P002", "CAP_cap002"])
def test_default_selection_keeps_the_infected_slices(shared_data, name):
    labels = read_labels(shared_data / "slice_labels.csv")
    r = run_study(shared_data / name)
    infected = [f for (p, f), y in labels.items() if p == name and y == 1]
    used = {s["file"] for s in r.to_dict()["slices_used"]}
    kept = sum(f in used for f in infected)
    assert kept >= 0.95 * len(infected), f"{kept}/{len(infected)} infected slices kept"


def test_published_rahimzadeh_rule_on_real_slices_keeps_what_was_measured(shared_data):
    """Figures measured once with `ctedge evaluate-selection` and checked by hand on the montage
    (docs/pipeline.md, Measured slice retention): the published rule keeps 81 of 133 slices of COVID-19_P002 and
    drops 10 of its 68 infected slices, where dense consolidation closes the central region."""
    from edge.preprocess.select import select_rahimzadeh

    v = load_study(shared_data / "COVID-19_P002")
    labels = read_labels(shared_data / "slice_labels.csv")
    s = select_rahimzadeh(v.hu)
    infected = np.array([labels[("COVID-19_P002", f)] == 1 for f in v.files])
    assert (s.keep.sum(), infected.sum(), (s.keep & infected).sum()) == (81, 68, 58)
    assert 0 < s.keep.sum() < v.n_slices
