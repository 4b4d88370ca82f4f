"""Reliability under load: a real ``ctedge serve`` (waitress) on loopback, 200 requests, 8 at a time,
20% of them malformed. No 5xx except deliberate 503 overload answers, every malformed request a 4xx
with a JSON ``error``, every accepted study finished, and the server's memory bounded."""

from __future__ import annotations

import collections
import json
import random
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO

import psutil
import pytest

from tests.helpers.server import multipart, phantom_study, serve, write_profile

pytestmark = pytest.mark.slow  # a real server under load

N_REQUESTS, CONCURRENCY = 200, 8
MALFORMED = {"bad-zip": 400, "not-dicom": 415, "no-auth": 401, "oversize": 413}   # 10 of each
MAX_RSS_GROWTH_MB = 300


def _payloads(tmp_path) -> dict[str, list[tuple[bytes, str]]]:
    studies = []
    for seed in range(3):
        files = phantom_study(tmp_path / f"study-{seed}", n_slices=12, size=96, seed=seed)
        studies.append(multipart([(f.name, f.read_bytes()) for f in files]))
    truncated = BytesIO()
    with zipfile.ZipFile(truncated, "w") as zf:
        zf.writestr("IM0001.dcm", b"x" * 5000)
    return {
        "upload": studies,
        "bad-zip": [multipart([("study.zip", truncated.getvalue()[:-30])])],
        "not-dicom": [multipart([("report.txt", b"not a scan\n" * 50), ("notes.doc", b"\x00" * 300)])],
        "no-auth": studies[:1],
        "oversize": [multipart([("big.dcm", bytes(1_200_000))])],
    }


def _plan(seed: int = 0) -> list[str]:
    kinds = [k for k in MALFORMED for _ in range(10)] + ["upload"] * 60 + ["status"] * 70 + ["health"] * 15 + ["model"] * 15
    assert len(kinds) == N_REQUESTS
    random.Random(seed).shuffle(kinds)
    return kinds


class PeakRss(threading.Thread):
    """Samples the server process's resident memory every 50 ms."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.05)


def test_load_on_a_real_server(tmp_path):
    payloads = _payloads(tmp_path)
    profile = write_profile(tmp_path, max_upload_mb=1, workers=1, queue_size=4)
    accepted: list[str] = []
    with serve(profile) as server:
        assert server.json("/health")["status"] == "ok"
        # One study first: the heatmap models load on first use, so the baseline is a warm server's.
        body, content_type = payloads["upload"][0]
        status, _, data = server.request("POST", "/api/v1/studies", body, {"Content-Type": content_type})
        assert status == 202, data
        warm_up = json.loads(data)["id"]
        deadline = time.monotonic() + 60
        while server.json(f"/api/v1/studies/{warm_up}")["status"] not in ("done", "failed") and time.monotonic() < deadline:
            time.sleep(0.2)
        baseline = psutil.Process(server.process.pid).memory_info().rss
        sampler = PeakRss(server.process.pid)
        sampler.start()
        rng = random.Random(1)

        def one(kind: str) -> tuple[str, int, dict, bytes]:
            if kind in ("health", "model"):
                return (kind, *server.request("GET", "/health" if kind == "health" else "/api/v1/model"))
            if kind == "status":
                path = f"/api/v1/studies/{rng.choice(accepted)}" if accepted else "/health"
                return (kind, *server.request("GET", path))
            body, content_type = rng.choice(payloads[kind])
            status, headers, data = server.request("POST", "/api/v1/studies", body, {"Content-Type": content_type},
                                                   token=kind != "no-auth")
            if status == 202:
                accepted.append(json.loads(data)["id"])
            return kind, status, headers, data

        start = time.monotonic()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            results = list(pool.map(one, _plan()))
        load_s = time.monotonic() - start

        deadline = time.monotonic() + 60
        pending = set(accepted)
        while pending and time.monotonic() < deadline:
            pending = {i for i in pending if server.json(f"/api/v1/studies/{i}")["status"] not in ("done", "failed")}
            time.sleep(0.2)
        sampler.running = False
        sampler.join()
        final = {i: server.json(f"/api/v1/studies/{i}")["status"] for i in accepted}
        healthy = server.json("/health")
    log = "".join(server.output)

    histogram = collections.Counter((kind, status) for kind, status, _, _ in results)
    print(f"\nload: {N_REQUESTS} requests, {CONCURRENCY} concurrent, {load_s:.1f} s; "
          f"status codes {dict(sorted(collections.Counter(s for _, s, _, _ in results).items()))}; "
          f"by kind {dict(sorted(histogram.items()))}; accepted studies {len(accepted)}; "
          f"RSS baseline {baseline / 2**20:.0f} MB, peak {sampler.peak / 2**20:.0f} MB")

    for kind, status, headers, body in results:
        if status >= 500:
            assert (kind, status) == ("upload", 503), (kind, status, body[:200])
            assert headers.get("Retry-After") and "busy" in json.loads(body)["error"]
        if kind in MALFORMED:
            assert status == MALFORMED[kind], (kind, status, body[:200])
            assert json.loads(body)["error"], kind
        elif kind == "upload":
            assert status in (202, 503), (status, body[:200])
        else:
            assert status == 200, (kind, status, body[:200])
    assert histogram[("upload", 202)] >= 5, histogram
    assert not pending, f"studies still unfinished after 60 s: {pending}"
    assert set(final.values()) == {"done"}, final
    assert healthy["status"] == "ok" and healthy["queue"]["waiting"] == 0
    assert "Traceback" not in log and "internal error" not in log
    assert accepted[0] in log and "IM0001" not in log and "report.txt" not in log   # study ids, never file names
    assert sampler.peak - baseline < MAX_RSS_GROWTH_MB * 2**20, (baseline, sampler.peak)

