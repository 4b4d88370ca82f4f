"""A throwaway Orthanc PACS for the interop tests and ``ctedge bench-dicom``: Debian's
``/usr/sbin/Orthanc`` started from a config in a folder, on free loopback ports, with a
``DicomModalities`` entry ``ctedge`` pointing at the receiver; stopped by PID."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

BINARY = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"  # Debian package orthanc-dicomweb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """``with Orthanc(folder, ctedge_port) as pacs:`` runs Orthanc (AE ORTHANC) until the block ends."""

    def __init__(self, folder: Path, ctedge_port: int, ctedge_ae: str = "CTEDGE", dicomweb: dict | None = None):
        """``dicomweb``: DICOMweb servers ({name: {"Url": ..., "HttpHeaders": ...}}) for the DICOMweb plugin."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.config = self.folder / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "ctedge-test", "StorageDirectory": str(self.folder / "db"), "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True, "Plugins": [], "StableAge": 1,
            "DicomModalities": {"ctedge": [ctedge_ae, "127.0.0.1", ctedge_port]},
        } | ({"Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Servers": dicomweb}} if dicomweb else {})))
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Orthanc:
        log = open(self.folder / "orthanc.log", "wb")
        self.proc = subprocess.Popen([BINARY, str(self.config)], stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.get("/system")
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"Orthanc exited: {(self.folder / 'orthanc.log').read_text()[-2000:]}") from None
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("Orthanc did not answer within 30 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)

    def request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        with urllib.request.urlopen(req, timeout=60) as rsp:
            return rsp.read()

    def get(self, path: str):
        return json.loads(self.request("GET", path))

    def post(self, path: str, doc):
        return json.loads(self.request("POST", path, doc if isinstance(doc, bytes) else json.dumps(doc).encode()))

    def study_id(self, study_uid: str) -> str | None:
        found = self.post("/tools/lookup", study_uid.encode())
        return next((f["ID"] for f in found if f["Type"] == "Study"), None)

    def modalities(self, study_uid: str) -> list[str]:
        """The modalities of the series Orthanc holds for a study."""
        study = self.study_id(study_uid)
        return sorted(s["MainDicomTags"].get("Modality", "") for s in self.get(f"/studies/{study}/series")) if study else []

    def has_instance(self, sop_uid: str) -> bool:
        """True once Orthanc holds the instance ``sop_uid``."""
        return any(f["Type"] == "Instance" for f in self.post("/tools/lookup", sop_uid.encode()))
