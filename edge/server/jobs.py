"""Studies on disk and the bounded worker queue that analyses them.

Each study lives in ``results_dir/<id>/``: ``status.json`` (state, times, file count, error),
``upload/`` (the files as received, a zip already unpacked) and the engine's outputs
(``result.json``, ``heatmaps/<n>.png``, ``report.html``). Because the upload and its state are
on disk before the study is queued, a restart re-queues whatever was queued or running; a folder
without ``status.json`` is an upload cut off by a stop and is removed at start-up.

Everything is owner-only (0700/0600). The raw upload is deleted ``keep_uploads_days`` after the
study finished (0: at once). A state that cannot be written (full disk) is kept in memory, served
from there, and written once space returns; a worker survives any exception.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from edge.errors import UserError
from edge.infer import ModelInfo
from edge.profile import RetentionSettings
from edge.result import ResultDoc, load_result
from edge.retention import Schedule, clean_results
from edge.storage import is_disk_full, private_dir, restrict_tree

log = logging.getLogger("ctedge.server")
STATES = ("queued", "running", "done", "failed")
STAGES = ("queued", "reading", "analysing", "explaining")
"""The stages a study's status page shows (``stage`` in status.json while running)."""
REVIEW_MARKS = ("reviewed", "disagree")
"""A reader's mark on a result: read and agreed with, or read and disagreed with."""
ETA_HISTORY = 20   # the stage times of this many finished studies make the ETA
STUDY_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{8}$")
MAX_ATTEMPTS = 2   # a study that was running when the server stopped this often is not tried again
HOUSEKEEPING_S = 60.0  # how often an idle worker writes kept-back states and deletes expired uploads
DISK_FULL_MESSAGE = ("the server's disk is full: the result could not be written; "
                     "upload the study again once space has been freed")


class Analyser(Protocol):
    """What the server needs from :class:`edge.engine.Device` (the queue: ``analyse``; the pages: the
    model of each modality the device reads)."""

    @property
    def info(self) -> ModelInfo: ...

    @property
    def routes(self) -> Mapping[str, Analyser]: ...

    def analyse(self, source: Path, out_dir: Path, progress: Callable[[str], None] | None = None) -> ResultDoc: ...


class QueueFull(Exception):
    """More studies are waiting than ``server.queue_size`` allows."""


