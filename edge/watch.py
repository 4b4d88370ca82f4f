"""``ctedge watch``: process every study dropped into an inbox folder once, crash-safely.

An inbox entry (a folder, a zip, or a stray file) is a study. Its *name* is the entry name without
``.zip``; its *fingerprint* hashes the relative path, size and mtime of every file in it.

* **Ready**: with ``watcher.marker_file`` set, once that file exists in the folder (for a zip or
  file: a sibling ``<entry>.<marker>``); otherwise once nothing in it (files or folders) has
  changed status for ``watcher.stable_seconds``, judged by ctime, which copies cannot backdate.
* **Done** iff ``OUTBOX/<name>/source.json`` or ``OUTBOX/failed/<name>/source.json`` records the
  entry's current fingerprint. The record is built in ``OUTBOX/.partial/<name>-<pid>`` and
  renamed into place: that rename is the commit point, so a kill at any moment loses nothing and
  duplicates nothing; ``.partial`` leftovers are removed at start-up. A stop (SIGTERM, Ctrl-C)
  removes the partial record of the study in progress; that study is taken again at the next start.
* **Changed** (same name, other fingerprint): processed again; the previous record is moved to
  ``OUTBOX/.superseded/<name>-<UTC time>/`` before the new one is renamed into place, and its
  ``report.html`` gets a notice linking to the new result.
* The inbox is never modified: ctedge does not delete or move patient data.
* **Read ahead**: while one study is preprocessed, classified and explained, the next ready study of
  the pass is read and decoded in a background thread (the decoding itself runs in the worker
  processes of ``edge.ingest.parallel``), one study ahead at most. Reading writes nothing to the
  outbox, so a kill during it loses nothing: that study has no record and is taken after the restart.
* **Links**: a symbolic link (the entry itself or anything in it) whose target is outside the inbox
  is not followed; the study goes to ``OUTBOX/failed/<name>/`` with the link named in ``error.txt``.
* **Log and summary**: one line per study (verdict, model, seconds; ``ctedge watch`` shows them
  without ``-v``) and one row per study in ``OUTBOX/summary.csv`` (finished, study, status, verdict,
  model, seconds; retention prunes its rows after ``retention.outbox_days``). ``--once`` waits up to
  ``stable_seconds`` for copies still in progress.
* The outbox and everything in it are owner-only (0700/0600), whatever the umask. Names from the
  inbox are escaped before they go into a log line.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import html
import json
import logging
import os
import shutil
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO
from urllib.parse import quote

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from edge import __version__
from edge.engine import Device, Engine
from edge.errors import UserError
from edge.profile import WatcherSettings
from edge.result import ResultDoc, load_result
from edge.stages import ReadStudy
from edge.storage import fsync_path, private_dir, restrict_tree
from edge.untrusted import printable

log = logging.getLogger("ctedge.watch")
PARTIAL, SUPERSEDED, FAILED, SOURCE = ".partial", ".superseded", "failed", "source.json"
SUMMARY = "summary.csv"
SUMMARY_FIELDS = ("finished", "study", "status", "verdict", "model", "seconds")
FSYNC_THREADS = 8
"""A record's files (about 500 for a CT study) are flushed this many at a time: the disk takes them
together (measured 0.13-0.34 s instead of 0.5-1.2 s for 480 PNGs on this VM's disk)."""


@dataclass(frozen=True)
class Entry:
    """One inbox entry and its state on disk when it was surveyed."""

    name: str            # study name: entry name without .zip
    path: Path
    fingerprint: str     # sha256 over (relative path, size, mtime_ns) of every file
    newest_ctime: float  # most recent status change of any file or folder in it (s since epoch)
    n_files: int


def survey(path: Path, marker: str = "") -> Entry:
    """Fingerprint and newest ctime of an inbox entry (the marker file is left out of both). A link
    leaving the inbox is taken as it is, without looking behind it."""
    if path.is_file() or (path.is_symlink() and not _inside(path, path.parent)):
        items = [path]
    else:
        items = [path, *sorted(path.rglob("*"))]
    digest, newest, n_files = hashlib.sha256(), 0.0, 0
    for item in items:
        if item.name == marker and item.parent == path:
            continue
        st = item.lstat()
        newest = max(newest, st.st_ctime)
        if item.is_file():
            n_files += 1
            digest.update(f"{item.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    name = path.name[:-4] if path.is_file() and path.suffix.lower() == ".zip" else path.name
    return Entry(name, path, digest.hexdigest(), newest, n_files)


def links_leaving(path: Path, inbox: Path) -> list[Path]:
    """The symbolic links of an inbox entry (the entry itself included) whose target is outside the inbox."""
    if path.is_symlink() and not _inside(path, inbox):
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_symlink() and not _inside(p, inbox)) if path.is_dir() else []


def _inside(link: Path, inbox: Path) -> bool:
    """True when ``link`` resolves to an existing path inside ``inbox`` (dangling or looping: False)."""
    try:
        return link.resolve(strict=True).is_relative_to(inbox.resolve())
    except (OSError, RuntimeError):
        return False


def marker_path(path: Path, marker: str) -> Path:
    """Where the sender signals a complete copy: inside a folder, beside a zip or file."""
    return path / marker if path.is_dir() else path.with_name(f"{path.name}.{marker}")


@dataclass
class Scan:
    entries: list[Entry]        # oldest first
    skipped: dict[str, str]     # study name -> why it cannot be taken (the operator must act)


def scan(inbox: Path, marker: str = "") -> Scan:
    """Every study in the inbox, oldest first. Hidden entries and marker files are not studies;
    a name claimed by two entries (``P1`` and ``P1.zip``) or the reserved name ``failed`` is skipped."""
    entries = []
    for path in sorted(inbox.iterdir()):
        if path.name.startswith(".") or (marker and path.is_file() and path.name.endswith(f".{marker}")):
            continue
        try:
            entries.append(survey(path, marker))
        except OSError:  # removed or renamed while we looked: it is still moving
            continue
    counts = Counter(e.name for e in entries)
    skipped = {n: f"{c} inbox entries have this study name; rename one" for n, c in counts.items() if c > 1}
    for reserved in (FAILED, SUMMARY):
        if reserved in counts:
            skipped[reserved] = f"the study name {reserved!r} is reserved for the outbox; rename it"
    return Scan(sorted((e for e in entries if e.name not in skipped), key=lambda e: e.newest_ctime), skipped)


def is_stable(entry: Entry, settings: WatcherSettings, now: float | None = None) -> bool:
    """True when the copy of ``entry`` has finished (marker present, or quiet for stable_seconds)."""
    if settings.marker_file:
        return marker_path(entry.path, settings.marker_file).exists()
    return (time.time() if now is None else now) - entry.newest_ctime >= settings.stable_seconds


def record_paths(outbox: Path, name: str) -> tuple[Path, Path]:
    """Where the result and the failure record of a study live."""
    return outbox / name, outbox / FAILED / name


def is_done(outbox: Path, entry: Entry) -> bool:
    """True when a committed record (result or failure) carries the entry's current fingerprint."""
    for record in record_paths(outbox, entry.name):
        try:
            if json.loads((record / SOURCE).read_text())["fingerprint"] == entry.fingerprint:
                return True
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return False


def recover(outbox: Path) -> int:
    """Remove the partial records a killed watcher left behind; return how many there were."""
    partial = outbox / PARTIAL
    leftovers = sorted(partial.iterdir()) if partial.is_dir() else []
    for path in leftovers:
        shutil.rmtree(path)
    return len(leftovers)


def read_entry(engine: Engine | Device, entry: Entry) -> ReadStudy:
    """The first stage of a study's analysis, which ``run_once`` runs one study ahead: refuse links
    that leave the inbox (before anything behind them is read), then read and decode the study."""
    if links := links_leaving(entry.path, entry.path.parent):
        raise UserError(links[0], f"a symbolic link to {os.readlink(links[0])!r}, outside the inbox: links that "
                                  f"leave the inbox are not followed ({len(links)} such link(s) in the study)")
    return engine.read(entry.path)


OnVerdict = Callable[[Entry, ResultDoc], None] | None
"""Told an entry and its ``ctedge predict --json`` object as soon as its verdict is known, before the
explanation and the commit (the DICOM service sends the SR then)."""


def process_one(engine: Engine | Device, outbox: Path, entry: Entry, marker: str = "",
                read: Future[ReadStudy] | None = None, on_verdict: OnVerdict = None) -> str:
    """Analyse one study (``read``: its :func:`read_entry` run ahead; else it is read now) and commit
    its record; return "done", "failed", or "changed" when the entry changed between its survey and
    the end of its analysis (nothing is committed then; it is taken again once stable). ``on_verdict``
    is told the verdict before the explanation."""
    work = outbox / PARTIAL / f"{entry.name}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    private_dir(work.parent)
    private_dir(work)
    status, error = "done", ""
    try:
        engine.analyse(read.result() if read is not None else read_entry(engine, entry), work,
                       on_verdict=(lambda doc: on_verdict(entry, doc)) if on_verdict else None)
    except UserError as exc:
        status, error = "failed", f"{exc}\n"
    except Exception as exc:  # noqa: BLE001 - one study must never stop the watcher
        status, error = "failed", f"internal error: {type(exc).__name__}: {exc}\n\n{traceback.format_exc()}"
    except BaseException:  # Ctrl-C or SIGTERM: nothing is committed; the study is taken again at the next start
        shutil.rmtree(work, ignore_errors=True)
        raise
    if not _unchanged(entry, marker):
        shutil.rmtree(work)
        return "changed"
    if status == "failed":
        shutil.rmtree(work)
        work.mkdir()
        (work / "error.txt").write_text(error)
    source = {"study": entry.name, "inbox_entry": entry.path.name, "status": status, "n_files": entry.n_files,
              "fingerprint": entry.fingerprint, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "software": f"ctedge {__version__}"}
    (work / SOURCE).write_text(json.dumps(source, indent=2))
    restrict_tree(work)
    commit(work, outbox, entry.name, status)
    return status


def commit(work: Path, outbox: Path, name: str, status: str) -> Path:
    """Flush ``work`` to disk, move earlier records of ``name`` to .superseded, then rename ``work``
    into place: that rename is the commit. Returns the record's path."""
    with ThreadPoolExecutor(FSYNC_THREADS) as pool:   # a power cut after the rename must not leave empty files
        list(pool.map(fsync_path, [*work.rglob("*"), work]))
    result, failure = record_paths(outbox, name)
    for old in (result, failure):
        if old.exists():
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
            aside = outbox / SUPERSEDED / f"{name}-{stamp}{'-failed' if old == failure else ''}"
            private_dir(aside.parent)
            os.rename(old, aside)
            point_to_successor(aside / "report.html", name)
    target = result if status == "done" else failure
    private_dir(target.parent)
    os.rename(work, target)
    fsync_path(target.parent)
    return target


def point_to_successor(page: Path, name: str) -> None:
    """Put a notice at the top of a superseded result page (in ``.superseded/<name>-<time>/``) linking
    to the result that replaces it (``<name>/`` beside ``.superseded``)."""
    if not page.is_file():
        return
    link = html.escape(f"../../{quote(name)}/report.html")
    notice = (f'<p class="superseded"><strong>Superseded.</strong> The study was analysed again (it changed, e.g. more '
              f'images arrived); <a href="{link}">the current result</a> replaces this one.</p>')
    page.write_text(page.read_text().replace("<body>", f"<body>\n{notice}", 1))


@dataclass
class Summary:
    done: int = 0
    failed: int = 0
    waiting: int = 0    # not yet stable, or changed while it was analysed


def run_once(engine: Engine | Device, inbox: Path, outbox: Path, settings: WatcherSettings,
             warned: set[str] | None = None, receiving: Callable[[str], bool] | None = None,
             on_verdict: OnVerdict = None) -> Summary:
    """One pass: process every ready study that is not done yet, with a progress bar. Problems the
    operator must fix are logged once per name in ``warned``. A study for which ``receiving(name)``
    is true (the DICOM receiver still has an association open that brought it instances) is not ready.
    ``on_verdict``: see :func:`process_one`."""
    warned = set() if warned is None else warned
    found = scan(inbox, settings.marker_file)
    for name in sorted(set(found.skipped) - warned):
        log.warning("%s: skipped: %s", printable(name), found.skipped[name])
    warned |= set(found.skipped)
    todo = [e for e in found.entries if not is_done(outbox, e)]
    ready = [e for e in todo if is_stable(e, settings) and not (receiving and receiving(e.name))]
    summary = Summary(waiting=len(todo) - len(ready))
    reader = ThreadPoolExecutor(1, thread_name_prefix="ctedge-read-ahead")
    try:
        with logging_redirect_tqdm():
            ahead = reader.submit(read_entry, engine, ready[0]) if ready else None
            for i, entry in enumerate(tqdm(ready, desc="studies", unit="study", disable=None)):
                read, ahead = ahead, reader.submit(read_entry, engine, ready[i + 1]) if i + 1 < len(ready) else None
                start = time.perf_counter()
                status = process_one(engine, outbox, entry, settings.marker_file, read, on_verdict)
                seconds = time.perf_counter() - start
                name = printable(entry.name)
                if status == "done":
                    summary.done += 1
                    verdict, model = _verdict(outbox / entry.name)
                    log.info("%s: %s (%s) in %.1f s, result in %s", name, verdict, model, seconds,
                             printable(str(outbox / entry.name), 200))
                    add_summary_row(outbox, entry.name, status, verdict, model, seconds)
                elif status == "failed":
                    summary.failed += 1
                    log.warning("%s: failed in %.1f s, see %s", name, seconds,
                                printable(str(outbox / FAILED / entry.name / "error.txt"), 200))
                    add_summary_row(outbox, entry.name, status, "", "", seconds)
                else:
                    summary.waiting += 1
                    log.info("%s: changed while it was analysed; taken again once stable", name)
    finally:
        reader.shutdown(cancel_futures=True)
    if ready:
        log.info("pass: %d done, %d failed, %d waiting", summary.done, summary.failed, summary.waiting)
    return summary


def _verdict(record: Path) -> tuple[str, str]:
    """The verdict and the model (name, version) of a committed result."""
    try:
        doc = load_result(record)
        model = doc.get("model", {})
        return str(doc.get("label", "?")), f"{model.get('name', '?')} {model.get('version', '')}".strip()
    except (OSError, ValueError):
        return "?", "?"


@contextlib.contextmanager
def open_summary(outbox: Path) -> Iterator[TextIO]:
    """OUTBOX/summary.csv (created owner-only), open for appending under an exclusive lock: retention
    rewrites it under the same lock, so a row appended meanwhile goes to the new file, not the replaced one."""
    path = outbox / SUMMARY
    while True:
        f = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600), "a+", newline="")
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            current = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        f.close()
    with f:
        yield f


