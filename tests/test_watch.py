"""The batch watcher in-process, with the placeholder classifier: readiness (quiet ctime or marker),
once-only processing, changed studies, failures, crash recovery and the outbox lock."""

from __future__ import annotations

import csv
import json
import os
import shutil
import threading
import time
import zipfile
from pathlib import Path

import pytest

from pydicom.uid import RLELossless

from edge.cli import main
from edge.engine import Engine
from edge.errors import UserError
from edge.infer import PlaceholderClassifier
from edge.ingest.sources import study_files
from edge.phantom import make_phantom, write_dicom_series
from edge.profile import WatcherSettings
from edge.watch import (SUMMARY, is_done, is_stable, outbox_lock, process_one, recover, run_once, scan, survey,
                        watch)
from tests.helpers.paths import SAMPLES

NOW = WatcherSettings(poll_seconds=0.0, stable_seconds=0.0)


class CountingEngine(Engine):
    """The placeholder engine, counting the studies it analyses (the watcher hands it each study read
    ahead); ``fail`` makes analyse raise it."""

    def __init__(self, fail: BaseException | None = None):
        super().__init__(PlaceholderClassifier())
        self.calls: list[str] = []
        self.fail = fail

    def analyse(self, source, out_dir, on_verdict=None):
        self.calls.append(Path(source.source).name)
        if self.fail is not None:
            raise self.fail
        return super().analyse(source, out_dir)


def phantom_study(folder: Path, seed: int = 0) -> Path:
    write_dicom_series(make_phantom(n_slices=8, size=64, seed=seed), folder, seed=seed)
    return folder


class Timeline(Engine):
    """A real engine noting, with perf_counter, when each study's read and each classifier call
    start and end: ``intervals`` holds (stage, study, start, end)."""

    intervals: list[tuple[str, str, float, float]]
    current = ""

    @classmethod
    def of_bundle(cls, bundle: Path) -> Timeline:
        engine = cls.from_bundle(bundle, "float32", threads=1)
        engine.intervals = []
        predict = engine.classifier.predict

        def noted(unit):
            start = time.perf_counter()
            probabilities = predict(unit)
            engine.intervals.append(("infer", engine.current, start, time.perf_counter()))
            return probabilities

        engine.classifier.predict = noted
        return engine

    def read(self, source):
        start = time.perf_counter()
        study = super().read(source)
        self.intervals.append(("read", Path(source).name, start, time.perf_counter()))
        return study

    def analyse(self, source, out_dir, on_verdict=None):
        self.current = Path(source.source).name
        return super().analyse(source, out_dir)


def zipped(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f.name)
    return archive


@pytest.fixture
def box(tmp_path) -> tuple[Path, Path]:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    return inbox, outbox


def records(outbox: Path) -> list[str]:
    """Committed records: study folders with a result, and failed/<study> folders."""
    found = [p.name for p in outbox.iterdir() if (p / "result.json").is_file()]
    failed = outbox / "failed"
    return sorted(found + [f"failed/{p.name}" for p in failed.iterdir()] if failed.is_dir() else found)


def test_a_study_is_ready_once_nothing_in_it_changed_for_stable_seconds(box):
    inbox, _ = box
    study = phantom_study(inbox / "P1")
    entry = survey(study)
    settings = WatcherSettings(stable_seconds=10.0)
    assert not is_stable(entry, settings, now=entry.newest_ctime + 9.9)
    assert is_stable(entry, settings, now=entry.newest_ctime + 10.0)


def test_backdated_mtimes_do_not_make_a_copy_look_finished(box):
    """cp -p and rsync keep old mtimes; readiness uses ctime, which they cannot set."""
    inbox, _ = box
    study = phantom_study(inbox / "P1")
    old = time.time() - 86400
    for f in study.iterdir():
        os.utime(f, (old, old))
    assert not is_stable(survey(study), WatcherSettings(stable_seconds=60.0))


def test_a_study_still_being_copied_waits_and_is_taken_later(box):
    inbox, outbox = box
    phantom_study(inbox / "P1")
    engine = CountingEngine()
    summary = run_once(engine, inbox, outbox, WatcherSettings(stable_seconds=3600.0))
    assert (summary.done, summary.waiting, engine.calls) == (0, 1, [])
    assert run_once(engine, inbox, outbox, NOW).done == 1
    assert records(outbox) == ["P1"]


