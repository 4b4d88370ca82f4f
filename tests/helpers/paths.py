"""Paths to the repository, the bundled samples, the full real studies (when present) and pydicom-data's
chest radiograph."""

from __future__ import annotations

from pathlib import Path

from pydicom.data import get_testdata_file

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples" / "covid-ct-md"
SHARED = REPO.parent / "shared" / "data" / "covid-ct-md"
STUDIES = ("COVID-19_P002", "CAP_cap002", "Normal_normal001")
RG1 = Path(get_testdata_file("RG1_UNCR.dcm"))   # pydicom-data's chest radiograph (CR, view PA)
