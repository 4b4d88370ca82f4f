"""Retention: patient data is removed once it is no longer needed (the profile's ``retention:`` days).

* **Inbox** (the watcher's and the DICOM receiver's): an entry whose result is recorded with its
  current fingerprint, and that no DICOM send is still waiting for, is removed ``inbox_days`` after
  its record was finished; a failed one ``outbox_days`` after (the operator's time to look at it).
* **Outbox**: a record (result, failure, superseded record) is removed ``outbox_days`` after it
  finished, and only once its inbox entry is gone (else the watcher would analyse it again). A row of
  ``summary.csv`` (it names the study) is removed ``outbox_days`` after its ``finished`` time; the file
  is rewritten atomically, owner-only, with its header (a row whose time cannot be read is kept).
* **Server results**: a finished study's folder is removed ``results_days`` after it finished.

Every removal is one audit line on the ``ctedge.retention`` logger (shown without ``-v``): what was
removed, its age and the key that allowed it; a study is named by a short hash of its name, never by
the name itself (inbox names are often patient names).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from edge.profile import RetentionSettings
from edge.storage import fsync_path
from edge.watch import (FAILED, PARTIAL, SOURCE, SUMMARY, SUPERSEDED, is_done, marker_path, open_summary,
                        record_paths, survey)

log = logging.getLogger("ctedge.retention")
DAY_S = 86400.0
INTERVAL_S = 3600.0
"""How often the running services apply retention (and once at start)."""


@dataclass(frozen=True)
class Removal:
    what: str       # "inbox entry", "result record", "failure record", "superseded record", "summary row",
                    # "server study"
    study: str      # pseudonym: study-<12 hex digits of sha256(name)>
    age_days: float
    key: str        # the retention key that allowed it

    def line(self) -> str:
        return f"removed {self.what} {self.study} ({self.age_days:.1f} days, retention.{self.key})"


def pseudonym(name: str) -> str:
    """A study's name in the audit log: stable, but not the name (which may be the patient's)."""
    return "study-" + hashlib.sha256(name.encode()).hexdigest()[:12]


def finished_at(record: Path) -> float:
    """When a record or study folder was finished (its source.json or status.json), else its mtime."""
    for name, key in ((SOURCE, "finished"), ("status.json", "finished")):
        try:
            return datetime.fromisoformat(json.loads((record / name).read_text())[key]).timestamp()
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return record.stat().st_mtime


def _remove(path: Path, removal: Removal, dry_run: bool) -> Removal:
    if not dry_run:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return _log(removal, dry_run)


def _log(removal: Removal, dry_run: bool) -> Removal:
    """The removal's audit line."""
    log.info("%s%s", "would have " if dry_run else "", removal.line())
    return removal


def clean_inbox(inbox: Path, outbox: Path, settings: RetentionSettings, marker: str = "",
                unsent: Iterable[str] = (), now: float | None = None, dry_run: bool = False) -> list[Removal]:
    """Remove the inbox entries whose record allows it (module docstring); ``unsent``: study names
    with results still waiting to be sent to a DICOM destination."""
    now = time.time() if now is None else now
    waiting = set(unsent)
    removed = []
    for path in sorted(inbox.iterdir()) if inbox.is_dir() else []:
        if path.name.startswith(".") or (marker and path.name.endswith(f".{marker}")):
            continue
        try:
            entry = survey(path, marker)
        except OSError:
            continue
        if entry.name in waiting or not is_done(outbox, entry):
            continue
        result, failure = record_paths(outbox, entry.name)
        record, days, key = (result, settings.inbox_days, "inbox_days") if (result / SOURCE).is_file() \
            else (failure, settings.outbox_days, "outbox_days")
        age = (now - finished_at(record)) / DAY_S
        if age >= days:
            removed.append(_remove(path, Removal("inbox entry", pseudonym(entry.name), age, key), dry_run))
            if marker and marker_path(path, marker).exists() and not dry_run:
                marker_path(path, marker).unlink()
    return removed


def clean_outbox(outbox: Path, inbox: Path, settings: RetentionSettings, now: float | None = None,
                 dry_run: bool = False) -> list[Removal]:
    """Remove the outbox records older than ``outbox_days`` whose inbox entry is gone."""
    now = time.time() if now is None else now
    in_inbox = {p.name[:-4] if p.suffix.lower() == ".zip" else p.name for p in inbox.iterdir()} if inbox.is_dir() else set()
    groups = [("result record", [p for p in outbox.iterdir() if p.name not in (FAILED, PARTIAL, SUPERSEDED)]),
              ("failure record", list((outbox / FAILED).iterdir()) if (outbox / FAILED).is_dir() else []),
              ("superseded record", list((outbox / SUPERSEDED).iterdir()) if (outbox / SUPERSEDED).is_dir() else [])]
    removed = []
    for what, records in groups:
        for record in sorted(records):
            if not record.is_dir() or record.name.startswith(".") or not (record / SOURCE).is_file():
                continue
            name = json.loads((record / SOURCE).read_text()).get("study", record.name)
            if what != "superseded record" and name in in_inbox:
                continue
            age = (now - finished_at(record)) / DAY_S
            if age >= settings.outbox_days:
                removed.append(_remove(record, Removal(what, pseudonym(name), age, "outbox_days"), dry_run))
    return removed