def test_marker_file_decides_for_folders_and_sibling_markers_for_zips(box, tmp_path):
    inbox, outbox = box
    settings = WatcherSettings(stable_seconds=0.0, marker_file="READY")
    phantom_study(inbox / "P1")
    zipped(phantom_study(tmp_path / "src", seed=1), inbox / "P2.zip")
    engine = CountingEngine()
    assert run_once(engine, inbox, outbox, settings).waiting == 2
    (inbox / "P1" / "READY").touch()
    (inbox / "P2.zip.READY").touch()
    summary = run_once(engine, inbox, outbox, settings)
    assert (summary.done, summary.failed) == (2, 0), "the sibling marker must not be taken as a study"
    assert records(outbox) == ["P1", "P2"]
    (inbox / "P1" / "READY").touch()  # touching the marker again does not change the study
    assert run_once(engine, inbox, outbox, settings).done == 0


def test_each_study_is_processed_once_and_reprocessing_is_a_no_op(box, tmp_path):
    inbox, outbox = box
    phantom_study(inbox / "P1")
    zipped(phantom_study(tmp_path / "src", seed=1), inbox / "P2.zip")
    shutil.copytree(SAMPLES / "CAP_cap002", inbox / "CAP_cap002")
    engine = CountingEngine()
    assert run_once(engine, inbox, outbox, NOW).done == 3
    result = outbox / "P2" / "result.json"
    stamp = result.stat().st_mtime_ns
    assert json.loads(result.read_text())["n_slices_read"] == 8
    summary = watch(engine, inbox, outbox, NOW, once=True)
    assert (summary.done, summary.failed, summary.waiting) == (0, 0, 0)
    assert sorted(engine.calls) == ["CAP_cap002", "P1", "P2.zip"]
    assert result.stat().st_mtime_ns == stamp
    assert records(outbox) == ["CAP_cap002", "P1", "P2"]


def test_the_inbox_is_left_untouched(box):
    inbox, outbox = box
    study = phantom_study(inbox / "P1")
    before = survey(study).fingerprint
    run_once(CountingEngine(), inbox, outbox, NOW)
    assert survey(study).fingerprint == before and len(list(study.iterdir())) == 8


def test_a_changed_study_is_processed_again_and_the_old_result_kept(box):
    inbox, outbox = box
    study = phantom_study(inbox / "P1")
    engine = CountingEngine()
    run_once(engine, inbox, outbox, NOW)
    first = json.loads((outbox / "P1" / "source.json").read_text())["fingerprint"]
    (study / "IM0001.dcm").unlink()
    assert not is_done(outbox, survey(study))
    assert run_once(engine, inbox, outbox, NOW).done == 1
    assert engine.calls == ["P1", "P1"]
    assert json.loads((outbox / "P1" / "source.json").read_text())["fingerprint"] == survey(study).fingerprint
    assert json.loads((outbox / "P1" / "result.json").read_text())["n_slices_read"] == 7
    superseded = list((outbox / ".superseded").iterdir())
    assert len(superseded) == 1 and json.loads((superseded[0] / "source.json").read_text())["fingerprint"] == first


def test_bad_studies_go_to_failed_with_a_message_naming_the_file(box, tmp_path):
    inbox, outbox = box
    study = phantom_study(inbox / "Truncated")
    for f in study.iterdir():
        f.write_bytes(f.read_bytes()[:300])
    with zipfile.ZipFile(inbox / "Evil.zip", "w") as zf:
        zf.writestr("../escape.dcm", b"x")
    (inbox / "notes.txt").write_text("not a study")
    phantom_study(inbox / "Good")
    summary = run_once(CountingEngine(), inbox, outbox, NOW)
    assert (summary.done, summary.failed) == (1, 3)
    assert records(outbox) == ["Good", "failed/Evil", "failed/Truncated", "failed/notes.txt"]
    assert "IM0001.dcm" in (outbox / "failed/Truncated/error.txt").read_text()
    assert "Evil.zip: member '../escape.dcm' points outside" in (outbox / "failed/Evil/error.txt").read_text()
    assert "notes.txt: not a DICOM file" in (outbox / "failed/notes.txt/error.txt").read_text()
    assert not (outbox / "failed/Good").exists() and not (outbox / "Truncated").exists()


