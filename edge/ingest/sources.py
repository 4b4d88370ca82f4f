"""Turn what the user gave (folder, zip, file list) into a flat list of files on disk."""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edge.errors import CorruptFileError, EmptyStudyError, FileTooLargeError, UnsafeArchiveError
from edge.storage import is_disk_full


@dataclass(frozen=True)
class Limits:
    """Size limits protecting the reader from huge files and decompression bombs."""

    max_file_bytes: int = 256 * 2**20
    max_archive_bytes: int = 4 * 2**30
    max_compression_ratio: float = 200.0
    max_files: int = 20_000


IGNORED_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}


@contextlib.contextmanager
def study_files(source: str | Path | Sequence[str | Path], limits: Limits = Limits()) -> Iterator[list[Path]]:
    """Yield the regular files of a study: a folder (recursive), a zip, a single file or a list of these.

    Zip archives are checked for zip-slip and bombs, then unpacked into a temporary folder
    that exists only inside the ``with`` block. Hidden and OS clutter files are left out.
    """
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    with contextlib.ExitStack() as stack:
        files: list[Path] = []
        for item in map(Path, sources):
            if item.is_dir():
                files += _folder_files(item, limits)
            elif item.is_file() and zipfile.is_zipfile(item):
                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ctedge-zip-")))
                files += _folder_files(extract_zip(item, tmp, limits), limits)
            elif item.is_file():
                files.append(item)
            else:
                raise EmptyStudyError(item, "no such file or folder")
        if not files:
            raise EmptyStudyError(", ".join(map(str, sources)), "no files found in the study")
        if len(files) > limits.max_files:
            raise FileTooLargeError(sources[0], f"{len(files)} files, more than the limit of {limits.max_files}")
        for f in files:
            size = f.stat().st_size
            if size > limits.max_file_bytes:
                raise FileTooLargeError(f, f"{size} bytes, larger than the limit of {limits.max_file_bytes}")
        yield files


def _folder_files(folder: Path, limits: Limits) -> list[Path]:
    """The files under ``folder``, following folder links (each real folder once: a link loop ends;
    listing stops past ``limits.max_files``)."""
    files: list[Path] = []
    seen: set[str] = set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        if len(files) > limits.max_files:
            raise FileTooLargeError(folder, f"more than the limit of {limits.max_files} files")
        real = os.path.realpath(root)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__MACOSX"]
        files += [Path(root, n) for n in names if not n.startswith(".") and n.lower() not in IGNORED_NAMES]
    return sorted(p for p in files if p.is_file())


ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError, OSError)
"""What zipfile raises for a damaged archive or member: bad directory, header or CRC, broken deflate
stream, truncated data, unknown version or compression method, encryption flag, a name that cannot
be a file here."""


def unpacked_size(archive: Path) -> int:
    """The bytes ``archive`` declares its members unpack to (checked again while unpacking)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            return sum(m.file_size for m in zf.infolist())
    except ZIP_ERRORS as exc:
        raise CorruptFileError(archive, f"damaged zip archive ({exc})") from exc


def extract_zip(archive: Path, dest: Path, limits: Limits = Limits()) -> Path:
    """Unpack ``archive`` into ``dest`` after checking every member; return ``dest``.

    Raises UnsafeArchiveError for absolute paths, ``..`` components or links (zip-slip),
    and for members whose size or compression ratio exceed ``limits`` (zip bombs);
    CorruptFileError for a damaged archive or member (bad directory, CRC, deflate stream). A full disk
    is not the archive's fault: that OSError is raised as it is.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except ZIP_ERRORS as exc:
        raise CorruptFileError(archive, f"damaged zip archive ({exc})") from exc
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        total = 0
        for m in members:
            name = PurePosixPath(m.filename.replace("\\", "/"))
            if name.is_absolute() or ".." in name.parts or (name.parts and name.parts[0].endswith(":")):
                raise UnsafeArchiveError(archive, f"member {m.filename!r} points outside the archive root")
            if (m.external_attr >> 16) & 0o170000 == 0o120000:
                raise UnsafeArchiveError(archive, f"member {m.filename!r} is a symbolic link")
            if m.file_size > limits.max_file_bytes:
                raise FileTooLargeError(archive, f"member {m.filename!r} unpacks to {m.file_size} bytes")
            if m.compress_size and m.file_size / m.compress_size > limits.max_compression_ratio:
                raise UnsafeArchiveError(archive, f"member {m.filename!r} has a compression ratio above "
                                                  f"{limits.max_compression_ratio:.0f} (zip bomb?)")
            total += m.file_size
        if total > limits.max_archive_bytes:
            raise UnsafeArchiveError(archive, f"unpacks to {total} bytes, above the limit of {limits.max_archive_bytes}")
        for m in members:
            _extract_member(zf, m, dest / PurePosixPath(m.filename.replace("\\", "/")), archive)
    return dest


def _extract_member(zf: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path, archive: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(member) as src, open(target, "wb") as out:
            _copy_bounded(src, out, member.file_size, archive, member.filename)
    except ZIP_ERRORS as exc:
        if is_disk_full(exc):
            raise
        raise CorruptFileError(archive, f"member {member.filename!r} cannot be unpacked "
                                        f"({type(exc).__name__}: {exc})") from exc


def _copy_bounded(src, out, declared: int, archive: Path, name: str) -> None:
    """Copy at most the declared size: a member that inflates beyond its header is rejected."""
    written = 0
    while chunk := src.read(1 << 20):
        written += len(chunk)
        if written > declared:
            raise UnsafeArchiveError(archive, f"member {name!r} inflates beyond its declared size")
        out.write(chunk)
