"""Decode the slices of the chosen series into one int16 HU volume, on all cores.

pydicom's JPEG-lossless decoders (pylibjpeg, python-gdcm) hold the GIL, so threads do not decode
in parallel; worker processes do (``ctedge bench`` prints serial vs threads vs processes). Each
slice is read again from its path in the worker, so the parent never keeps pixel data in its
headers, and decoded slices are written straight into one preallocated array (no list + stack copy).
The process pool (forkserver: safe in the threaded server) starts once and is reused. Starting it
costs about :data:`POOL_START_S` (a fresh interpreter importing the decoders), more than it saves on
a study of ordinary size on a few cores, so a process that has not started it decodes in-process
unless the study is large enough to repay the start (:func:`default_mode`); the services, which
decode study after study, start it at once in the background (:func:`warm_pool`), and the DICOM
receiver hands each slice to :data:`PREFETCH` as it is stored, so that a received study is mostly
decoded by the time it is complete (:class:`Prefetch`; ``decode_series`` takes its slices). It is shut
down at exit (``ctedge`` turns SIGTERM into a normal exit). A worker also ends by itself when the
process that started the pool dies (SIGKILL, a crash): it waits on a pidfd of that process, so no
decoding worker, forkserver or resource tracker outlives its server or watcher.
"""

from __future__ import annotations

import atexit
import functools
import logging
import multiprocessing
import os
import select
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from edge.errors import CorruptFileError, FileTooLargeError, NoPixelDataError, StudyError, UnsupportedTransferSyntaxError
from edge.ingest.dicom_files import decode_hu, read_header
from edge.preprocess.window import resize_slices

Mode = Literal["serial", "threads", "processes"]
MIN_SLICES_FOR_PROCESSES = 16
"""Below this many slices even a running pool is not worth the transfers."""
POOL_START_S = 1.3
"""Seconds to start the pool and its workers (forkserver, imports), measured (docs/benchmarks.md)."""
SERIAL_S_PER_SLICE = 0.0085
"""Seconds to decode one 512x512 JPEG-lossless slice in-process, measured (docs/benchmarks.md)."""
CHUNK = 4
log = logging.getLogger("ctedge.ingest")
ERRORS = {e.__name__: e for e in (CorruptFileError, FileTooLargeError, NoPixelDataError, UnsupportedTransferSyntaxError)}

_pool: ProcessPoolExecutor | None = None
_pool_broken = False
_pool_lock = threading.Lock()


def _disable_pool() -> None:
    global _pool, _pool_broken
    with _pool_lock:
        _pool, _pool_broken = None, True


def default_mode(n_slices: int, compressed: bool) -> Mode:
    """``$CTEDGE_DECODE`` (serial, threads or processes) if set; else processes for compressed slices
    when there are several cores and enough slices (and workers can start) and either the pool is
    running or the study repays its start: ``n_slices * SERIAL_S_PER_SLICE * (1 - 1/cores) >
    POOL_START_S`` (on 2 cores about 300 slices, on 4 about 200); else serial. Uncompressed slices
    cost more to send back than to read."""
    if os.environ.get("CTEDGE_DECODE") in ("serial", "threads", "processes"):
        return os.environ["CTEDGE_DECODE"]  # type: ignore[return-value]
    cores = os.cpu_count() or 1
    if not compressed or cores < 2 or n_slices < MIN_SLICES_FOR_PROCESSES or _pool_broken:
        return "serial"
    saved = n_slices * SERIAL_S_PER_SLICE * (1 - 1 / cores)
    return "processes" if _pool is not None or saved > POOL_START_S else "serial"


def warm_pool() -> None:
    """Start the decoding pool and its workers in the background (for services: the first study
    then finds it running); a pool that cannot start is disabled, as when decoding."""
    if (os.cpu_count() or 1) < 2 or _pool_broken:
        return

    def start() -> None:
        try:
            _process_pool().submit(int).result()
        except (BrokenProcessPool, OSError):
            log.warning("decoding worker processes could not start; decoding in this process")
            _disable_pool()

    threading.Thread(target=start, name="decode-pool-start", daemon=True).start()


