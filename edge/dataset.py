"""Labelled studies on disk: a folder tree ``<root>/<class>/<patient>/...`` (a radiograph file directly
under a class folder is one study, its patient the file's stem) or a CSV ``patient,class,path``.

Read by ``ctedge validate`` on the edge install and by training (no TensorFlow needed here).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from edge import CLASSES
from edge.errors import UserError
from edge.ingest.image_files import is_image_file


class DatasetError(UserError, ValueError):
    """A dataset folder or CSV that cannot be used; the message names the file or row."""


@dataclass(frozen=True)
class StudyRecord:
    patient: str
    label: str
    path: Path


def discover(source: str | Path) -> list[StudyRecord]:
    """Studies from a folder tree ``<root>/<class>/<patient>/...`` or a CSV ``patient,class,path``
    (paths relative to the CSV's folder). Every class must be one of CLASSES."""
    source = Path(source)
    records = _from_csv(source) if source.suffix.lower() == ".csv" else _from_tree(source)
    classes: dict[str, str] = {}
    for r in records:
        if classes.setdefault(r.patient, r.label) != r.label:
            raise DatasetError(source, f"patient {r.patient!r} is listed under {classes[r.patient]!r} and {r.label!r}")
    if not records:
        raise DatasetError(source, "no studies found")
    return sorted(records, key=lambda r: (r.label, r.patient, str(r.path)))


def _from_tree(root: Path) -> list[StudyRecord]:
    if not root.is_dir():
        raise DatasetError(root, "not a folder or a .csv file")
    records = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if class_dir.name not in CLASSES:
            raise DatasetError(class_dir, f"unknown class folder; expected one of {', '.join(CLASSES)}")
        records += [StudyRecord(p.name if p.is_dir() else p.stem, class_dir.name, p) for p in sorted(class_dir.iterdir())
                    if not p.name.startswith(".") and (p.is_dir() or _is_radiograph_file(p))]
    return records


def _is_radiograph_file(path: Path) -> bool:
    """A file directly under a class folder is one radiograph (``<class>/<images>``)."""
    return path.is_file() and (is_image_file(path) or path.suffix.lower() == ".dcm")


def _from_csv(path: Path) -> list[StudyRecord]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
            fields = set(rows[0]) if rows else set()
    except OSError as exc:
        raise DatasetError(path, f"cannot read the CSV ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(path, f"not a readable CSV ({exc})") from exc
    missing = {"patient", "class", "path"} - fields
    if missing:
        raise DatasetError(path, f"missing column(s) {', '.join(sorted(missing))}")
    records = []
    for row_number, row in enumerate(rows, start=2):
        if row["class"] not in CLASSES:
            raise DatasetError(path, f"row {row_number}: unknown class {row['class']!r}; expected one of {', '.join(CLASSES)}")
        if not row["path"]:
            raise DatasetError(path, f"row {row_number}: empty path")
        study = Path(row["path"]) if Path(row["path"]).is_absolute() else path.parent / row["path"]
        if not study.exists():
            raise DatasetError(path, f"row {row_number}: {study} does not exist")
        records.append(StudyRecord(row["patient"], row["class"], study))
    return records
