"""``ctedge bench-dicom``: receive rate of a study sent by dcmtk's ``storescu`` and the time from the
last instance acknowledged to the SR stored in a real Orthanc (needs dcmtk and orthanc installed)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from edge.dicomnet.orthanc import BINARY as ORTHANC, Orthanc, free_port
from edge.dicomnet.service import REPORTS, DicomService
from edge.engine import Device, Engine
from edge.errors import UserError
from edge.profile import DicomPeer, DicomSettings, WatcherSettings
from edge.result import ResultDoc, load_result
from edge.watch import Entry, run_once


def bench_dicom(study: Path, runs: int, engine: Engine | Device, modalities: tuple[str, ...]) -> dict:
    """Send ``study`` to a receiver on loopback ``runs`` times (after one untimed run), analysing it with
    ``engine`` after each and sending its results to a local Orthanc; the figures as a document (see
    ``ctedge bench-dicom``)."""
    if runs < 1:
        raise UserError("--runs", "must be at least 1")
    for tool in ("storescu", ORTHANC):
        if not shutil.which(tool):
            raise UserError(tool, "not installed (Debian: apt-get install dcmtk orthanc)")
    files = sorted(p for p in study.rglob("*") if p.is_file() and _is_dicom(p))
    if not files:
        raise UserError(study, "no DICOM file found")
    size_mb = sum(p.stat().st_size for p in files) / 1e6
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    with tempfile.TemporaryDirectory(prefix="ctedge-bench-dicom-") as tmp:
        port = free_port()
        with Orthanc(Path(tmp) / "orthanc", port) as pacs:
            settings = DicomSettings(port=port, destinations=(DicomPeer("ORTHANC", "127.0.0.1", pacs.dicom_port),))
            seconds = []
            to_sr: dict[bool, list[dict[str, float]]] = {True: [], False: []}
            for run in range(-1, runs):   # run -1 warms up (a process's first study pays one-time costs): not counted
                ahead = run % 2 == 0      # alternating: slices decoded as they arrive, then not
                inbox = Path(tmp) / f"inbox-{run}"
                service = DicomService(settings, inbox, Path(tmp) / f"out-{run}", modalities)
                service.start(decode_for=engine if ahead else None)   # its sender thread delivers, the SR first
                try:
                    received_s = _storescu(port, files)
                    received = len(list(inbox.glob("*/*.dcm")))
                    if received != len(files):
                        raise UserError(study, f"only {received} of {len(files)} instances were stored")
                    timed = _time_to_sr(engine, service, pacs, first.StudyInstanceUID)
                finally:
                    service.stop()
                if run >= 0:
                    seconds.append(received_s)
                    to_sr[ahead].append(timed)
    receive_s = statistics.median(seconds)
    return {"study": str(study), "instances": len(files), "megabytes": round(size_mb, 1),
            "transfer_syntax": str(first.file_meta.TransferSyntaxUID.name),
            "runs": runs, "receive_seconds_median": round(receive_s, 3),
            "instances_per_second": round(len(files) / receive_s, 1), "megabytes_per_second": round(size_mb / receive_s, 1),
            "last_instance_to_sr_in_orthanc_seconds": _median(to_sr[True], "seconds"),
            "decoded_ahead": _medians(to_sr[True]), "not_decoded_ahead": _medians(to_sr[False]),
            "cpu": _cpu(), "load_average": [round(x, 2) for x in os.getloadavg()]}


def _median(runs: list[dict[str, float]], key: str) -> float | None:
    return round(statistics.median(r[key] for r in runs), 3) if runs else None


def _medians(runs: list[dict[str, float]]) -> dict[str, float | None | int]:
    """Medians over runs of the time to the SR and its parts: the analysis (``run_once``), its stages
    (ms, from the result), and making, sending and Orthanc storing the SR and heatmaps."""
    return {"runs": len(runs)} | {key: _median(runs, key) for key in (runs[0] if runs else ())}


def _storescu(port: int, files: list[Path]) -> float:
    start = time.perf_counter()
    done = subprocess.run(["storescu", "-xs", "-aet", "BENCH", "-aec", "CTEDGE", "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise UserError("storescu", f"failed: {done.stderr.strip()[-500:]}")
    return time.perf_counter() - start


def _time_to_sr(engine: Engine | Device, service: DicomService, pacs: Orthanc, study_uid: str) -> dict[str, float]:
    """Seconds from now (the last instance just acknowledged) until the SR is in Orthanc (it is sent as
    soon as the verdict is known), with its parts, and until the heatmaps are there too."""
    start = time.perf_counter()
    marks: dict[str, float] = {}

    def verdict(entry: Entry, doc: ResultDoc) -> None:
        marks["verdict"] = time.perf_counter()
        service.send_verdict(entry, doc)

    def analyse() -> None:
        run_once(engine, service.inbox, service.results, replace(WatcherSettings(), stable_seconds=0.0),
                 on_verdict=verdict)
        marks["analysed"] = time.perf_counter()
        service.after_pass()                  # queues the heatmaps (and the SR, had it not gone ahead)

    with ThreadPoolExecutor(1) as pool:
        analysis = pool.submit(analyse)
        record = service.outbox.root / REPORTS / f"{study_uid}.json"
        while not (record.is_file() or analysis.done()):
            _wait(start, service)
        try:
            sop_uid = json.loads(record.read_text())["sop_uid"]
        except (OSError, ValueError, KeyError):
            analysis.result()
            raise UserError(service.results, f"no SR was made: {service.outbox.status()}") from None
        while not pacs.has_instance(sop_uid):
            _wait(start, service)
        end = time.perf_counter()
        analysis.result()
    while service.outbox.status()["pending"]:
        _wait(start, service)
    stages = next(load_result(p.parent)["timings_ms"] for p in service.results.glob("*/result.json"))
    return {"seconds": end - start, "verdict_seconds": marks["verdict"] - start,
            "sr_made_and_sent_seconds": end - marks["verdict"], "analysis_seconds": marks["analysed"] - start,
            "heatmaps_in_orthanc_seconds": time.perf_counter() - start} | \
        {f"{stage}_ms": float(stages[stage]) for stage in ("read", "segment", "infer", "explain") if stage in stages}


def _wait(start: float, service: DicomService) -> None:
    if time.perf_counter() - start > 600:
        raise UserError(service.outbox.root, f"the results did not reach Orthanc: {service.outbox.status()}")
    time.sleep(0.02)


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
