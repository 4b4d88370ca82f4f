"""Paths to the repository, the bundled samples and the full real studies (when present)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples" / "covid-ct-md"
SHARED = REPO.parent / "shared" / "data" / "covid-ct-md"
STUDIES = ("COVID-19_P002", "CAP_cap002", "Normal_normal001")
