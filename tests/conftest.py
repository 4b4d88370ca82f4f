"""Shared fixtures: paths to the bundled samples and to the full real studies (when present)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples" / "covid-ct-md"
SHARED = REPO.parent / "shared" / "data" / "covid-ct-md"
STUDIES = ("COVID-19_P002", "CAP_cap002", "Normal_normal001")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The full real studies; tests using this are skipped where ../shared is absent."""
    if not (SHARED / "slice_labels.csv").exists():
        pytest.skip("real studies in ../shared/data/covid-ct-md are not available here")
    return SHARED


def read_slice_labels(path: Path) -> dict[tuple[str, str], int]:
    """(patient_folder, file) -> 1 if the radiologists marked infection on that slice."""
    with open(path, newline="") as f:
        return {(r["patient_folder"], r["file"]): int(r["infection"]) for r in csv.DictReader(f)}


@pytest.fixture(autouse=True)
def _seed_keras():
    """Models are initialised when built: seed before every test so results do not depend on test order."""
    import sys

    if "tf_keras" in sys.modules:
        sys.modules["tf_keras"].utils.set_random_seed(0)