def decode_path(path: Path, shape: tuple[int, int], size: int | None = None) -> np.ndarray | tuple[str, str]:
    """One ``shape`` slice as int16 HU (resized to float32 ``size`` x ``size`` when given), or (error
    class name, problem) for a slice that cannot be decoded."""
    try:
        ds = pydicom.dcmread(path)
        hu = decode_hu(ds, path)
        if hu.shape != shape:
            return "CorruptFileError", f"decoded to {hu.shape}, expected {shape}"
        return hu if size is None else resize_slices(hu[None], size)[0]
    except tuple(ERRORS.values()) as exc:
        return type(exc).__name__, exc.problem
    except Exception as exc:  # noqa: BLE001 - the file changed or broke since its header was read
        return "CorruptFileError", f"cannot be read again for decoding ({type(exc).__name__})"


PARENT_POLL_S = 1.0
"""How often a worker checks its parent where pidfds are missing (Linux < 5.3)."""


def _start_worker(parent: int) -> None:
    """Initializer of a decoding worker: ctedge's pydicom settings, and a thread that ends the worker
    as soon as ``parent`` (the process that owns the pool) has died."""
    from edge.ingest.pydicom_adapter import configure_pydicom

    configure_pydicom()
    threading.Thread(target=_exit_when_gone, args=(parent,), name="ctedge-parent-watch", daemon=True).start()


def _exit_when_gone(parent: int) -> None:
    try:
        fd = os.pidfd_open(parent)  # readable once the process has exited
    except (AttributeError, OSError):
        fd = -1
    if fd >= 0:
        select.select([fd], [], [])
    else:
        while _alive(parent):
            time.sleep(PARENT_POLL_S)
    os._exit(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _process_pool() -> ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            context = multiprocessing.get_context("forkserver")
            _pool = ProcessPoolExecutor(os.cpu_count() or 1, mp_context=context, initializer=_start_worker,
                                        initargs=(os.getpid(),))
            atexit.register(stop_workers)
        return _pool


def stop_workers() -> None:
    """Shut the decoding pool down (queued slices are cancelled) and wait for its workers to exit;
    the next decode starts a new pool."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def _results(paths: Sequence[Path], mode: Mode, shape: tuple[int, int], size: int | None
             ) -> Iterator[np.ndarray | tuple[str, str]]:
    decode = functools.partial(decode_path, shape=shape, size=size)
    if mode == "serial":
        return map(decode, paths)
    if mode == "threads":
        executor: Executor = ThreadPoolExecutor(os.cpu_count() or 1)
        results = executor.map(decode, paths)
        executor.shutdown(wait=False)
        return results
    return _process_pool().map(decode, paths, chunksize=CHUNK)


Decoded = np.ndarray | tuple[str, str]
"""A slice decoded by :func:`decode_path`, or (error class name, problem)."""


@dataclass(frozen=True)
class _Ahead:
    future: Future
    stat: tuple[int, int, int]      # (inode, size, mtime_ns) of the file when it was handed over
    nbytes: int
    since: float                    # time.monotonic() of the hand-over


HEADER_BYTES = 64 * 2**10
"""What one parsed header is counted as in the budget (its elements above 64 KB stay on disk)."""


class Prefetch:
    """Slices decoded (and resized) and headers parsed ahead, in the worker processes, while the rest of
    their study is still arriving, for :func:`decode_series` and :meth:`header` to take instead of
    doing it again. Each is taken at most once, and only if its file is unchanged (inode, size, mtime)
    and, for a slice, asked for with the same shape and size. At most ``max_bytes`` are held: past that,
    slices are decoded as usual, when their study is read; what is not taken within ``ttl_s`` (a series
    never analysed) is dropped at the next hand-over or read. Without running worker processes nothing
    is done ahead: in a thread of this process, pydicom's warnings (``read_header`` records them to find
    truncated files) would mix with those of the thread reading another study."""

    def __init__(self, max_bytes: int = 256 * 2**20, ttl_s: float = 900.0):
        self.max_bytes, self.ttl_s = max_bytes, ttl_s
        self._items: dict[tuple[str, object], _Ahead] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def submit(self, path: Path, shape: tuple[int, int], size: int | None) -> bool:
        """Start decoding ``path`` (a ``shape`` slice) as :func:`decode_path` would and parsing its header
        as ``read_header``, in the worker processes; False when they are not running, the file was handed
        over already, or the budget is spent (it will be done when its study is read)."""
        real = os.path.realpath(path)
        nbytes = (size * size * 4 if size else shape[0] * shape[1] * 2) + HEADER_BYTES
        with self._lock:
            pool = _pool if not _pool_broken else None
            self._expire()
            if pool is None or {(real, "header"), (real, (shape, size))} & self._items.keys() or \
                    self._bytes + nbytes > self.max_bytes:
                return False
            stat, now = _stat(path), time.monotonic()
            pixels = pool.submit(decode_path, Path(path), shape, size)
            header = pool.submit(read_header, Path(path))
            self._items[(real, (shape, size))] = _Ahead(pixels, stat, nbytes - HEADER_BYTES, now)
            self._items[(real, "header")] = _Ahead(header, stat, HEADER_BYTES, now)
            self._bytes += nbytes
        return True

    def take(self, path: Path, shape: tuple[int, int], size: int | None) -> Decoded | None:
        """The slice decoded ahead for ``path`` (waiting for it if still being decoded), or None."""
        try:
            return self._take(path, (shape, size))
        except Exception:  # noqa: BLE001 - a broken pool or a cancelled slice: decode it as usual
            return None

    def header(self, path: Path) -> Dataset:
        """``read_header(path)``: parsed ahead when the file was handed over unchanged, else now."""
        if self._items:
            try:
                ahead = self._take(path, "header")
            except StudyError:
                raise                   # the file is unchanged: reading it now would fail the same way
            except Exception:  # noqa: BLE001 - cancelled: read it now
                ahead = None
            if ahead is not None:
                return ahead
        return read_header(path)

    def _take(self, path: Path, what: object) -> Any:
        with self._lock:
            self._expire()
            item = self._items.pop((os.path.realpath(path), what), None)
            if item is not None:
                self._bytes -= item.nbytes
        return None if item is None or _stat(path) != item.stat else item.future.result()

    def __len__(self) -> int:
        """How many headers and slices are held (done or under way)."""
        return len(self._items)

    def clear(self) -> None:
        """Drop everything done ahead and cancel what is not done yet (a receiver that stops)."""
        with self._lock:
            for item in self._items.values():
                item.future.cancel()
            self._items.clear()
            self._bytes = 0

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, item in self._items.items() if now - item.since > self.ttl_s]:
            item = self._items.pop(key)
            item.future.cancel()
            self._bytes -= item.nbytes


def _stat(path: Path) -> tuple[int, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0, 0)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


PREFETCH = Prefetch()
"""The process's slices decoded ahead (the DICOM receiver hands them over as they are stored)."""


