"""Helpers for the DICOM network tests: a phantom study with valid UIDs, a pynetdicom sender, a
pynetdicom storage SCP standing in for PACS, and the real Orthanc (edge.dicomnet.orthanc)."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from edge.dicomnet.orthanc import Orthanc, free_port
from edge.phantom import make_phantom, write_dicom_series

__all__ = ["Orthanc", "StorageSCP", "code_of", "dciodvfy_errors", "dciodvfy_warnings", "echo", "free_port", "phantom_study",
           "send", "send_statuses", "sr_by_meaning", "sr_items"]


def phantom_study(folder: Path, n_slices: int = 40, size: int = 128, seed: int = 3, **lesions) -> list[Path]:
    return write_dicom_series(make_phantom(n_slices=n_slices, size=size, seed=seed, **lesions), folder, seed=seed)


def send(port: int, files: list[Path | Dataset], calling: str = "TESTSCU", called: str = "CTEDGE",
         abort_after: int | None = None, pause: tuple[int, float] | None = None) -> list[int | None]:
    """C-STORE ``files`` (paths are sent as encoded, without decoding) and return each status; with
    ``abort_after``, abort the association after that many instances; with ``pause`` (n, seconds),
    wait that long after the n-th instance, the association open."""
    return [rsp.get("Status") for rsp in send_statuses(port, files, calling, called, abort_after, pause)]


def send_statuses(port: int, files: list[Path | Dataset], calling: str = "TESTSCU", called: str = "CTEDGE",
                  abort_after: int | None = None, pause: tuple[int, float] | None = None) -> list[Dataset]:
    """As :func:`send`, but each whole C-STORE response status (with its ErrorComment); empty when none came."""
    ae = AE(calling)
    classes = {pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID if not isinstance(f, Dataset) else f.SOPClassUID
               for f in files}
    syntaxes = {pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID for f in files
                if not isinstance(f, Dataset)} or {pydicom.uid.ExplicitVRLittleEndian}
    for uid in classes:
        ae.add_requested_context(uid, sorted(syntaxes))
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, "the receiver refused the association"
    statuses = []
    for n, f in enumerate(files):
        if abort_after is not None and n == abort_after:
            assoc.abort()
            return statuses
        if pause is not None and n == pause[0]:
            time.sleep(pause[1])
        statuses.append(assoc.send_c_store(f) or Dataset())
    assoc.release()
    return statuses


def echo(port: int, calling: str = "TESTSCU") -> tuple[bool, bool, int | None]:
    """(established, rejected, C-ECHO status)."""
    ae = AE(calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="CTEDGE")
    established, status = assoc.is_established, None
    if established:
        status = assoc.send_c_echo().get("Status")
        assoc.release()
    return established, assoc.is_rejected, status


class StorageSCP:
    """A minimal PACS stand-in: stores every received dataset in ``received``; answers 0xA700 (out of
    resources) the first time it receives an instance listed in ``refuse_once``."""

    def __init__(self, ae_title: str = "PACS", port: int | None = None, refuse_once: set[str] = frozenset()):
        self.ae_title, self.port = ae_title, port or free_port()
        self.refuse_once = set(refuse_once)
        self.received: list[Dataset] = []
        self._lock = threading.Lock()
        self._server = None

    def start(self) -> StorageSCP:
        ae = AE(self.ae_title)
        ae.supported_contexts = StoragePresentationContexts
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._store)])
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server = None

    def _store(self, event: evt.Event) -> int:
        with self._lock:
            if event.request.AffectedSOPInstanceUID in self.refuse_once:
                self.refuse_once.discard(event.request.AffectedSOPInstanceUID)
                return 0xA700
            ds = event.dataset
            ds.file_meta = event.file_meta
            self.received.append(ds)
        return 0x0000



def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines dciodvfy prints for a file."""
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if "Error" in line]


def dciodvfy_warnings(path: Path) -> list[str]:
    """The "Warning" lines dciodvfy prints for a file."""
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if "Warning" in line]


def sr_items(sr: Dataset) -> list[Dataset]:
    """Every content item of an SR document, depth first."""
    items: list[Dataset] = []
    for item in sr.get("ContentSequence", []):
        items += [item, *sr_items(item)]
    return items


def sr_by_meaning(sr: Dataset) -> dict[str, Dataset]:
    """The content items of an SR document by the meaning of their concept name (the first of each)."""
    found: dict[str, Dataset] = {}
    for item in sr_items(sr):
        found.setdefault(item.ConceptNameCodeSequence[0].CodeMeaning, item)
    return found


def code_of(item: Dataset) -> tuple[str, str, str]:
    """(value, scheme, meaning) of the coded value of a CODE content item (Code Value or Long Code Value)."""
    code = item.ConceptCodeSequence[0]
    return code.get("CodeValue") or code.LongCodeValue, code.CodingSchemeDesignator, code.CodeMeaning