def test_an_unexpected_exception_fails_that_study_and_the_watcher_goes_on(box):
    inbox, outbox = box
    phantom_study(inbox / "P1")
    phantom_study(inbox / "P2", seed=1)
    summary = run_once(CountingEngine(fail=RuntimeError("interpreter exploded")), inbox, outbox, NOW)
    assert (summary.done, summary.failed) == (0, 2)
    error = (outbox / "failed/P1/error.txt").read_text()
    assert error.startswith("internal error: RuntimeError: interpreter exploded") and "Traceback" in error
    assert run_once(CountingEngine(), inbox, outbox, NOW).done == 0, "a failure is a record: not retried"


def test_a_failed_study_completed_later_replaces_its_failure(box, tmp_path):
    inbox, outbox = box
    source = phantom_study(tmp_path / "src")
    study = inbox / "P1"
    study.mkdir()
    first, *rest = sorted(source.iterdir())
    shutil.copy(first, study)
    assert run_once(CountingEngine(), inbox, outbox, NOW).failed == 1, "a single slice is a bad study"
    for f in rest:
        shutil.copy(f, study)
    assert run_once(CountingEngine(), inbox, outbox, NOW).done == 1
    assert records(outbox) == ["P1"], "the stale failure must not stay beside the new result"
    assert [p.name.endswith("-failed") for p in (outbox / ".superseded").iterdir()] == [True]


def test_an_interrupted_analysis_leaves_nothing_and_is_taken_again(box):
    """Ctrl-C or SIGTERM (``edge.cli`` turns it into KeyboardInterrupt) removes the partial record; a
    kill -9 leaves it, and start-up removes it (test_recover_removes_every_leftover)."""
    inbox, outbox = box
    phantom_study(inbox / "P1")
    with pytest.raises(KeyboardInterrupt):
        run_once(CountingEngine(fail=KeyboardInterrupt()), inbox, outbox, NOW)
    assert list((outbox / ".partial").iterdir()) == []
    assert records(outbox) == []
    summary = watch(CountingEngine(), inbox, outbox, NOW, once=True)
    assert summary.done == 1 and records(outbox) == ["P1"]
    assert list((outbox / ".partial").iterdir()) == []


def test_recover_removes_every_leftover(box):
    _, outbox = box
    for name in ("P1-123", "P2-456"):
        (outbox / ".partial" / name / "heatmaps").mkdir(parents=True)
    assert recover(outbox) == 2 and list((outbox / ".partial").iterdir()) == []


def test_a_study_that_changes_during_analysis_is_not_committed(box):
    inbox, outbox = box
    study = phantom_study(inbox / "P1")

    class Appending(CountingEngine):
        def analyse(self, source, out_dir, on_verdict=None):
            (study / "late.dcm").write_bytes((study / "IM0001.dcm").read_bytes())
            return super().analyse(source, out_dir)

    entry = scan(inbox).entries[0]
    assert process_one(Appending(), outbox, entry) == "changed"
    assert records(outbox) == [] and list((outbox / ".partial").iterdir()) == []


def test_names_claimed_twice_and_the_reserved_name_are_skipped(box, tmp_path):
    inbox, outbox = box
    phantom_study(inbox / "P1")
    zipped(phantom_study(tmp_path / "src"), inbox / "P1.zip")
    phantom_study(inbox / "failed")
    phantom_study(inbox / "P3")
    (inbox / ".DS_Store").write_text("clutter")
    found = scan(inbox)
    assert [e.name for e in found.entries] == ["P3"]
    assert set(found.skipped) == {"P1", "failed"}
    assert run_once(CountingEngine(), inbox, outbox, NOW).done == 1 and records(outbox) == ["P3"]


