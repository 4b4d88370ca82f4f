"""Studies on disk and the bounded worker queue that analyses them.

Each study lives in ``results_dir/<id>/``: ``status.json`` (state, times, file count, error),
``upload/`` (the files as received, a zip already unpacked) and the engine's outputs
(``result.json``, ``heatmaps/<n>.png``, ``report.html``). Because the upload and its state are
on disk before the study is queued, a restart re-queues whatever was queued or running.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from edge.errors import UserError
from edge.infer import ModelInfo

log = logging.getLogger("ctedge.server")
STATES = ("queued", "running", "done", "failed")
STUDY_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{8}$")
MAX_ATTEMPTS = 2   # a study that was running when the server stopped this often is not tried again


class Analyser(Protocol):
    """What the queue needs from :class:`edge.engine.Engine`."""

    info: ModelInfo

    def analyse(self, source: Path, out_dir: Path) -> dict: ...


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
        try:
            root.mkdir(parents=True, exist_ok=True)
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
        self.upload_dir(study_id).mkdir(parents=True)
        return study_id

    def status(self, study_id: str) -> dict[str, Any] | None:
        """The study's state, or None if there is no such study (or it was never queued)."""
        try:
            path = self.folder(study_id) / "status.json"
            return json.loads(path.read_text())
        except (KeyError, OSError, ValueError):
            return None

    def write_status(self, study_id: str, **changes: Any) -> dict[str, Any]:
        """Update ``status.json`` atomically (write a temporary file, then rename)."""
        state = (self.status(study_id) or {"id": study_id, "created": _now(), "n_files": 0, "error": None,
                                            "label": None}) | changes | {"updated": _now()}
        folder = self.folder(study_id)
        tmp = folder / f".status-{threading.get_ident()}.json"
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, folder / "status.json")
        return state

    def result(self, study_id: str) -> dict | None:
        """The engine's result document of a finished study."""
        try:
            return json.loads((self.folder(study_id) / "result.json").read_text())
        except (KeyError, OSError, ValueError):
            return None

    def all(self) -> Iterator[dict[str, Any]]:
        """Every study's state, newest first."""
        for folder in sorted(self.root.iterdir(), reverse=True):
            if folder.is_dir() and STUDY_ID.match(folder.name) and (state := self.status(folder.name)):
                yield state


class JobQueue:
    """``workers`` threads share one engine; at most ``queue_size`` studies wait."""

    def __init__(self, store: StudyStore, engine: Analyser, workers: int, queue_size: int):
        self.store, self.engine = store, engine
        self.workers, self.queue_size = workers, queue_size
        self._pending: collections.deque[str] = collections.deque()
        self._running: set[str] = set()
        self._cond = threading.Condition()
        self._stopped = False
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Re-queue studies left queued or running by a previous process, then start the workers."""
        for state in reversed(list(self.store.all())):
            if state["status"] == "running" and state.get("attempts", 0) >= MAX_ATTEMPTS:
                self.store.write_status(state["id"], status="failed",
                                        error=f"the server stopped {MAX_ATTEMPTS} times while analysing this study; "
                                              "it is not tried again")
            elif state["status"] in ("queued", "running"):
                self.store.write_status(state["id"], status="queued")
                self._pending.append(state["id"])
                log.info("study %s re-queued after restart", state["id"])
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"ctedge-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        """Let the workers finish their current study and exit."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)

    def submit(self, study_id: str, n_files: int) -> None:
        """Queue a study whose upload is on disk; raise QueueFull when ``queue_size`` are waiting."""
        with self._cond:
            if len(self._pending) >= self.queue_size:
                raise QueueFull(study_id)
            self.store.write_status(study_id, status="queued", n_files=n_files)
            self._pending.append(study_id)
            self._cond.notify()
        log.info("study %s queued (%d files)", study_id, n_files)

    def position(self, study_id: str) -> int | None:
        """How many studies wait ahead of this one (None when it is not waiting)."""
        with self._cond:
            return self._pending.index(study_id) if study_id in self._pending else None

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"waiting": len(self._pending), "running": len(self._running), "queue_size": self.queue_size,
                    "workers": sum(t.is_alive() for t in self._threads)}

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                study_id = self._pending.popleft()
                self._running.add(study_id)
            try:
                self._analyse(study_id)
            finally:
                with self._cond:
                    self._running.discard(study_id)

    def _analyse(self, study_id: str) -> None:
        upload = self.store.upload_dir(study_id)
        attempts = (self.store.status(study_id) or {}).get("attempts", 0) + 1
        self.store.write_status(study_id, status="running", started=_now(), attempts=attempts)
        start = time.perf_counter()
        try:
            result = self.engine.analyse(upload, self.store.folder(study_id))
        except UserError as exc:
            self.store.write_status(study_id, status="failed", error=strip_folder(str(exc), upload))
            log.info("study %s failed: %s", study_id, type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - a worker must survive any study
            self.store.write_status(study_id, status="failed",
                                    error=f"internal error while analysing the study ({type(exc).__name__}); "
                                          "see the server log")
            log.error("study %s: internal error %s", study_id, type(exc).__name__)
        else:
            model = result.get("model", {})
            self.store.write_status(study_id, status="done", label=result.get("label"),
                                    demonstration=bool(model.get("demonstration") or model.get("placeholder")))
            log.info("study %s done in %.1f s", study_id, time.perf_counter() - start)


def strip_folder(message: str, folder: Path) -> str:
    """Name uploaded files relative to the upload folder, not by their path on the server."""
    return message.replace(f"{folder}{os.sep}", "").replace(str(folder), "the upload")