def clean_summary(outbox: Path, settings: RetentionSettings, now: float | None = None,
                  dry_run: bool = False) -> list[Removal]:
    """Remove the rows of OUTBOX/summary.csv finished ``outbox_days`` ago or earlier (module docstring)."""
    now = time.time() if now is None else now
    path = outbox / SUMMARY
    removed: list[Removal] = []
    if not path.is_file():
        return removed
    with open_summary(outbox) as f:
        f.seek(0)
        header, *rows = list(csv.reader(f)) or [[]]
        kept = []
        for row in rows:
            age = _row_age(row, now)
            if age is not None and age >= settings.outbox_days:
                removed.append(_log(Removal("summary row", pseudonym(row[1]), age, "outbox_days"), dry_run))
            else:
                kept.append(row)
        if removed and not dry_run:
            tmp = path.with_name(f".{SUMMARY}.{os.getpid()}")
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", newline="") as f:
                csv.writer(f).writerows([header, *kept])
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
            fsync_path(outbox)
    return removed


def _row_age(row: list[str], now: float) -> float | None:
    """Days since a summary row's ``finished`` time, or None when the row has none that can be read."""
    try:
        return (now - datetime.fromisoformat(row[0]).timestamp()) / DAY_S if len(row) > 1 else None
    except ValueError:
        return None


def clean_results(results_dir: Path, settings: RetentionSettings, now: float | None = None,
                  dry_run: bool = False) -> list[Removal]:
    """Remove the server's finished studies (``results_dir/<id>/`` whose status.json says done or failed)
    older than ``results_days``."""
    now = time.time() if now is None else now
    removed = []
    for folder in sorted(results_dir.iterdir()) if results_dir.is_dir() else []:
        try:
            state = json.loads((folder / "status.json").read_text())
        except (OSError, ValueError):
            continue
        if state.get("status") not in ("done", "failed"):
            continue
        age = (now - finished_at(folder)) / DAY_S
        if age >= settings.results_days:
            removed.append(_remove(folder, Removal("server study", pseudonym(folder.name), age, "results_days"),
                                   dry_run))
    return removed


def pending_sends(send_dir: Path) -> set[str]:
    """The study names with a result still waiting in a DICOM outbox (``edge.dicomnet.outbox`` under ``send_dir``)."""
    names = set()
    for job in (send_dir / "pending").glob("*/job.json"):
        try:
            names.add(json.loads(job.read_text())["study"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return names


class Schedule:
    """True at the first call of :meth:`due`, then at most every ``interval_s`` (for one caller of any thread)."""

    def __init__(self, interval_s: float = INTERVAL_S):
        self.interval_s = interval_s
        self._last = float("-inf")
        self._lock = threading.Lock()

    def due(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.interval_s:
                return False
            self._last = now
            return True


class WatchRetention:
    """Retention of one watcher's inbox and outbox, as a watcher's ``after_pass`` hook: applied after the
    first pass, then every ``interval_s``; ``unsent`` gives the study names still waiting for a DICOM send."""

    def __init__(self, settings: RetentionSettings, inbox: Path, outbox: Path, marker: str = "",
                 unsent: Callable[[], Iterable[str]] = tuple, interval_s: float = INTERVAL_S):
        self.settings, self.inbox, self.outbox, self.marker, self.unsent = settings, inbox, outbox, marker, unsent
        self.schedule = Schedule(interval_s)

    def run(self, now: float | None = None, dry_run: bool = False) -> list[Removal]:
        return [*clean_inbox(self.inbox, self.outbox, self.settings, self.marker, self.unsent(), now, dry_run),
                *clean_outbox(self.outbox, self.inbox, self.settings, now, dry_run),
                *clean_summary(self.outbox, self.settings, now, dry_run)]

    def after_pass(self) -> None:
        """Apply retention when due; never raises (a watcher must outlive a failed clean-up)."""
        if not self.schedule.due():
            return
        try:
            self.run()
        except Exception:  # noqa: BLE001 - logged; tried again at the next interval
            log.exception("retention of %s failed; trying again in %.0f s", self.inbox, self.schedule.interval_s)
