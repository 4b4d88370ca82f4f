"""The result document of one study: what ``ctedge predict --json`` prints, the API serves and a
result folder's ``result.json`` holds (``edge.stages.StudyResult.to_dict`` builds it,
``edge.report.write_result`` completes and writes it). Read a stored one back with
:func:`load_result`; ask any document its modality with :func:`modality_of`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
OLDER_MODALITY = "ct"
"""The modality of documents written before X-ray support, which have no ``modality`` key."""


def modality_of(doc: Mapping[str, Any]) -> str:
    """The modality (``edge.card.MODALITIES``) of the study a result document describes."""
    return doc.get("modality", OLDER_MODALITY)


def load_result(folder: Path) -> dict[str, Any]:
    """The result document of a result folder, with the ``modality`` an older document lacks filled
    in; OSError when it cannot be read, ValueError when it is not a JSON object."""
    path = Path(folder) / RESULT_FILE
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a JSON object")
    doc["modality"] = modality_of(doc)
    return doc