def decode_series(paths: Sequence[Path], shape: tuple[int, int], compressed: bool = True, mode: Mode | None = None,
                  size: int | None = None) -> tuple[np.ndarray, list[int], list[StudyError]]:
    """Decode ``paths`` (one slice each, all ``shape``) in order: the (kept, rows, cols) int16 HU
    volume, the indices of the slices kept, and the errors of the slices that could not be decoded.
    With ``size``, each slice is resized as it is decoded (``edge.preprocess.window.resize_slices``)
    and the volume is (kept, size, size) float32: the full-resolution volume never exists.
    Slices decoded ahead (:data:`PREFETCH`) are taken from there; ``mode`` (for the others) defaults
    to :func:`default_mode`."""
    hu = np.empty((len(paths), *shape) if size is None else (len(paths), size, size),
                  np.int16 if size is None else np.float32)
    kept: list[int] = []
    failures: list[StudyError] = []
    ahead = {i: r for i, p in enumerate(paths) if (r := PREFETCH.take(p, shape, size)) is not None} if len(PREFETCH) else {}
    rest = [p for i, p in enumerate(paths) if i not in ahead]
    mode = mode or default_mode(len(rest), compressed)
    try:
        decoded = _results(rest, mode, shape, size)
        for i, path in enumerate(paths):
            result = ahead[i] if i in ahead else next(decoded)
            if isinstance(result, tuple):
                failures.append(ERRORS[result[0]](path, result[1]))
                continue
            hu[len(kept)] = result
            kept.append(i)
    except BrokenProcessPool:
        # e.g. a script without an ``if __name__ == "__main__"`` guard: its workers cannot start
        log.warning("decoding worker processes could not start; decoding in this process from now on")
        _disable_pool()
        return decode_series(paths, shape, compressed, "serial", size)
    return (hu if len(kept) == len(paths) else hu[:len(kept)].copy()), kept, failures
