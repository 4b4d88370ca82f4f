"""Save an uploaded study (files, a folder's files, or zips) into a study's upload folder.

Names are sanitised part by part (a folder upload keeps its sub-folders), a zip is checked for
zip-slip and bombs by :func:`edge.ingest.sources.extract_zip` and unpacked, and the upload is
refused at once when no file in it is DICOM or an image slice. The whole upload, zips unpacked,
must stay within ``server.max_unpacked_mb`` (413) and leave ``server.min_free_mb`` free on the
disk (507, as does a disk that fills up while saving).
"""

from __future__ import annotations

import logging
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from werkzeug.datastructures import FileStorage
from werkzeug.utils import secure_filename

from edge.errors import FileTooLargeError, StudyError, UserError
from edge.ingest.dicom_files import read_header
from edge.ingest.identity import identity_of_files
from edge.ingest.image_files import is_image_file
from edge.ingest.sources import Limits, extract_zip, study_files, unpacked_size
from edge.server.jobs import JobQueue, StudyStore, strip_folder
from edge.storage import is_disk_full

log = logging.getLogger("ctedge.server")
MAX_PROBES = 200   # files whose header is read while the client waits


class UploadError(UserError):
    """An upload that cannot become a study; ``status`` is the HTTP status to answer with."""

    def __init__(self, path: str | Path, problem: str, status: int = 400):
        super().__init__(path, problem)
        self.status = status


@dataclass(frozen=True)
class UploadPolicy:
    """Limits of one upload: ``limits.max_archive_bytes`` bounds all its files after unpacking."""

    limits: Limits = Limits()
    min_free_bytes: int = 0


def receive_study(files: list[FileStorage], store: StudyStore, jobs: JobQueue,
                  policy: UploadPolicy = UploadPolicy()) -> str:
    """Save an upload as a new study and queue it; return its id.

    A bad upload is an UploadError even when the queue is full; a good one then raises QueueFull.
    Either way nothing of the upload is kept.
    """
    check_free_space(store.root, 0, policy.min_free_bytes)
    try:
        study_id = store.create()
    except OSError as exc:
        raise _disk_error(exc) from None
    try:
        upload = store.upload_dir(study_id)
        n_files = save_upload(files, upload, policy)
        jobs.submit(study_id, n_files, study=identity_of_files(sorted(p for p in upload.rglob("*") if p.is_file())))
    except BaseException as exc:
        shutil.rmtree(store.folder(study_id), ignore_errors=True)
        log.info("upload rejected: %s", getattr(exc, "status", type(exc).__name__))
        raise
    return study_id


def save_upload(files: list[FileStorage], dest: Path, policy: UploadPolicy = UploadPolicy()) -> int:
    """Write the uploaded files under ``dest`` (unpacking zips); return the number of study files.

    Raises UploadError naming the uploaded file and the problem.
    """
    files = [f for f in files if f.filename and not _is_clutter(f.filename)]
    if not files:
        raise UploadError("upload", "no files: send DICOM files, a folder's files or one zip as the field 'files'")
    limits, total = policy.limits, 0
    taken: dict[Path, int] = {}
    try:
        for i, item in enumerate(files):
            path = _unique(dest / _safe_relative(item.filename or "", i), taken)
            path.parent.mkdir(parents=True, exist_ok=True)
            item.save(path)
            if zipfile.is_zipfile(path):
                size = unpacked_size(path)
                total = _within_limit(total + size, path, limits)
                check_free_space(dest, size, policy.min_free_bytes)
                _unpack(path, limits, taken)
            elif path.suffix.lower() == ".zip":
                raise UploadError(path, "not a valid zip archive (truncated or not a zip)")
            else:
                total = _within_limit(total + path.stat().st_size, path, limits)
        with study_files(dest, limits) as saved:
            _check_readable(saved)
            return len(saved)
    except OSError as exc:
        raise _disk_error(exc) from None
    except UploadError as exc:
        raise UploadError(strip_folder(exc.path, dest), exc.problem, exc.status) from None
    except StudyError as exc:
        status = 413 if isinstance(exc, FileTooLargeError) else 400
        raise UploadError(strip_folder(exc.path, dest), strip_folder(exc.problem, dest), status) from None


def check_free_space(folder: Path, needed: int, min_free: int) -> None:
    """Raise a 507 UploadError when writing ``needed`` bytes would leave less than ``min_free`` free."""
    free = shutil.disk_usage(folder).free
    if free - needed < min_free:
        raise UploadError("upload", f"the server's disk is full ({free // 2**20} MB free, "
                                    f"{(needed + min_free) // 2**20} MB needed; server.min_free_mb); "
                                    "try again later", 507)


def _disk_error(exc: OSError) -> UploadError | OSError:
    """The 507 UploadError of a full disk; any other OSError as it is."""
    if is_disk_full(exc):
        return UploadError("upload", "the server's disk is full; try again later", 507)
    return exc


def _within_limit(total: int, path: Path, limits: Limits) -> int:
    """``total``, or a 413 UploadError when the upload's files together exceed the unpacked limit."""
    if total > limits.max_archive_bytes:
        raise UploadError(path, f"the upload unpacks to more than the limit of {limits.max_archive_bytes // 2**20} MB "
                                "(server.max_unpacked_mb)", 413)
    return total


def _safe_relative(name: str, index: int) -> Path:
    """The client's (possibly folder-relative) name with every part made safe; never absolute or ``..``."""
    parts = [secure_filename(p) for p in PurePosixPath(name.replace("\\", "/")).parts]
    parts = [p for p in parts if p]
    return Path(*parts) if parts else Path(f"file-{index:05d}")


def _is_clutter(name: str) -> bool:
    """Hidden files and folders (``.DS_Store``, ``__MACOSX``) that a folder upload may carry."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return any((p.startswith(".") and p not in (".", "..")) or p == "__MACOSX" for p in parts)


def _unique(path: Path, taken: dict[Path, int]) -> Path:
    """``path``, or ``name-1.ext``, ``name-2.ext``... when it exists (same names in a folder upload).
    ``taken`` remembers the last number given per name, so that n equal names cost O(n), not O(n²)."""
    wanted, n = path, taken.get(path, 0)
    while path.exists():
        n += 1
        path = wanted.with_name(f"{wanted.stem}-{n}{wanted.suffix}")
    taken[wanted] = n
    return path


def _unpack(archive: Path, limits: Limits, taken: dict[Path, int]) -> None:
    """Unpack beside itself; a damaged or unsafe zip is a StudyError from ``extract_zip``."""
    extract_zip(archive, _unique(archive.with_suffix(""), taken), limits)
    archive.unlink()


def _check_readable(files: list[Path]) -> None:
    """Refuse the upload when none of its first MAX_PROBES files is a DICOM file or an image slice
    (the check runs in the request thread, so it is bounded)."""
    first: StudyError | None = None
    counted = f"{len(files)}" if len(files) <= MAX_PROBES else f"first {MAX_PROBES} of {len(files)}"
    for f in files[:MAX_PROBES]:
        if is_image_file(f):
            return
        try:
            read_header(f)
            return
        except StudyError as exc:
            first = first or exc
    raise UploadError(first.path if first else "upload",
                      f"none of the {counted} uploaded files is DICOM or an image slice"
                      + (f" ({first.problem})" if first else ""), 415)
