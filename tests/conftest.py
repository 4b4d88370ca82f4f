"""Fixtures only; what tests import lives in tests/helpers."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.helpers.dicom import phantom_tree
from tests.helpers.paths import SHARED

_SAVED_HOME = pytest.StashKey[tuple[dict[str, str | None], Path]]()


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


_HOME_KEYS = ("HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")


def pytest_configure(config: pytest.Config) -> None:
    """HOME and the XDG folders in a temporary folder for the whole run, before any test module is
    imported (onnxruntime and OpenVINO write their telemetry at import), subprocesses included:
    Chromium, onnxruntime, Keras and OpenVINO write there, never into the user's home."""
    home = Path(tempfile.mkdtemp(prefix="ctedge-test-home-"))
    config.stash[_SAVED_HOME] = ({k: os.environ.get(k) for k in _HOME_KEYS}, home)
    os.environ.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), XDG_CONFIG_HOME=str(home / ".config"))


def pytest_unconfigure(config: pytest.Config) -> None:
    saved, home = config.stash[_SAVED_HOME]
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    shutil.rmtree(home, ignore_errors=True)


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


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory) -> Path:
    """A labelled folder tree ``<root>/<class>/<patient>`` of small synthetic DICOM studies
    (two per class, 24 slices of 128x128), for commands that take DATA."""
    return phantom_tree(tmp_path_factory.mktemp("phantom-data"))


# One bundle per kind whose answer is known by construction (tests/helpers/bundles.py), built once per
# session with TensorFlow's converter (skipped where TensorFlow is absent). Tests read them and never
# write into them: a test that needs a changed bundle copies it first.

@pytest.fixture(scope="session")
def constant_bundle(tmp_path_factory) -> Path:
    """A ``group`` (CT) bundle answering other_pneumonia 0.8 (``KNOWN_PROBABILITIES``) for every study."""
    pytest.importorskip("tensorflow")
    from tests.helpers.bundles import make_constant_bundle

    return make_constant_bundle(tmp_path_factory.mktemp("constant") / "bundle")


@pytest.fixture(scope="session")
def slice_bundle(tmp_path_factory) -> Path:
    """A ``slice`` (CT) bundle: ``slice_probabilities`` of each slice's mean grey value, fraction rule 0.1."""
    pytest.importorskip("tensorflow")
    from tests.helpers.bundles import make_slice_bundle

    return make_slice_bundle(tmp_path_factory.mktemp("slice") / "bundle")


@pytest.fixture(scope="session")
def xray_bundle(tmp_path_factory) -> Path:
    """The untrained ``image`` (chest X-ray) placeholder of ``make_image_bundle``, float32 only, no fidelity.json."""
    pytest.importorskip("tensorflow")
    from tests.helpers.bundles import make_image_bundle

    return make_image_bundle(tmp_path_factory.mktemp("xray") / "bundle")