def new_study_id() -> str:
    """A sortable, unguessable id: UTC time and 32 random bits, e.g. ``20250101-120000-0a1b2c3d``."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class StudyStore:
    """The results folder: one sub-folder per study, its state in ``status.json``."""

    def __init__(self, root: Path):
        self.root = root
        self._unsaved: dict[str, dict[str, Any]] = {}   # states a full disk kept from status.json
        self._lock = threading.Lock()
        self._review_lock = threading.Lock()
        try:
            private_dir(root)
        except OSError as exc:
            raise UserError(root, f"server.results_dir cannot be created ({exc.strerror})") from None

    def folder(self, study_id: str) -> Path:
        if not STUDY_ID.match(study_id):
            raise KeyError(study_id)
        return self.root / study_id

    def upload_dir(self, study_id: str) -> Path:
        return self.folder(study_id) / "upload"

    def create(self) -> str:
        """Make the folder of a new study (state ``receiving`` until :meth:`mark_queued`)."""
        study_id = new_study_id()
        private_dir(self.folder(study_id))
        private_dir(self.upload_dir(study_id))
        return study_id

    def status(self, study_id: str) -> dict[str, Any] | None:
        """The study's state, or None if there is no such study (or it was never queued)."""
        with self._lock:
            if study_id in self._unsaved:
                return dict(self._unsaved[study_id])
        try:
            path = self.folder(study_id) / "status.json"
            return json.loads(path.read_text())
        except (KeyError, OSError, ValueError):
            return None

    def write_status(self, study_id: str, **changes: Any) -> dict[str, Any]:
        """Update ``status.json`` atomically (write a temporary file, then rename); on a full disk keep
        the state in memory until :meth:`flush` can write it."""
        state = (self.status(study_id) or {"id": study_id, "created": _now(), "n_files": 0, "error": None,
                                            "label": None}) | changes | {"updated": _now()}
        with self._lock:
            self._unsaved[study_id] = state
        self._save(study_id)
        return state

    def flush(self) -> None:
        """Write the states a full disk kept in memory."""
        with self._lock:
            pending = list(self._unsaved)
        for study_id in pending:
            self._save(study_id)

    def _save(self, study_id: str) -> None:
        folder = self.folder(study_id)
        tmp = folder / f".status-{threading.get_ident()}.json"
        with self._lock:
            state = self._unsaved.get(study_id)
            if state is None:
                return
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(state, indent=1))
                os.replace(tmp, folder / "status.json")
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                log.warning("study %s: state kept in memory, status.json cannot be written (%s)",
                            study_id, exc.strerror)
            else:
                del self._unsaved[study_id]

    def remove_interrupted(self) -> int:
        """Delete study folders without ``status.json``: uploads cut off by a stop. Start-up only."""
        removed = 0
        for folder in self.root.iterdir():
            if folder.is_dir() and STUDY_ID.match(folder.name) and not (folder / "status.json").exists():
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        if removed:
            log.warning("removed %d upload(s) interrupted by a stop of the server", removed)
        return removed

    def purge_uploads(self, keep_days: float, now: datetime | None = None) -> int:
        """Delete the raw uploads of studies that finished more than ``keep_days`` ago; return how many."""
        now = now or datetime.now(timezone.utc)
        purged = 0
        for state in self.all():
            upload = self.upload_dir(state["id"])
            if state["status"] not in ("done", "failed") or not upload.exists():
                continue
            finished = datetime.fromisoformat(state.get("finished") or state["updated"])
            if (now - finished).total_seconds() >= keep_days * 86400:
                shutil.rmtree(upload, ignore_errors=True)
                purged += 1
        return purged

    def review(self, study_id: str, user: str, mark: str) -> dict[str, Any]:
        """Record ``user``'s mark on a finished study (one of ``REVIEW_MARKS``; a later mark by the same
        user replaces theirs) with the time; return the study's state."""
        if mark not in REVIEW_MARKS:
            raise ValueError(f"a review mark is one of {', '.join(REVIEW_MARKS)}, got {mark!r}")
        with self._review_lock:
            reviews = dict((self.status(study_id) or {}).get("reviews") or {})
            reviews[user] = {"mark": mark, "at": _now()}
            return self.write_status(study_id, reviews=reviews)

    def result(self, study_id: str) -> ResultDoc | None:
        """The engine's result document of a finished study."""
        try:
            return load_result(self.folder(study_id))
        except (KeyError, OSError, ValueError):
            return None

    def all(self) -> Iterator[dict[str, Any]]:
        """Every study's state, newest first."""
        for folder in sorted(self.root.iterdir(), reverse=True):
            if folder.is_dir() and STUDY_ID.match(folder.name) and (state := self.status(folder.name)):
                yield state


