"""C-STORE SCP: every acknowledged image is on disk, fsynced, under ``INBOX/<StudyInstanceUID>/``.

The receiver accepts the images of the modalities the device has a model for (``STORAGE_CLASSES``:
CT Image Storage, Enhanced CT and Legacy Converted Enhanced CT Image Storage with a CT bundle, CR and
DX with an X-ray bundle); any other instance gets 0x0122 with a comment naming what the device reads.

An instance is written to ``INBOX/.receiving/`` (hidden: the watcher ignores it), fsynced and renamed
into ``INBOX/<StudyInstanceUID>/<SOPInstanceUID>.dcm`` before the success status is sent, exactly as
it was encoded by the sender (no re-encoding). A kill at any moment leaves at most a ``.part`` file in
``.receiving``, removed at the next start. Sending an identical instance again changes nothing on disk;
a different instance with the same SOP Instance UID replaces the earlier copy (a warning names the
study and instance UIDs, no patient data).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import (UID, AllTransferSyntaxes, ComputedRadiographyImageStorage, CTImageStorage,
                         DigitalXRayImageStorageForPresentation, DigitalXRayImageStorageForProcessing)
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from edge.card import MODALITY_TERMS, modality_names
from edge.dicomnet.guard import GuardedAE
from edge.errors import StudyError, UserError
from edge.ingest.dicom_files import read_bounded
from edge.ingest.dicom_scan import check_structure
from edge.ingest.enhanced import ENHANCED_CT_CLASSES
from edge.limits import MAX_INSTANCE_BYTES
from edge.profile import DicomPeer, DicomSettings
from edge.storage import fsync_path, private_dir
from edge.untrusted import printable

log = logging.getLogger("ctedge.dicom")
RECEIVING = ".receiving"
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

# DIMSE C-STORE statuses (PS3.4 B.2.3, PS3.7 C.4.2.1.4)
SUCCESS, OUT_OF_RESOURCES, SOP_CLASS_NOT_SUPPORTED, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0x0122, 0xC000
ANNOUNCED_WAIT_S = 600.0
"""How long a study that announced more instances (Number of Study Related Instances) than arrived is
waited for after its last instance, before it is analysed as it is."""

STORAGE_CLASSES: dict[str, tuple[UID, ...]] = {
    "ct": (CTImageStorage, *ENHANCED_CT_CLASSES),
    "xray": (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
             DigitalXRayImageStorageForProcessing),
}
"""The SOP classes of the images of each modality (``edge.card.MODALITIES``) that the ingest reads."""


def decodable_transfer_syntaxes() -> list[str]:
    """The transfer syntaxes the ingest decodes: uncompressed ones, and compressed ones with an installed decoder."""
    def decodable(uid: UID) -> bool:
        try:
            return get_decoder(uid).is_available
        except NotImplementedError:
            return False
    return [str(uid) for uid in AllTransferSyntaxes if not uid.is_compressed or decodable(uid)]


def is_uid(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID.match(value))


class StudyInbox:
    """Where received instances are committed (owner-only folders and files)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.receiving = self.root / RECEIVING

    def prepare(self) -> int:
        """Create the folders and remove the partial files of an interrupted run; return how many."""
        private_dir(self.root)
        leftovers = list(self.receiving.glob("*.part")) if self.receiving.is_dir() else []
        for path in leftovers:
            path.unlink()
        self.receiving.mkdir(exist_ok=True, mode=0o700)
        return len(leftovers)

    def commit(self, study_uid: str, sop_uid: str, data: bytes) -> Path:
        """Write ``data`` durably as the instance ``sop_uid`` of ``study_uid``; return its path."""
        target = self.root / study_uid / f"{sop_uid}.dcm"
        if target.is_file():
            if target.stat().st_size == len(data) and target.read_bytes() == data:
                return target  # the same instance again: leave the study untouched
            log.warning("instance %s of study %s received again with different content: it replaces the "
                        "earlier copy", sop_uid, study_uid)
        tmp = self.receiving / f"{sop_uid}-{uuid.uuid4().hex}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if not target.parent.is_dir():
                target.parent.mkdir(mode=0o700, exist_ok=True)  # two associations may bring the same study
                fsync_path(self.root)
            os.replace(tmp, target)
            fsync_path(target.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target


def check_instance(data: bytes, sop_uid: str | None = None) -> Dataset:
    """Parse a received file; raise ValueError naming the problem when it is truncated or unusable
    (or when its SOP Instance UID is not ``sop_uid``, the one announced in the C-STORE request)."""
    try:
        check_structure(BytesIO(data), Path("instance"))
        ds = read_bounded(BytesIO(data))
        ds.get("PixelData")  # read every element up to the end: a truncated one raises here
    except StudyError as exc:  # bounds: deflated size, element count, nesting
        raise ValueError(exc.problem) from exc
    except Exception as exc:  # noqa: BLE001 - any parse failure is the sender's problem, not ours
        raise ValueError(f"the dataset cannot be parsed ({type(exc).__name__}: {exc})") from exc
    for key in ("StudyInstanceUID", "SOPInstanceUID"):
        if not is_uid(ds.get(key)):
            raise ValueError(f"{key} is missing or not a valid UID")
    if sop_uid is not None and ds.SOPInstanceUID != sop_uid:
        raise ValueError("the SOPInstanceUID in the dataset differs from the one in the C-STORE request")
    if "PixelData" not in ds:
        raise ValueError("the dataset has no pixel data")
    if not ds.file_meta.TransferSyntaxUID.is_encapsulated:
        try:
            expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) \
                * (int(ds.BitsAllocated) // 8) * int(ds.get("NumberOfFrames", 1) or 1)
        except (AttributeError, TypeError, ValueError) as exc:
            raise ValueError("Rows, Columns or BitsAllocated is missing or invalid") from exc
        if len(ds.PixelData) < expected:
            raise ValueError(f"the pixel data is truncated ({len(ds.PixelData)} of {expected} bytes)")
    return ds


def is_allowed(caller: str, address: str, allowed: tuple[DicomPeer, ...]) -> bool:
    """An empty list allows every caller; otherwise the AE title (and the host, when given) must match."""
    return not allowed or any(caller == p.ae_title and (not p.host or address == p.host) for p in allowed)


class Receiver:
    """The C-STORE/C-ECHO SCP of a profile's ``dicom:`` section, serving in background threads; it
    accepts the images of ``modalities``, those the device has a model for (``ModelSettings.modalities``)."""

    def __init__(self, settings: DicomSettings, inbox: Path, modalities: Iterable[str]):
        self.settings = settings
        self.inbox = StudyInbox(inbox)
        self.modalities = tuple(modalities)
        self.accepted = frozenset(uid for m in self.modalities for uid in STORAGE_CLASSES[m])
        self.ae = GuardedAE(settings.ae_title)  # bounded PDUs, instances and negotiating connections
        self.ae.add_supported_context(Verification)
        syntaxes = decodable_transfer_syntaxes()
        for cx in AllStoragePresentationContexts:  # other classes get a clear refusal status, not a bare reject
            self.ae.add_supported_context(cx.abstract_syntax, syntaxes if cx.abstract_syntax in self.accepted  # type: ignore[arg-type]
                                          else ALL_TRANSFER_SYNTAXES)
        self._server = None
        self._open: dict[int, set[str]] = {}   # id of an open association -> the studies it brought instances to
        self._announced: dict[str, tuple[int, float]] = {}   # study -> (Number of Study Related Instances, last arrival)
        self._open_lock = threading.Lock()
        self.on_stored: Callable[[Path, Dataset], object] | None = None
        """Told each instance once it is committed (its path and dataset): the service decodes CT slices ahead."""

    def store(self, ds: Dataset, data: bytes) -> Path:
        """Commit one checked instance (``check_instance``) from C-STORE or STOW-RS, then hand it to
        ``on_stored``; OSError when it cannot be stored."""
        path = self.inbox.commit(ds.StudyInstanceUID, ds.SOPInstanceUID, data)
        if self.on_stored is not None:
            try:
                self.on_stored(path, ds)
            except Exception:  # noqa: BLE001 - decoding ahead only saves time: storing must not fail for it
                log.debug("instance not handed over for decoding ahead", exc_info=True)
        return path

    def receiving(self, study_uid: str) -> bool:
        """True while the study is not complete (docs/dicom.md, Receiving): an association that brought
        instances of ``study_uid`` is still open (the sender may be pausing mid-study), or its instances
        announced a Number of Study Related Instances not reached yet, the last one less than
        ANNOUNCED_WAIT_S ago."""
        with self._open_lock:
            if any(study_uid in studies for studies in self._open.values()):
                return True
            announced, last = self._announced.get(study_uid, (0, 0.0))
            if not announced:
                return False
            if time.monotonic() - last < ANNOUNCED_WAIT_S and \
                    sum(1 for _ in (self.inbox.root / study_uid).glob("*.dcm")) < announced:
                return True
            del self._announced[study_uid]
            return False

    def _closed(self, event: Event) -> None:
        with self._open_lock:
            self._open.pop(id(event.assoc), None)

    def refusal(self, sop_class: str) -> str | None:
        """Why an instance of ``sop_class`` is refused (None: it is accepted)."""
        if sop_class in self.accepted:
            return None
        reads = modality_names(self.modalities)
        modality = next((m for m, classes in STORAGE_CLASSES.items() if sop_class in classes), None)
        if modality is not None:
            return f"this device has no {MODALITY_TERMS[modality].name} model (it reads: {reads})"
        return f"this device reads {reads} images only"

    def start(self) -> None:
        pynetdicom_log = logging.getLogger("pynetdicom")
        if pynetdicom_log.level == logging.NOTSET:  # one INFO line per instance is too much for -v
            pynetdicom_log.setLevel(logging.WARNING)
        removed = self.inbox.prepare()
        if removed:
            log.warning("removed %d partial instance(s) left by an interrupted receiver", removed)
        try:
            self._server = self.ae.start_server(  # type: ignore[assignment]
                (self.settings.host, self.settings.port), block=False,
                evt_handlers=[(evt.EVT_REQUESTED, self._on_request), (evt.EVT_C_STORE, self._on_store),
                              (evt.EVT_RELEASED, self._closed), (evt.EVT_ABORTED, self._closed),
                              (evt.EVT_CONN_CLOSE, self._closed)])
        except OSError as exc:
            raise UserError(f"{self.settings.host}:{self.settings.port}",
                            f"the DICOM receiver cannot listen there ({exc.strerror}); see dicom.host and dicom.port") from exc
        log.info("DICOM receiver %s listening on %s:%d for %s images, studies in %s", self.settings.ae_title,
                 self.settings.host, self.port, modality_names(self.modalities), self.inbox.root)
        if not self.settings.allowed_callers and not ipaddress.ip_address(_resolve(self.settings.host)).is_loopback:
            log.warning("dicom.allowed_callers is empty: any DICOM node that reaches %s:%d may send studies",
                        self.settings.host, self.port)

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self.settings.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_request(self, event: Event) -> None:
        caller = event.assoc.requestor.primitive.calling_ae_title.strip()  # type: ignore[union-attr]
        called = event.assoc.requestor.primitive.called_ae_title.strip()  # type: ignore[union-attr]
        address = event.assoc.requestor.address
        if called != self.settings.ae_title:
            log.warning("association from %r at %s rejected: it calls %r, this receiver is %r", caller, address,
                        called, self.settings.ae_title)
            event.assoc.acse.send_reject(0x01, 0x01, 0x07)  # rejected-permanent, service user, called AE not recognised
            event.assoc.kill()
        elif not is_allowed(caller, address, self.settings.allowed_callers):
            log.warning("association from %r at %s rejected: not in dicom.allowed_callers", caller, address)
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # rejected-permanent, service user, calling AE not recognised
            event.assoc.kill()  # as pynetdicom does: waits until the A-ASSOCIATE-RJ has gone out

    def _on_store(self, event: Event) -> Dataset:
        request = event.request
        sop_class, sop_uid = UID(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID)  # type: ignore[arg-type, union-attr]
        oversize = event.assoc.dimse.oversize  # type: ignore[attr-defined]
        if request.MessageID in oversize:  # its data set was discarded as it arrived
            oversize.discard(request.MessageID)
            log.warning("refused instance %s from %r: larger than %d MB", printable(sop_uid),
                        event.assoc.requestor.ae_title, MAX_INSTANCE_BYTES // 2**20)
            return _status(OUT_OF_RESOURCES, f"instance larger than {MAX_INSTANCE_BYTES // 2**20} MB")
        if refusal := self.refusal(sop_class):
            log.warning("refused a %s instance from %r: %s", sop_class.name, event.assoc.requestor.ae_title, refusal)
            return _status(SOP_CLASS_NOT_SUPPORTED, refusal[:64])
        data = event.encoded_dataset(include_meta=True)
        try:
            ds = check_instance(data, sop_uid)
        except ValueError as exc:
            log.warning("refused instance %s from %r: %s", sop_uid, event.assoc.requestor.ae_title, exc)
            return _status(CANNOT_UNDERSTAND, str(exc)[:64])
        try:
            self.store(ds, data)
        except OSError as exc:
            log.error("cannot store instance %s in %s: %s", sop_uid, self.inbox.root, exc.strerror)
            return _status(OUT_OF_RESOURCES, f"cannot store: {exc.strerror}"[:64])
        with self._open_lock:
            self._open.setdefault(id(event.assoc), set()).add(str(ds.StudyInstanceUID))
            announced = _count(ds.get("NumberOfStudyRelatedInstances"))
            if announced:
                self._announced[str(ds.StudyInstanceUID)] = (announced, time.monotonic())
        return _status(SUCCESS)


def _count(value: object) -> int:
    """A positive count from a header value, else 0."""
    try:
        return max(int(value), 0)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0


def _status(code: int, comment: str = "") -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment
    return status



def _resolve(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return "0.0.0.0"
