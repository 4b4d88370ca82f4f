"""Reliability of ``ctedge watch`` as a real process: 50 studies (real and synthetic, 10% corrupt,
15 still being copied while it runs), the watcher killed with SIGKILL 3 times mid-study and
restarted. Every good study ends with exactly one result, every bad one in failed/, no
duplicates, no partial folders left, and a final ``--once`` run is a no-op."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import RLELossless

from edge import CLASSES
from edge.phantom import make_phantom, write_dicom_series, write_image_slices
from edge.watch import SUMMARY, survey
from tests.helpers.paths import REPO, SAMPLES
from tests.helpers.profiles import write_profile

pytestmark = pytest.mark.slow  # real watchers killed and restarted

STABLE_SECONDS = 2.0
STALL_S = 0.7             # a pause mid-copy: shorter than STABLE_SECONDS, longer than an analysis
KILL_AFTER = (4, 17, 30)  # kill once this many records are committed and a study is being analysed
DEADLINE_S = 240


def build_sources(root: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """50 inbox entries built under ``root``: name -> path, and for each bad one the text its error must contain."""
    sources: dict[str, Path] = {}
    for i, sample in enumerate(sorted(p for p in SAMPLES.iterdir() if p.is_dir()) * 3):
        folder = shutil.copytree(sample, root / f"real-{i:02d}")
        sources[folder.name] = zip_folder(folder) if i % 4 == 1 else folder
    for i in range(36):
        phantom = make_phantom(n_slices=10 + i % 7, size=96, ground_glass=i % 2, consolidation=i % 3, seed=i)
        folder = root / f"synth-{i:02d}"
        if i % 6 == 5:
            write_image_slices(phantom, folder, bit_depth=16 if i % 4 == 1 else 8)
        else:
            write_dicom_series(phantom, folder, seed=i)
        sources[folder.name] = zip_folder(folder) if i % 6 == 2 else folder
    # two phantoms whose threshold lung mask covers too few slices: refused by the lung-fraction rule
    # (docs/series-rules.md), recorded as failed like any other unusable study
    bad: dict[str, str] = {"synth-05": "slices show lung", "synth-28": "slices show lung"}
    truncated = write_dicom_series(make_phantom(n_slices=6, size=64), root / "bad-truncated")
    for f in truncated:
        f.write_bytes(f.read_bytes()[:400])
    bad["bad-truncated"] = "no axial CT series"   # cut at 400 bytes: not even a whole SOP class UID is left
    single = write_dicom_series(make_phantom(n_slices=1, size=64), root / "bad-single")
    bad["bad-single"] = f"{single[0].name}: the study's only CT series has a single slice"
    (root / "bad-junk").mkdir()
    (root / "bad-junk" / "report.txt").write_text("not an image")
    bad["bad-junk"] = "report.txt: not a DICOM file"
    with zipfile.ZipFile(root / "bad-slip.zip", "w") as zf:
        zf.writestr("../../etc/evil.dcm", b"x")
    bad["bad-slip"] = "bad-slip.zip: member '../../etc/evil.dcm' points outside the archive root"
    damaged = zip_folder(write_dicom_series(make_phantom(n_slices=6, size=64), root / "bad-damaged")[0].parent)
    damaged.write_bytes(damaged.read_bytes()[:-60])
    bad["bad-damaged"] = "bad-damaged.zip"
    sources |= {name: root / name if (root / name).is_dir() else root / f"{name}.zip" for name in bad}
    assert len(sources) == 50
    return sources, bad


def zip_folder(folder: Path) -> Path:
    archive = folder.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"{folder.name}/{f.name}")
    shutil.rmtree(folder)
    return archive


def slow_copy(sources: list[Path], inbox: Path, rng: random.Random) -> None:
    """Copy studies the way a slow network copy does: file by file (zips chunk by chunk), with short
    pauses and one stall half-way that is long enough to analyse the incomplete study in."""
    for source in sources:
        if source.is_dir():
            target = inbox / source.name
            target.mkdir()
            files = sorted(source.iterdir())
            for k, f in enumerate(files):
                shutil.copy(f, target)
                time.sleep(STALL_S if k == len(files) // 2 else rng.uniform(0.02, 0.1))
        else:
            data = source.read_bytes()
            with open(inbox / source.name, "wb") as out:
                for k in range(4):
                    out.write(data[k * len(data) // 4:(k + 1) * len(data) // 4])
                    out.flush()
                    time.sleep(STALL_S if k == 1 else rng.uniform(0.05, 0.15))
        time.sleep(rng.uniform(0.0, 0.5))


def committed(outbox: Path) -> int:
    """Records in place: results and failures."""
    found = [*outbox.glob("*/result.json"), *outbox.glob("failed/*/error.txt")]
    return len(found)


def analysing(outbox: Path, pid: int) -> bool:
    """True while the watcher with this pid has a study in its partial folder."""
    return any(p.name.endswith(f"-{pid}") for p in outbox.glob(".partial/*"))


def wait_for(condition: Callable[[], bool], what: str, deadline: float, logs: list[Path]) -> None:
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(p.read_text()[-3000:] for p in logs)
            pytest.fail(f"timed out waiting for {what}; watcher logs:\n{tails}")
        time.sleep(0.005)


def test_watcher_survives_three_sigkills_without_losing_or_duplicating_a_study(tmp_path):
    start = time.monotonic()
    deadline = start + DEADLINE_S
    sources, bad = build_sources(tmp_path / "sources")
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    rng = random.Random(5)
    names = sorted(sources)
    rng.shuffle(names)
    late = [sources[n] for n in names[:15]]
    for name in names[15:]:
        copy = shutil.copytree if sources[name].is_dir() else shutil.copy
        copy(sources[name], inbox / sources[name].name)
    profile = write_profile(tmp_path / "profile.yaml", name="kill-test", model={"threads": 1},
                            watcher={"poll_seconds": 0.2, "stable_seconds": STABLE_SECONDS})
    command = [sys.executable, "-m", "edge.cli", "-v", "watch", str(inbox), "--out", str(outbox),
               "--config", str(profile)]
    logs: list[Path] = []

    def start_watcher() -> subprocess.Popen:
        logs.append(tmp_path / f"watcher-{len(logs)}.log")
        return subprocess.Popen(command, cwd=REPO, stdout=logs[-1].open("w"), stderr=subprocess.STDOUT)

    copier = threading.Thread(target=slow_copy, args=(late, inbox, rng))
    watcher = start_watcher()
    copier.start()
    for threshold in KILL_AFTER:
        wait_for(lambda: committed(outbox) >= threshold and analysing(outbox, watcher.pid),  # noqa: B023 (waited for in this pass)
                 f"{threshold} records and a study in progress", deadline, logs)
        time.sleep(rng.uniform(0.0, 0.15))
        watcher.send_signal(signal.SIGKILL)
        assert watcher.wait() == -signal.SIGKILL
        watcher = start_watcher()
    copier.join()
    wait_for(lambda: committed(outbox) >= 50, "all 50 studies", deadline, logs)
    watcher.terminate()
    watcher.wait()
    final = subprocess.run([*command, "--once"], cwd=REPO, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start

    good = {n for n in sources if n not in bad}
    assert {p.name for p in outbox.iterdir()} == good | {"failed", ".partial", ".lock", SUMMARY}, \
        "duplicate or stray records (.superseded: a study was taken before its copy had finished)"
    assert {p.name for p in outbox.iterdir() if (p / "result.json").exists()} == good
    assert {p.name for p in (outbox / "failed").iterdir()} == set(bad)
    assert final.returncode == 0 and "0 done, 0 failed, 0 waiting" in final.stdout, final.stdout + final.stderr
    assert list((outbox / ".partial").iterdir()) == [], "partial folders left behind"
    for name in good:
        result = json.loads((outbox / name / "result.json").read_text())
        source = json.loads((outbox / name / "source.json").read_text())
        assert result["label"] in CLASSES
        assert source["fingerprint"] == survey(inbox / sources[name].name).fingerprint, f"{name}: taken mid-copy"
        assert (outbox / name / "report.html").is_file()
    for name, expected in bad.items():
        assert expected in (outbox / "failed" / name / "error.txt").read_text()
    recoveries = sum("partial record(s) left by an interrupted run" in p.read_text() for p in logs)
    assert recoveries >= 1, "no kill hit a study in progress"
    print(f"\n50 studies ({len(good)} good, {len(bad)} bad, {len(late)} copied during the run), "
          f"{len(KILL_AFTER)} SIGKILLs, {recoveries} restart(s) cleaned a partial record, "
          f"{len(good)} results, {len(bad)} failed, 0 duplicates, {elapsed:.0f} s")


def test_a_kill_while_the_next_study_is_read_ahead_loses_nothing(tmp_path):
    """SIGKILL while one study is analysed and the next one is being read ahead (seen as its zip
    unpacked in the watcher's TMPDIR): the restarted watcher gives every study exactly one result,
    with heatmaps, and no record was committed for the study being read."""
    inbox, outbox, tmp = tmp_path / "inbox", tmp_path / "outbox", tmp_path / "tmp"
    tmp.mkdir()
    inbox.mkdir()
    names = [f"S{i}" for i in range(3)]
    for i, name in enumerate(names):
        write_dicom_series(make_phantom(n_slices=24, size=128, ground_glass=i % 2, seed=i), tmp_path / name,
                           transfer_syntax=RLELossless, seed=i)
        shutil.move(zip_folder(tmp_path / name), inbox)
    profile = write_profile(tmp_path / "profile.yaml", name="read-ahead-kill", model={"threads": 1},
                            watcher={"poll_seconds": 0.2, "stable_seconds": 0.5})
    command = [sys.executable, "-m", "edge.cli", "-v", "watch", str(inbox), "--out", str(outbox), "--config", str(profile)]
    log = tmp_path / "watcher.log"
    env = os.environ | {"TMPDIR": str(tmp)}
    watcher = subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    seen: dict[str, set[str]] = {}

    def reading_ahead() -> bool:
        seen["analysed"] = {p.name.rsplit("-", 1)[0] for p in outbox.glob(".partial/*")}
        seen["read"] = {p.name for p in tmp.glob("ctedge-zip-*/*")}
        return bool(seen["analysed"]) and bool(seen["read"] - seen["analysed"])

    wait_for(reading_ahead, "a study read ahead while another is analysed", time.monotonic() + 120, [log])
    watcher.send_signal(signal.SIGKILL)
    assert watcher.wait() == -signal.SIGKILL
    ahead = seen["read"] - seen["analysed"]
    assert not any((outbox / name).exists() or (outbox / "failed" / name).exists() for name in ahead)
    before = committed(outbox)
    final = subprocess.run([*command, "--once"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0 and f"{len(names) - before} done, 0 failed, 0 waiting" in final.stdout, \
        final.stdout + final.stderr
    assert {p.name for p in outbox.iterdir()} == set(names) | {".partial", ".lock", SUMMARY}, "duplicate or missing records"
    assert list((outbox / ".partial").iterdir()) == []
    for name in names:
        result = json.loads((outbox / name / "result.json").read_text())
        assert result["n_slices_read"] == 24 and result["label"] in CLASSES
        assert result["heatmaps"] and all((outbox / name / h["png"]).is_file() for h in result["heatmaps"])
    print(f"\nkilled while {sorted(seen['analysed'])} was analysed and {sorted(ahead)} read ahead; "
          f"{before} record(s) before the restart, {len(names)} results after it")