def add_summary_row(outbox: Path, study: str, status: str, verdict: str, model: str, seconds: float) -> None:
    """Append one row to OUTBOX/summary.csv (owner-only; the header is written with the first row)."""
    with open_summary(outbox) as f:
        writer = csv.writer(f)
        if f.seek(0, os.SEEK_END) == 0:
            writer.writerow(SUMMARY_FIELDS)
        writer.writerow([datetime.now(timezone.utc).isoformat(timespec="seconds"), study, status, verdict, model,
                         f"{seconds:.1f}"])


def watch(engine: Engine | Device, inbox: Path, outbox: Path, settings: WatcherSettings, once: bool = False,
          after_pass: Callable[[], object] | None = None, stop: threading.Event | None = None,
          receiving: Callable[[str], bool] | None = None, on_verdict: OnVerdict = None) -> Summary:
    """Hold the outbox lock, clean up after a crash, then poll the inbox until ``stop`` is set (a
    single pass with ``once``, repeated for up to ``stable_seconds`` while copies are still in
    progress), calling ``after_pass`` after each pass (the DICOM sender queues new results there;
    ``receiving`` and ``on_verdict`` are :func:`run_once`'s).
    While polling, a pass that raises is logged and the next pass tries again; with ``once`` the
    error is raised. Returns the last pass's summary (with ``once``: of all its passes)."""
    if not inbox.is_dir():
        raise UserError(inbox, "the inbox is not a folder")
    stop = stop or threading.Event()
    private_dir(outbox)
    with outbox_lock(outbox):
        removed = recover(outbox)
        if removed:
            log.warning("removed %d partial record(s) left by an interrupted run", removed)
        warned: set[str] = set()
        summary = Summary()
        settle_until = time.monotonic() + settings.stable_seconds + 1.0
        while not stop.is_set():
            try:
                last = run_once(engine, inbox, outbox, settings, warned, receiving, on_verdict)
                summary = Summary(summary.done + last.done, summary.failed + last.failed, last.waiting) if once else last
            except Exception:  # noqa: BLE001 - logged; a service must outlive a bad pass
                if once:
                    raise
                log.exception("a watcher pass failed; trying again after %.0f s", settings.poll_seconds)
            if after_pass is not None:
                after_pass()
            if once and not (summary.waiting and time.monotonic() < settle_until):
                break
            if once:
                log.info("%d stud%s still being copied: waiting for it to settle", summary.waiting,
                         "y" if summary.waiting == 1 else "ies")
            stop.wait(min(settings.poll_seconds, 1.0) if once else settings.poll_seconds)
        return summary


@contextlib.contextmanager
def outbox_lock(outbox: Path) -> Iterator[None]:
    """One watcher per outbox: an exclusive lock on OUTBOX/.lock, released by the kernel on a kill."""
    with os.fdopen(os.open(outbox / ".lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise UserError(outbox, "another ctedge watch is already using this outbox") from exc
        yield


def _unchanged(entry: Entry, marker: str) -> bool:
    try:
        return survey(entry.path, marker).fingerprint == entry.fingerprint
    except OSError:  # removed or renamed meanwhile
        return False