def test_one_watcher_per_outbox(box):
    inbox, outbox = box
    outbox.mkdir()
    with outbox_lock(outbox), pytest.raises(UserError, match="another ctedge watch"):
        watch(CountingEngine(), inbox, outbox, NOW, once=True)


def test_cli_reports_a_missing_inbox(tmp_path, capsys):
    assert main(["watch", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), "--once"]) == 2
    assert "nowhere: the inbox is not a folder" in capsys.readouterr().err


def test_links_leaving_the_inbox_are_not_followed(box, tmp_path):
    inbox, outbox = box
    outside = phantom_study(tmp_path / "outside" / "Other")
    (inbox / "Linked").symlink_to(outside, target_is_directory=True)
    mixed = phantom_study(inbox / "Mixed", seed=1)
    (mixed / "IM9999.dcm").symlink_to(outside / "IM0001.dcm")
    inner = phantom_study(inbox / "Inner", seed=2)
    (inner / "copy.dcm").symlink_to(inner / "IM0001.dcm")            # stays inside the inbox: followed
    engine = CountingEngine()
    summary = run_once(engine, inbox, outbox, NOW)
    assert (summary.done, summary.failed) == (1, 2) and engine.calls == ["Inner"]
    assert records(outbox) == ["Inner", "failed/Linked", "failed/Mixed"]
    assert "Linked: a symbolic link to" in (outbox / "failed/Linked/error.txt").read_text()
    assert "IM9999.dcm: a symbolic link to" in (outbox / "failed/Mixed/error.txt").read_text()
    assert "outside the inbox" in (outbox / "failed/Mixed/error.txt").read_text()
    assert not (outbox / "Linked").exists() and not (outbox / "Mixed").exists()


def test_a_link_to_the_root_is_not_walked(box, monkeypatch):
    inbox, _ = box
    (inbox / "Root").symlink_to("/", target_is_directory=True)
    monkeypatch.setattr(Path, "rglob", lambda self, pattern: pytest.fail(f"walked {self}"))
    entry = survey(inbox / "Root")
    assert entry.n_files == 0


def test_the_outbox_is_owner_only_whatever_the_umask(box):
    inbox, outbox = box
    phantom_study(inbox / "Good")
    (inbox / "Bad").mkdir()
    (inbox / "Bad" / "notes.txt").write_text("no scan")
    old = os.umask(0o022)
    try:
        outbox.mkdir(mode=0o755)
        summary = watch(CountingEngine(), inbox, outbox, NOW, once=True)
    finally:
        os.umask(old)
    assert (summary.done, summary.failed) == (1, 1)
    found = {f"{'dir' if p.is_dir() else 'file'} {p.stat().st_mode & 0o777:o}" for p in [outbox, *outbox.rglob("*")]}
    assert found == {"dir 700", "file 600"}


def test_log_lines_escape_names_from_the_inbox(box, caplog):
    inbox, outbox = box
    (inbox / "Evil\nFAKE: done").mkdir()
    (inbox / "Evil\nFAKE: done" / "notes.txt").write_text("no scan")
    caplog.set_level("INFO", logger="ctedge.watch")
    run_once(CountingEngine(), inbox, outbox, NOW)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "Evil\\x0aFAKE: done: failed" in text and "\nFAKE" not in text


def test_the_next_study_is_read_while_this_one_is_classified(box, constant_bundle):
    """Three compressed (RLE) phantom studies, decoded in the worker processes, through the
    known-answer bundle: each study is read (decoded) after the one before it was read and before
    that one's classification ended, and every result is its own study's, with the known answer."""
    from tests.helpers.bundles import KNOWN_LABEL, KNOWN_PROBABILITIES

    inbox, outbox = box
    slices = {"A": 16, "B": 20, "C": 24}
    for seed, (name, n) in enumerate(slices.items()):
        write_dicom_series(make_phantom(n_slices=n, size=128, seed=seed), inbox / name, transfer_syntax=RLELossless,
                           seed=seed)
    engine = Timeline.of_bundle(constant_bundle)
    assert run_once(engine, inbox, outbox, NOW).done == 3
    for name, n in slices.items():
        result = json.loads((outbox / name / "result.json").read_text())
        assert (result["label"], result["n_slices_read"], result["input"]["n_files"]) == (KNOWN_LABEL, n, n)
        assert [result["probabilities"][c] for c in result["classes"]] == pytest.approx(KNOWN_PROBABILITIES, abs=1e-5)
    reads = {study: (start, end) for stage, study, start, end in engine.intervals if stage == "read"}
    infer_end = {study: end for stage, study, _, end in engine.intervals if stage == "infer"}
    assert list(reads) == ["A", "B", "C"]
    for before, after in (("A", "B"), ("B", "C")):
        assert reads[before][1] <= reads[after][0] < infer_end[before], \
            f"{after} was not read while {before} was analysed: {engine.intervals}"


