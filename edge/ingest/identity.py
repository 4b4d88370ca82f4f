"""Who and what a study is, from its DICOM header: shown to logged-in users beside the result, never
logged. ``study_identity`` reads the attributes a radiologist matches a result to the PACS by."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from pathlib import Path

from pydicom.dataset import Dataset

from edge.errors import StudyError
from edge.ingest.dicom_files import read_header

IDENTITY_TAGS = {
    "patient_name": "PatientName",
    "patient_id": "PatientID",
    "accession": "AccessionNumber",
    "study_date": "StudyDate",
    "study_time": "StudyTime",
    "description": "StudyDescription",
    "series_description": "SeriesDescription",
    "modality": "Modality",
    "study_uid": "StudyInstanceUID",
}
"""The keys of a result's ``study`` object and the DICOM attribute each is read from."""

MAX_VALUE = 200
"""Characters kept of one attribute (a malformed header cannot flood the page)."""


def study_identity(ds: Dataset | None) -> dict[str, str]:
    """The identity of the study ``ds`` belongs to: every key of ``IDENTITY_TAGS``, "" when absent
    (an image file has no header: all empty). Person names are shown as ``FAMILY, Given``."""
    found = {key: "" for key in IDENTITY_TAGS}
    if ds is None:
        return found
    for key, tag in IDENTITY_TAGS.items():
        value = ds.get(tag)
        if value is None:
            continue
        text = str(value).strip()
        if tag == "PatientName":
            text = ", ".join(p for p in (x.strip() for x in text.split("^")[:2]) if p)
        found[key] = "".join(c for c in text if c.isprintable())[:MAX_VALUE]
    return found


def instance_number(ds: Dataset) -> int | None:
    """The slice's InstanceNumber (what PACS viewers number slices by), None when absent or not a number."""
    try:
        return int(ds.get("InstanceNumber"))
    except (TypeError, ValueError):
        return None


def identity_of_files(paths: Iterable[Path], tries: int = 20) -> dict[str, str]:
    """The identity of the first DICOM file among the first ``tries`` of ``paths`` (all empty when none
    is DICOM): what the status page shows before the study is read."""
    for path in islice(paths, tries):
        try:
            return study_identity(read_header(path))
        except (StudyError, OSError):
            continue
    return study_identity(None)
