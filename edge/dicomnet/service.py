"""The DICOM side of ``ctedge watch``, ``ctedge serve`` and ``ctedge receive``, wired from a profile.

The receiver writes studies into the inbox; the watcher analyses them as any other study. As soon as a
study's verdict is known, before its heatmaps are made, :meth:`DicomService.send_verdict` queues its SR
for each destination; after each watcher pass :meth:`DicomService.queue_results` turns every committed
result not queued yet into its Secondary Capture images (and its SR too, when that was not sent
ahead), one outbox job per destination and part; the sender thread delivers them at once.
Job ids hash the study name, its fingerprint, the destination and the part, so a kill between a
commit and the queueing costs nothing: the next pass queues it, and never twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from edge.dicomnet.outbox import Outbox, write_json
from edge.dicomnet.receiver import Receiver
from edge.dicomnet.results import heatmap_objects, report_object, supersede
from edge.engine import Device, Engine
from edge.errors import UserError
from edge.ingest.parallel import PREFETCH
from edge.pipeline import decode_size
from edge.profile import DicomPeer, DicomSettings, Profile, RetentionSettings, WatcherSettings
from edge.result import ResultDoc, load_result
from edge.retention import WatchRetention, pending_sends
from edge.storage import private_dir
from edge.watch import Entry, watch

log = logging.getLogger("ctedge.dicom")
SEND_DIR = ".dicom-send"
REPORTS = "reports"   # under SEND_DIR: the latest report sent for each StudyInstanceUID
REPORT = "report"     # the part of a job id for an SR sent ahead of its heatmaps


class DicomService:
    """A profile's receiver (into ``inbox``, accepting the images of ``modalities``: those the device
    has a model for, ``profile.model.modalities``) and outbox (under ``results/.dicom-send``)."""

    def __init__(self, settings: DicomSettings, inbox: Path, results: Path, modalities: Iterable[str],
                 retry_base_s: float = 5.0, retry_max_s: float = 600.0):
        self.settings = settings
        self.inbox, self.results = Path(inbox), Path(results)
        self.receiver = Receiver(settings, self.inbox, modalities)
        private_dir(self.results)
        self.outbox = Outbox(self.results / SEND_DIR, settings.ae_title, retry_base_s, retry_max_s)
        self._stop = threading.Event()
        self._sender: threading.Thread | None = None
        self._threads: list[threading.Thread] = []

    def start(self, receive: bool = True, send: bool = True, decode_for: Engine | Device | None = None) -> None:
        """Start the receiver and the sender thread (without ``send``, :meth:`after_pass` delivers). With
        ``decode_for`` (the engine that will analyse the inbox), each CT slice is decoded as it is stored,
        as that engine reads it (:meth:`decode_ahead`)."""
        if receive:
            if decode_for is not None:
                self.decode_ahead(decode_for)
            self.receiver.start()
        if send and self.settings.destinations:
            self._sender = threading.Thread(target=self.outbox.run, args=(self._stop,), name="ctedge-dicom-send",
                                            daemon=True)
            self._sender.start()
            self._threads.append(self._sender)

    def decode_ahead(self, engine: Engine | Device) -> None:
        """Hand each single-frame CT slice to ``edge.ingest.parallel.PREFETCH`` as it is stored, to be
        decoded and resized as ``engine``'s CT model reads it: when the study is complete, its analysis
        finds most slices decoded (the series rules, the checks and the study's completeness are unchanged:
        a slice decoded ahead is used only if its study is read and the file is unchanged)."""
        ct = engine.routes.get("ct")
        size = decode_size(ct.options) if ct is not None else None
        if size is None:
            return

        def hand_over(path: Path, ds: Dataset) -> None:
            if ds.SOPClassUID == CTImageStorage and int(ds.get("NumberOfFrames") or 1) == 1:
                PREFETCH.submit(path, (int(ds.Rows), int(ds.Columns)), size)

        self.receiver.on_stored = hand_over

    def stop(self, timeout: float = 60.0) -> None:
        """Stop receiving, then let the sender and the watcher end, waiting up to ``timeout`` s for each
        (both are crash-safe: what they leave unfinished is taken again at the next start)."""
        self.receiver.stop()
        PREFETCH.clear()
        self._stop.set()
        self.outbox.wake()
        for thread in self._threads:
            thread.join(timeout=timeout)

    @classmethod
    def for_server(cls, profile: Profile) -> DicomService:
        """The service of ``ctedge serve``: receive into ``dicom.inbox``, results in ``results_dir/dicom``;
        :meth:`serve` starts it."""
        if profile.dicom is None or profile.dicom.inbox is None:
            raise UserError(profile.source, "dicom.inbox is not set: where should received studies be written?")
        return cls(profile.dicom, profile.dicom.inbox, profile.server.results_dir / "dicom", profile.model.modalities)

    def serve(self, engine: Engine | Device, settings: WatcherSettings, retention: RetentionSettings) -> None:
        """Receive, analyse the inbox with ``engine`` as ``ctedge watch`` does (with its ``retention``), and
        send to the destinations, all in background threads until :meth:`stop`."""
        self.start(decode_for=engine)
        keep = WatchRetention(retention, self.inbox, self.results, settings.marker_file, unsent=self.unsent)
        self._threads.append(threading.Thread(target=self._watch, args=(engine, settings, keep),
                                              name="ctedge-dicom-watch", daemon=True))
        self._threads[-1].start()

    def _watch(self, engine: Engine | Device, settings: WatcherSettings, retention: WatchRetention) -> None:
        """The watcher of ``ctedge watch`` on this service's inbox, with its retention, until :meth:`stop`."""

        def after_pass() -> None:
            self.after_pass()
            retention.after_pass()

        try:
            watch(engine, self.inbox, self.results, settings, after_pass=after_pass, stop=self._stop,
                  receiving=self.receiver.receiving, on_verdict=self.send_verdict)
        except UserError as exc:
            log.error("the DICOM study watcher cannot run: %s", exc)

    def after_pass(self) -> None:
        """The watcher hook: queue new results; deliver them here when no sender thread runs. Never raises:
        a full disk or a bug here must not stop the analysis of studies."""
        try:
            self.queue_results()
            if self._sender is None:
                self.outbox.deliver_due()
        except Exception:  # noqa: BLE001 - logged; the next pass tries again
            log.exception("queueing or sending results to PACS failed; trying again after the next pass")

    def unsent(self) -> set[str]:
        """The study names whose results still wait for a destination (retention keeps their inbox entry)."""
        return pending_sends(self.outbox.root)

    def queue_results(self) -> int:
        """Queue the results of every analysed study not queued yet for each destination; return how many jobs."""
        queued = 0
        for record in sorted(self.results.glob("*/source.json")):
            if record.parent.name.startswith("."):
                continue
            try:
                source = json.loads(record.read_text())
            except (OSError, ValueError):
                continue
            if source.get("status") == "done":
                queued += self._queue(source, record.parent)
        return queued

    def send_verdict(self, entry: Entry, doc: ResultDoc) -> None:
        """The watcher's ``on_verdict``: queue the study's SR for every destination as soon as its verdict
        is known, before its heatmaps are made (they follow once the result is committed); the sender
        thread delivers it at once (without one, :meth:`after_pass` does). Never raises: when the SR cannot be made
        now, :meth:`queue_results` sends it with the heatmaps (or says why nothing can be sent)."""
        source = {"study": entry.name, "inbox_entry": entry.path.name, "fingerprint": entry.fingerprint,
                  "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        todo = {self.job_id(source, d, REPORT): d for d in self.settings.destinations}
        todo = {k: d for k, d in todo.items() if not self.outbox.has(k)}
        if not todo:
            return
        try:
            sr = report_object(doc, self.inbox / entry.path.name, self.settings.ae_title)
            self._supersede_earlier(sr, source)
            for job_id, dest in todo.items():
                self.outbox.enqueue(job_id, entry.name, dest, [sr])
        except UserError as exc:
            log.debug("%s: no report sent ahead of the heatmaps: %s", entry.name, exc)
        except Exception:  # noqa: BLE001 - the analysis goes on; queue_results tries again with the heatmaps
            log.exception("%s: queueing the report ahead of the heatmaps failed; it is sent with them", entry.name)

    def _queue(self, source: dict, result_dir: Path) -> int:
        todo = {self.job_id(source, d): d for d in self.settings.destinations}
        todo = {k: d for k, d in todo.items() if not self.outbox.has(k)}
        if not todo:
            return 0
        ahead = {k for k, d in todo.items() if self.outbox.has(self.job_id(source, d, REPORT))}
        study_dir = self.inbox / source["inbox_entry"]
        try:
            heatmaps: list[Dataset] = list(heatmap_objects(result_dir, study_dir))
            report = [] if ahead == set(todo) else [report_object(load_result(result_dir), study_dir, self.settings.ae_title)]
        except Exception as exc:  # noqa: BLE001 - one study must never stop the watcher
            reason = str(exc) if isinstance(exc, UserError) else f"internal error: {type(exc).__name__}: {exc}"
            log.warning("%s: nothing sent to PACS: %s", source["study"], reason)
            for job_id, dest in todo.items():
                self.outbox.skip(job_id, source["study"], dest, reason)
            return 0
        if report:
            self._supersede_earlier(report[0], source)
        for job_id, dest in todo.items():
            objects = heatmaps if job_id in ahead else report + heatmaps
            if objects:
                self.outbox.enqueue(job_id, source["study"], dest, objects)
            else:
                self.outbox.skip(job_id, source["study"], dest, "no heatmap supports the verdict; its report was sent alone")
        return len(todo)

    def _supersede_earlier(self, sr: Dataset, source: dict) -> None:
        """Link ``sr`` to the report sent for an earlier analysis of the same StudyInstanceUID (another
        fingerprint: more images arrived after it), and record it as the study's latest report."""
        record = self.outbox.root / REPORTS / f"{sr.StudyInstanceUID}.json"
        try:
            earlier = json.loads(record.read_text())
        except (OSError, ValueError):
            earlier = None
        if earlier and earlier["fingerprint"] != source["fingerprint"]:
            supersede(sr, earlier)
            log.warning("%s: analysed again after more images arrived; its new report supersedes the one sent "
                        "earlier", source["study"])
        elif earlier:
            return  # the same analysis queued for another destination
        private_dir(record.parent)
        write_json(record, {
            "fingerprint": source["fingerprint"], "study_uid": sr.StudyInstanceUID, "series_uid": sr.SeriesInstanceUID,
            "sop_uid": sr.SOPInstanceUID, "sop_class": sr.SOPClassUID, "instance_number": int(sr.InstanceNumber),
            "finished": source.get("finished", "")})

    @staticmethod
    def job_id(source: dict, dest: DicomPeer, part: str = "") -> str:
        """The outbox job of a study analysis's objects for ``dest``: the heatmaps (and the SR when it
        was not sent ahead), or the SR alone (``part`` REPORT)."""
        key = f"{source['study']}\0{source['fingerprint']}\0{dest.ae_title}\0{dest.host}\0{dest.port}"
        key += f"\0{part}" if part else ""
        return hashlib.sha256(key.encode()).hexdigest()[:32]