def test_watch_polls_until_stopped_and_a_failed_pass_does_not_end_it(box, caplog):
    """The one watch loop, run by ``ctedge watch`` and by the DICOM service of ``ctedge serve``: it
    polls until its stop signal is set; a pass that raises (here: the inbox is gone) is logged and the
    next pass runs, as the service's copy of the loop did."""
    inbox, outbox = box
    aside, passes, stop = inbox.with_name("aside"), [], threading.Event()

    def after_pass():
        passes.append(len(passes))
        if len(passes) == 1:
            inbox.rename(aside)
        elif len(passes) == 2:
            aside.rename(inbox)
            phantom_study(inbox / "P1")
        else:
            stop.set()

    summary = watch(CountingEngine(), inbox, outbox, NOW, after_pass=after_pass, stop=stop)
    assert len(passes) == 3 and summary.done == 1 and records(outbox) == ["P1"]
    assert "pass failed" in caplog.text


def test_watch_once_lets_a_failed_pass_raise(box, monkeypatch):
    inbox, outbox = box

    def broken(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr("edge.watch.run_once", broken)
    with pytest.raises(OSError, match="disk gone"):
        watch(CountingEngine(), inbox, outbox, NOW, once=True)


def test_folder_links_inside_the_inbox_are_followed_and_a_link_loop_ends(box):
    inbox, outbox = box
    phantom_study(inbox / ".archive" / "P1")                                  # hidden: not a study itself
    (inbox / "Series").mkdir()
    (inbox / "Series" / "ct").symlink_to("../.archive/P1", target_is_directory=True)
    (inbox / "Series" / "loop").symlink_to("..", target_is_directory=True)     # a loop back to the study
    engine = CountingEngine()
    summary = run_once(engine, inbox, outbox, NOW)
    assert (summary.done, summary.failed) == (1, 0) and engine.calls == ["Series"]
    with study_files(inbox / "Series") as files:
        assert len(files) == len(list((inbox / ".archive" / "P1").iterdir()))


def test_each_study_gets_a_log_line_with_its_verdict_and_a_summary_row(box, caplog):
    inbox, outbox = box
    phantom_study(inbox / "P1")
    (inbox / "bad").mkdir()
    (inbox / "bad" / "notes.txt").write_text("no scan")
    caplog.set_level("INFO", logger="ctedge.watch")
    run_once(CountingEngine(), inbox, outbox, NOW)
    label = json.loads((outbox / "P1" / "result.json").read_text())["label"]
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith(f"P1: {label} (placeholder") and " s, result in " in line for line in lines), lines
    assert any(line.startswith("bad: failed in ") for line in lines), lines
    with open(outbox / SUMMARY, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["study"], r["status"], r["verdict"]) for r in rows] == [("P1", "done", label), ("bad", "failed", "")]
    assert rows[0]["model"].startswith("placeholder") and float(rows[0]["seconds"]) >= 0
    assert oct((outbox / SUMMARY).stat().st_mode & 0o777) == "0o600"


def test_once_waits_up_to_stable_seconds_for_a_copy_in_progress(box):
    inbox, outbox = box
    phantom_study(inbox / "P1")   # just copied: not stable yet
    start = time.monotonic()
    summary = watch(CountingEngine(), inbox, outbox, WatcherSettings(poll_seconds=5, stable_seconds=1.5), once=True)
    assert (summary.done, summary.waiting) == (1, 0)
    assert time.monotonic() - start < 10
