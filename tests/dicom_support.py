"""Helpers for the DICOM network tests: a phantom study with valid UIDs, a pynetdicom sender and a
pynetdicom storage SCP standing in for PACS (the Orthanc tests use the real thing)."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from edge.phantom import make_phantom, write_dicom_series


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def phantom_study(folder: Path, n_slices: int = 40, size: int = 128, seed: int = 3, **lesions) -> list[Path]:
    return write_dicom_series(make_phantom(n_slices=n_slices, size=size, seed=seed, **lesions), folder, seed=seed)


def send(port: int, files: list[Path | Dataset], calling: str = "TESTSCU", called: str = "CTEDGE",
         abort_after: int | None = None) -> list[int | None]:
    """C-STORE ``files`` (paths are sent as encoded, without decoding) and return each status; with
    ``abort_after``, abort the association after that many instances."""
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
        rsp = assoc.send_c_store(f)
        statuses.append(rsp.get("Status") if rsp else None)
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
    """A minimal PACS stand-in: stores every received dataset in ``received``."""

    def __init__(self, ae_title: str = "PACS", port: int | None = None):
        self.ae_title, self.port = ae_title, port or free_port()
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
            self.received.append(event.dataset)
        return 0x0000



class Orthanc:
    """A real Orthanc (Debian's /usr/sbin/Orthanc) from a config in ``folder``, on free loopback ports,
    with a ``DicomModalities`` entry ``ctedge`` for the receiver under test."""

    BINARY = "/usr/sbin/Orthanc"

    def __init__(self, folder: Path, ctedge_port: int, ctedge_ae: str = "CTEDGE"):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "ctedge-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True, "Plugins": [], "StableAge": 1,
            "DicomModalities": {"ctedge": [ctedge_ae, "127.0.0.1", ctedge_port]},
        }))
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Orthanc:
        self.proc = subprocess.Popen([self.BINARY, str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.folder / "orthanc.log", "wb"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.get("/system")
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"Orthanc exited: {(self.folder / 'orthanc.log').read_text()[-2000:]}")
                time.sleep(0.1)
        raise RuntimeError("Orthanc did not answer within 30 s")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(30)

    def request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        with urllib.request.urlopen(req, timeout=60) as rsp:
            return rsp.read()

    def get(self, path: str):
        return json.loads(self.request("GET", path))

    def post(self, path: str, doc) -> object:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        return json.loads(self.request("POST", path, body))

    def study_id(self, study_uid: str) -> str:
        found = self.post("/tools/lookup", study_uid.encode())
        return next(f["ID"] for f in found if f["Type"] == "Study")


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines dciodvfy prints for a file."""
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if "Error" in line]
