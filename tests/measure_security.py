"""Measure three findings of issue 11 against a real ``ctedge serve`` on loopback (bounded: about 30 s):
four 1 KB JPEG 2000 slices declaring 8192 x 8192 pixels (server peak RSS), a POST /login announcing
300 MB (time to answer), failed logins on one user for 8 s (how many passwords are checked).

    PYTHONPATH=. .venv/bin/python tests/measure_security.py
"""
import http.client
import json
import re
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pydicom
from pydicom.uid import JPEG2000Lossless

from tests.helpers.server import multipart, phantom_study, serve, write_profile

tmp = Path(tempfile.mkdtemp(prefix="sec-measure-"))
src = phantom_study(tmp / "src", n_slices=4, size=64)
bombs = []
for i, f in enumerate(src):
    ds = pydicom.dcmread(f)
    ds.Rows = ds.Columns = 8192
    ds.PixelRepresentation = 0
    ds.compress(JPEG2000Lossless, np.zeros((8192, 8192), np.uint16))
    ds.save_as(tmp / f"b{i}.dcm")
    bombs.append((f.name, (tmp / f"b{i}.dcm").read_bytes()))
print("bomb files (bytes):", [len(b) for _, b in bombs])
(tmp / "box").mkdir()
with serve(write_profile(tmp / "box", max_upload_mb=1024)) as s:
    proc = psutil.Process(s.process.pid)
    base = proc.memory_info().rss
    peak, sampling = [base], threading.Event()
    sampling.set()

    def sample() -> None:
        while sampling.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    body, ct = multipart(bombs)
    st, _, data = s.request("POST", "/api/v1/studies", body, {"Content-Type": ct})
    sid = json.loads(data)["id"]
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        state = s.json(f"/api/v1/studies/{sid}")
        if state["status"] in ("done", "failed"):
            break
        time.sleep(0.2)
    sampling.clear()
    print(f"pixel bombs: upload {st}, study {state['status']} in {time.monotonic()-t0:.1f} s: "
          f"{(state.get('error') or '')[:110]}; RSS baseline {base/2**20:.0f} MB, peak {peak[0]/2**20:.0f} MB")
    # 300 MB announced to /login, body never sent
    t0 = time.monotonic()
    with socket.create_connection((s.host, s.port), timeout=5) as sock:
        sock.sendall(f"POST /login HTTP/1.1\r\nHost: {s.host}:{s.port}\r\nContent-Length: 300000000\r\n"
                     "Content-Type: application/x-www-form-urlencoded\r\n\r\n".encode())
        try:
            head = sock.recv(200).split(b"\r\n")[0].decode()
        except TimeoutError:
            head = "no answer within 5 s (waiting for the body)"
    print(f"POST /login announcing 300 MB: {head!r} after {time.monotonic()-t0:.2f} s")
    # failed logins for 8 s on one keep-alive connection
    conn = http.client.HTTPConnection(s.host, s.port, timeout=10)
    conn.request("GET", "/login")
    r = conn.getresponse()
    html = r.read().decode()
    cookie = r.getheader("Set-Cookie").split(";")[0]
    token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    counts = {}
    t0 = time.monotonic()
    while time.monotonic() - t0 < 8:
        conn.request("POST", "/login", body=f"user=clinician&password=guess&csrf_token={token}",
                     headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie})
        r = conn.getresponse()
        r.read()
        counts[r.status] = counts.get(r.status, 0) + 1
    print(f"failed logins for 8 s on one user: answers {counts} (401 = password checked)")
shutil.rmtree(tmp)
