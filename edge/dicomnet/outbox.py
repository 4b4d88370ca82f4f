"""Store-and-forward of result objects to DICOM destinations: a persistent queue with retries.

A *job* is the objects of one study for one destination, in ``ROOT/pending/<job id>/`` (the
``.dcm`` files and ``job.json``). It is built in ``ROOT/.tmp/`` and renamed into ``pending/``, so a
kill never leaves half a job. Each instance the peer acknowledges is recorded in ``job.json``
(rewritten atomically); when all are acknowledged, the job moves to ``ROOT/sent/`` and its files are
deleted. A failed attempt (peer down, association refused, a failure status) is retried with
exponential back-off, forever: nothing is dropped before the peer has acknowledged it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, DEFAULT_TRANSFER_SYNTAXES

from edge.profile import DicomPeer
from edge.storage import fsync_path, private_dir

log = logging.getLogger("ctedge.dicom")
JOB = "job.json"
SEND_TRANSFER_SYNTAXES: tuple[str, ...] = tuple(DEFAULT_TRANSFER_SYNTAXES)
"""Proposed for every SOP class sent: the uncompressed syntaxes (Implicit VR Little Endian first) and Deflated."""


@dataclass
class Job:
    id: str
    study: str                              # the study name (inbox entry); no patient data
    destination: DicomPeer
    files: list[str]                        # .dcm file names in the job folder, in sending order
    acknowledged: list[str] = field(default_factory=list)
    attempts: int = 0
    next_attempt: float = 0.0               # time.time() of the next try
    last_error: str = ""
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="microseconds"))

    @classmethod
    def load(cls, path: Path) -> Job:
        raw = json.loads(path.read_text())
        return cls(**{**raw, "destination": DicomPeer(**raw["destination"])})


class Outbox:
    """The queue under ``root``; ``calling_ae`` is the AE title ctedge sends as."""

    def __init__(self, root: Path, calling_ae: str, retry_base_s: float = 5.0, retry_max_s: float = 600.0,
                 timeout_s: float = 30.0):
        self.root = Path(root)
        self.calling_ae = calling_ae
        self.retry_base_s, self.retry_max_s, self.timeout_s = retry_base_s, retry_max_s, timeout_s
        for name in ("", "pending", "sent", "skipped", ".tmp"):  # the root too: mkdir makes parents 0755
            private_dir(self.root / name)
        for leftover in (self.root / ".tmp").iterdir():  # an enqueue interrupted by a kill
            shutil.rmtree(leftover)
        self._lock = threading.Lock()
        self._queued = threading.Event()   # wakes the sender thread as soon as a job is queued

    def has(self, job_id: str) -> bool:
        return any((self.root / state / job_id).is_dir() for state in ("pending", "sent", "skipped"))

    def skip(self, job_id: str, study: str, destination: DicomPeer, reason: str) -> None:
        """Record that a study has nothing to send (e.g. it was not DICOM), so it is not tried again."""
        folder = self.root / "skipped" / job_id
        folder.mkdir(mode=0o700, exist_ok=True)
        write_json(folder / JOB, asdict(Job(job_id, study, destination, [], last_error=reason)))

    def enqueue(self, job_id: str, study: str, destination: DicomPeer, objects: list[Dataset]) -> bool:
        """Queue ``objects`` for ``destination`` under ``job_id``; False when that job exists already."""
        if self.has(job_id):
            return False
        work = self.root / ".tmp" / job_id
        work.mkdir(mode=0o700)
        files = []
        for n, ds in enumerate(objects, start=1):
            name = f"{n:04d}.dcm"
            ds.save_as(work / name, enforce_file_format=True)
            os.chmod(work / name, 0o600)
            files.append(name)
        write_json(work / JOB, asdict(Job(job_id, study, destination, files)))
        for path in [*work.iterdir(), work]:
            fsync_path(path)
        os.rename(work, self.root / "pending" / job_id)
        fsync_path(self.root / "pending")
        log.info("%s: %d object(s) queued for %s", study, len(files), destination.ae_title)
        self._queued.set()
        return True

    def jobs(self, state: str = "pending") -> list[Job]:
        """The jobs in ``state``, oldest first (a study's report goes before its heatmaps)."""
        found = [Job.load(p / JOB) for p in (self.root / state).iterdir() if (p / JOB).is_file()]
        return sorted(found, key=lambda job: (job.created, job.id))

    def deliver_due(self, now: float | None = None) -> int:
        """Try every pending job whose back-off has expired; return how many were delivered."""
        delivered = 0
        with self._lock:
            for job in self.jobs():
                if job.next_attempt <= (time.time() if now is None else now) and self._attempt(job):
                    delivered += 1
        return delivered

    def status(self) -> dict:
        """What ``/health`` and the history page show: pending, failing, sent and skipped jobs (no patient data)."""
        pending = self.jobs()
        failing = [j for j in pending if j.attempts]
        return {"pending": len(pending), "failing": len(failing), "sent": len(list((self.root / "sent").iterdir())),
                "skipped": len(list((self.root / "skipped").iterdir())),
                "failures": [{"study": j.study, "destination": j.destination.ae_title, "attempts": j.attempts,
                              "last_error": j.last_error,
                              "next_attempt": datetime.fromtimestamp(j.next_attempt, timezone.utc)
                              .isoformat(timespec="seconds")} for j in failing]}

    def run(self, stop: threading.Event, poll_s: float = 1.0) -> None:
        """Deliver due jobs until ``stop`` is set (the sender thread): at once when a job is queued,
        else every ``poll_s`` (retries whose back-off has expired); ``wake`` ends a wait early."""
        while not stop.is_set():
            self._queued.clear()
            try:
                self.deliver_due()
            except Exception:  # noqa: BLE001 - the sender thread must survive anything
                log.exception("DICOM sender: unexpected error; retrying")
            self._queued.wait(poll_s)

    def wake(self) -> None:
        """End the sender thread's wait now (to deliver, or to see that it must stop)."""
        self._queued.set()

    def _attempt(self, job: Job) -> bool:
        folder = self.root / "pending" / job.id
        try:
            self._send(job, folder)
        except (ConnectionError, OSError, RuntimeError, ValueError, InvalidDicomError) as exc:
            job.attempts += 1
            job.last_error = str(exc)[:300]
            job.next_attempt = time.time() + min(self.retry_base_s * 2 ** (job.attempts - 1), self.retry_max_s)
            write_json(folder / JOB, asdict(job))
            log.warning("%s: sending to %s failed (attempt %d, next in %.0f s): %s", job.study,
                        job.destination.ae_title, job.attempts, job.next_attempt - time.time(), job.last_error)
            return False
        for name in job.files:
            (folder / name).unlink()
        os.rename(folder, self.root / "sent" / job.id)
        log.info("%s: %d object(s) delivered to %s", job.study, len(job.files), job.destination.ae_title)
        return True

    def _send(self, job: Job, folder: Path) -> None:
        """C-STORE the unacknowledged files of ``job``, recording each acknowledgement; raise on failure."""
        todo = [name for name in job.files if name not in job.acknowledged]
        datasets = {name: pydicom.dcmread(folder / name) for name in todo}
        ae = AE(ae_title=self.calling_ae)
        ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        for uid in dict.fromkeys(ds.SOPClassUID for ds in datasets.values()):
            ae.add_requested_context(uid, list(SEND_TRANSFER_SYNTAXES))
        dest = job.destination
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        if not assoc.is_established:
            raise ConnectionError(f"no association with {dest.ae_title} at {dest.host}:{dest.port} "
                                  f"({'rejected' if assoc.is_rejected else 'refused or unreachable'})")
        try:
            for name, ds in datasets.items():
                status = assoc.send_c_store(ds)
                code = status.get("Status") if status else None
                if code is None:
                    raise ConnectionError(f"{dest.ae_title} did not answer the C-STORE of {name}")
                if code not in (0x0000, 0xB000, 0xB006, 0xB007):  # success, or warnings: stored
                    raise ValueError(f"{dest.ae_title} refused {name}: status 0x{code:04X} "
                                     f"{status.get('ErrorComment', '')}".rstrip())
                job.acknowledged.append(name)
                write_json(folder / JOB, asdict(job))
        finally:
            if assoc.is_established:
                assoc.release()


def write_json(path: Path, doc: dict) -> None:
    """Write ``doc`` to ``path`` durably, owner-only, by a rename."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)

