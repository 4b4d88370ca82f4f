"""Ingestion: study on disk (folder, zip, files) -> one HU volume of the chosen axial CT series."""

from edge.ingest.pydicom_adapter import configure_pydicom
from edge.ingest.sources import Limits
from edge.ingest.study import Volume, load_study, source_name

__all__ = ["configure_pydicom", "Limits", "Volume", "load_study", "source_name"]
