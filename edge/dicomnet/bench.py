"""``ctedge bench-dicom``: receive rate of a study sent by dcmtk's ``storescu`` and the time from the
last instance acknowledged to the SR stored in a real Orthanc (needs dcmtk and orthanc installed)."""

from __future__ import annotations

import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from edge.dicomnet.orthanc import BINARY as ORTHANC, Orthanc, free_port
from edge.dicomnet.service import DicomService
from edge.engine import Device, Engine
from edge.errors import UserError
from edge.profile import DicomPeer, DicomSettings, WatcherSettings
from edge.watch import run_once


def bench_dicom(study: Path, runs: int, engine: Engine | Device, modalities: tuple[str, ...]) -> dict:
    """Send ``study`` to a receiver on loopback ``runs`` times, then analyse it with ``engine`` and send
    its results to a local Orthanc; the figures as a document (see ``ctedge bench-dicom``)."""
    for tool in ("storescu", ORTHANC):
        if not shutil.which(tool):
            raise UserError(tool, "not installed (Debian: apt-get install dcmtk orthanc)")
    files = sorted(p for p in study.rglob("*") if p.is_file() and _is_dicom(p))
    if not files:
        raise UserError(study, "no DICOM file found")
    size_mb = sum(p.stat().st_size for p in files) / 1e6
    with tempfile.TemporaryDirectory(prefix="ctedge-bench-dicom-") as tmp:
        port = free_port()
        with Orthanc(Path(tmp) / "orthanc", port) as pacs:
            settings = DicomSettings(port=port, destinations=(DicomPeer("ORTHANC", "127.0.0.1", pacs.dicom_port),))
            seconds = []
            for run in range(runs):
                inbox = Path(tmp) / f"inbox-{run}"
                service = DicomService(settings, inbox, Path(tmp) / f"out-{run}", modalities)
                service.start(send=False)
                try:
                    seconds.append(_storescu(port, files))
                finally:
                    service.stop()
                received = len(list(inbox.glob("*/*.dcm")))
                if received != len(files):
                    raise UserError(study, f"only {received} of {len(files)} instances were stored")
            to_sr = _time_to_sr(engine, service, pacs, pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    receive_s = statistics.median(seconds)
    return {"study": str(study), "instances": len(files), "megabytes": round(size_mb, 1),
            "transfer_syntax": str(pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID.name),
            "runs": runs, "receive_seconds_median": round(receive_s, 3),
            "instances_per_second": round(len(files) / receive_s, 1), "megabytes_per_second": round(size_mb / receive_s, 1),
            "last_instance_to_sr_in_orthanc_seconds": round(to_sr, 2), "cpu": _cpu()}


def _storescu(port: int, files: list[Path]) -> float:
    start = time.perf_counter()
    done = subprocess.run(["storescu", "-xs", "-aet", "BENCH", "-aec", "CTEDGE", "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise UserError("storescu", f"failed: {done.stderr.strip()[-500:]}")
    return time.perf_counter() - start


def _time_to_sr(engine: Engine | Device, service: DicomService, pacs: Orthanc, study_uid: str) -> float:
    """Seconds from now (the last instance just acknowledged) until the SR is in Orthanc."""
    start = time.perf_counter()
    run_once(engine, service.inbox, service.results, replace(WatcherSettings(), stable_seconds=0.0))
    service.after_pass()
    while "SR" not in pacs.modalities(study_uid):
        if time.perf_counter() - start > 600:
            raise UserError(service.outbox.root, f"the SR did not reach Orthanc: {service.outbox.status()}")
        time.sleep(0.05)
    return time.perf_counter() - start


def _cpu() -> str:
    """Model name and the SIMD flags that matter for inference, from /proc/cpuinfo."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    return f"{model or platform.machine()} ({', '.join(f for f in ('avx2', 'avx512_vnni') if f in flags) or 'no avx2'})"


def _is_dicom(path: Path) -> bool:
    try:
        pydicom.dcmread(path, stop_before_pixels=True)
        return True
    except (InvalidDicomError, OSError):
        return False
