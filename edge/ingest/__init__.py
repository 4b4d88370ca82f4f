"""Ingestion: study on disk (folder, zip, files) -> one HU volume of the chosen axial CT series."""

from edge.ingest.sources import Limits
from edge.ingest.study import Volume, load_study, source_name

__all__ = ["Limits", "Volume", "load_study", "source_name"]
