"""Shared fixtures: paths to the bundled samples and to the full real studies (when present)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples" / "covid-ct-md"
SHARED = REPO.parent / "shared" / "data" / "covid-ct-md"
STUDIES = ("COVID-19_P002", "CAP_cap002", "Normal_normal001")


def edit_tags(source: Path, target: Path, **tags) -> Path:
    """Write ``source`` to ``target`` with ``tags`` set (None deletes the tag)."""
    ds = pydicom.dcmread(source)
    for key, value in tags.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(target)
    return target


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The full real studies; tests using this are skipped where ../shared is absent."""
    if not (SHARED / "slice_labels.csv").exists():
        pytest.skip("real studies in ../shared/data/covid-ct-md are not available here")
    return SHARED


@pytest.fixture(scope="session", autouse=True)
def _pydicom_as_the_command_sets_it():
    """The ``ctedge`` command configures pydicom at start-up (not at import); so do the tests."""
    from edge.ingest import configure_pydicom

    configure_pydicom()


@pytest.fixture(scope="session", autouse=True)
def _tune_cache(tmp_path_factory):
    """A private tune cache in which the demo bundle is "tuned" to int8 with 2 threads, so that no test
    tunes (or writes to the user's cache) unless it asks to; subprocesses inherit the variable."""
    import os

    from edge.card import load_card
    from edge.engine import DEFAULT_BUNDLE
    from edge.tune import Choice, cpu_key, record

    path = tmp_path_factory.mktemp("tune") / "tuned.json"
    os.environ["CTEDGE_TUNE_CACHE"] = str(path)
    record(load_card(DEFAULT_BUNDLE), Choice("int8", 2, 0.0, "test fixture", cpu_key()))
    yield path
    os.environ.pop("CTEDGE_TUNE_CACHE", None)


@pytest.fixture(autouse=True)
def _seed_keras():
    """Models are initialised when built: seed before every test so results do not depend on test order."""
    import sys

    if "tf_keras" in sys.modules:
        sys.modules["tf_keras"].utils.set_random_seed(0)


PHANTOM_LESIONS = {"covid": {"ground_glass": 3}, "other_pneumonia": {"consolidation": 3}, "healthy": {}}


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory) -> Path:
    """A labelled folder tree ``<root>/<class>/<patient>`` of small synthetic DICOM studies
    (two per class, 24 slices of 128x128), for commands that take DATA."""
    from edge.phantom import make_phantom, write_dicom_series

    root = tmp_path_factory.mktemp("phantom-data")
    for c, (cls, lesions) in enumerate(PHANTOM_LESIONS.items()):
        for k in range(2):
            seed = 100 * c + k
            write_dicom_series(make_phantom(n_slices=24, size=128, seed=seed, **lesions), root / cls / f"{cls}-{k}", seed=seed)
    return root