class JobQueue:
    """``workers`` threads share one engine; at most ``queue_size`` studies wait."""

    def __init__(self, store: StudyStore, engine: Analyser, workers: int, queue_size: int,
                 keep_uploads_days: float = 0, retention: RetentionSettings | None = None):
        self.store, self.engine = store, engine
        self.workers, self.queue_size = workers, queue_size
        self.keep_uploads_days = keep_uploads_days
        self.retention = retention or RetentionSettings()
        self._retention_due = Schedule()
        self._pending: collections.deque[str] = collections.deque()
        self._running: set[str] = set()
        self._cond = threading.Condition()
        self._stopped = False
        self._threads: list[threading.Thread] = []
        self._stage_s: collections.deque[dict[str, float]] = collections.deque(maxlen=ETA_HISTORY)

    def start(self) -> None:
        """Remove interrupted uploads, re-queue studies left queued or running by a previous process,
        delete expired uploads, then start the workers."""
        self.store.remove_interrupted()
        for state in reversed(list(self.store.all())):
            if state["status"] == "running" and state.get("attempts", 0) >= MAX_ATTEMPTS:
                self.store.write_status(state["id"], status="failed",
                                        error=f"the server stopped {MAX_ATTEMPTS} times while analysing this study; "
                                              "it is not tried again")
            elif state["status"] in ("queued", "running"):
                self.store.write_status(state["id"], status="queued")
                self._pending.append(state["id"])
                log.info("study %s re-queued after restart", state["id"])
        self._housekeeping()
        done = [state["stage_s"] for state in self.store.all() if state["status"] == "done" and state.get("stage_s")]
        self._stage_s.extend(reversed(done[:ETA_HISTORY]))
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"ctedge-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        """Let the workers finish their current study and exit, waiting up to ``timeout`` s in all; a
        study still running then is re-queued for the next start (the stop is not counted as an attempt)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            running = sorted(self._running)
        for study_id in running:
            self._requeue(study_id)

    def _requeue(self, study_id: str) -> None:
        """Put a study the stop interrupted back in the queue of the next start, its attempt not counted."""
        with self._cond:
            if study_id not in self._running:
                return
            self._running.discard(study_id)
        attempts = (self.store.status(study_id) or {}).get("attempts", 1)
        self.store.write_status(study_id, status="queued", attempts=max(0, attempts - 1))
        log.warning("study %s re-queued: the server stopped while analysing it", study_id)

    def submit(self, study_id: str, n_files: int, study: dict[str, str] | None = None) -> None:
        """Queue a study whose upload is on disk (``study``: its identity, edge.ingest.identity, when
        already known); raise QueueFull when ``queue_size`` are waiting."""
        with self._cond:
            if len(self._pending) >= self.queue_size:
                raise QueueFull(study_id)
            self.store.flush()
            self.store.write_status(study_id, status="queued", n_files=n_files, **({"study": study} if study else {}))
            self._pending.append(study_id)
            self._cond.notify()
        log.info("study %s queued (%d files)", study_id, n_files)

    def position(self, study_id: str) -> int | None:
        """How many studies wait ahead of this one (None when it is not waiting)."""
        with self._cond:
            return self._pending.index(study_id) if study_id in self._pending else None

    def eta(self, state: Mapping[str, Any], now: datetime | None = None) -> dict[str, Any] | None:
        """Seconds until a queued or running study is likely done, from the mean stage times of the
        last ``ETA_HISTORY`` studies finished (``{"seconds", "from"}``); None before the first."""
        with self._cond:
            history = list(self._stage_s)
            ahead = self._pending.index(state["id"]) if state["id"] in self._pending else 0
        if not history or state["status"] not in ("queued", "running"):
            return None
        mean = {stage: sum(h.get(stage, 0.0) for h in history) / len(history) for stage in STAGES[1:]}
        total = sum(mean.values())
        if state["status"] == "queued":
            seconds = total * (1 + ahead / max(self.workers, 1))
        else:
            stage = state.get("stage", "reading")
            later = STAGES[STAGES.index(stage) + 1:] if stage in STAGES else ()
            started = datetime.fromisoformat(state.get("stage_started") or state.get("started") or _now())
            elapsed = ((now or datetime.now(timezone.utc)) - started).total_seconds()
            seconds = max(mean.get(stage, 0.0) - elapsed, 0.0) + sum(mean[s] for s in later)
        return {"seconds": round(seconds, 1), "from": len(history)}

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"waiting": len(self._pending), "running": len(self._running), "queue_size": self.queue_size,
                    "workers": sum(t.is_alive() for t in self._threads)}

    def _work(self) -> None:
        while True:
            with self._cond:
                if not self._pending and not self._stopped:
                    self._cond.wait(HOUSEKEEPING_S)
                if self._stopped:
                    return
                study_id = self._pending.popleft() if self._pending else None
                if study_id:
                    self._running.add(study_id)
            try:
                if study_id:
                    self._analyse(study_id)
                self._housekeeping()
            except Exception as exc:  # noqa: BLE001 - the worker must outlive anything a study or disk does
                log.error("worker: %s while handling study %s", type(exc).__name__, study_id)
            finally:
                with self._cond:
                    self._running.discard(study_id)

    def _housekeeping(self) -> None:
        """Write states kept in memory by a full disk; delete uploads past ``keep_uploads_days``; when
        due, finished studies past ``retention.results_days``."""
        self.store.flush()
        self.store.purge_uploads(self.keep_uploads_days)
        if self._retention_due.due():
            clean_results(self.store.root, self.retention)

    def _analyse(self, study_id: str) -> None:
        upload = self.store.upload_dir(study_id)
        attempts = (self.store.status(study_id) or {}).get("attempts", 0) + 1
        self.store.write_status(study_id, status="running", started=_now(), attempts=attempts, stage="reading",
                                stage_started=_now())
        start = time.perf_counter()
        marks: dict[str, float] = {"reading": start}

        def progress(stage: str) -> None:
            if stage not in marks:
                marks[stage] = time.perf_counter()
                self.store.write_status(study_id, stage=stage, stage_started=_now())

        try:
            result = self.engine.analyse(upload, self.store.folder(study_id), progress=progress)
        except Exception as exc:  # noqa: BLE001 - a worker must survive any study
            if self._stopped and not isinstance(exc, UserError):  # the stop cut it short (the decoding workers ended)
                self._requeue(study_id)
            else:
                self._fail(study_id, upload, exc)
        else:
            model = result.get("model", {})
            ends = [*list(marks.values())[1:], time.perf_counter()]
            stage_s = {stage: round(end - begun, 3) for (stage, begun), end in zip(marks.items(), ends)}
            with self._cond:
                self._stage_s.append(stage_s)
            self._finish(study_id, status="done", label=result.get("label"), banner=model.get("banner", ""), stage_s=stage_s,
                         study=result.get("study"), concern=result.get("concern"),
                         agreement=(result.get("agreement") or {"level": None})["level"],
                         demonstration=bool(model.get("demonstration") or model.get("placeholder") or model.get("research")))
            log.info("study %s done in %.1f s", study_id, time.perf_counter() - start)

    def _fail(self, study_id: str, upload: Path, exc: Exception) -> None:
        if isinstance(exc, UserError):
            self._finish(study_id, status="failed", error=strip_folder(str(exc), upload))
            log.info("study %s failed: %s", study_id, type(exc).__name__)
            return
        if is_disk_full(exc):
            error = DISK_FULL_MESSAGE
        else:
            error = f"internal error while analysing the study ({type(exc).__name__}); see the server log"
        self._finish(study_id, status="failed", error=error)
        log.error("study %s failed: %s", study_id, "disk full" if is_disk_full(exc) else type(exc).__name__)

    def _finish(self, study_id: str, **state: Any) -> None:
        """Make the study's files owner-only and, unless uploads are kept (``keep_uploads_days``), delete
        its raw upload; then record the outcome, so that whoever sees it finished sees its final files."""
        restrict_tree(self.store.folder(study_id))
        if self.keep_uploads_days <= 0:
            shutil.rmtree(self.store.upload_dir(study_id), ignore_errors=True)
        self.store.write_status(study_id, finished=_now(), **state)


def strip_folder(message: str, folder: Path) -> str:
    """Name uploaded files relative to the upload folder, not by their path on the server."""
    return message.replace(f"{folder}{os.sep}", "").replace(str(folder), "the upload")
