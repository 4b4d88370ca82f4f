"""Retention: patient data leaves the box once its result is recorded (and sent), with an audit line per
removal that never names the study; the services and ``ctedge retention`` apply it."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from edge.cli import main
from edge.errors import UserError
from edge.profile import RetentionSettings, load_profile
from edge.retention import WatchRetention, clean_results, pseudonym
from edge.watch import FAILED, SOURCE, SUMMARY, add_summary_row, open_summary, survey
from tests.helpers.profiles import write_profile
from tests.helpers.server import phantom_study

DAY = 86400.0
NOW = time.time()
SETTINGS = RetentionSettings(inbox_days=1, outbox_days=14, results_days=14)


def entry(inbox: Path, name: str) -> Path:
    folder = inbox / name
    folder.mkdir(parents=True)
    (folder / "IM0001.dcm").write_bytes(b"pixels of " + name.encode())
    return folder


def record(outbox: Path, inbox_entry: Path, days_ago: float, status: str = "done") -> Path:
    """A committed watcher record of ``inbox_entry`` finished ``days_ago``."""
    folder = (outbox / FAILED if status == "failed" else outbox) / inbox_entry.name
    folder.mkdir(parents=True)
    finished = datetime.fromtimestamp(NOW - days_ago * DAY, timezone.utc).isoformat(timespec="seconds")
    (folder / SOURCE).write_text(json.dumps({"study": inbox_entry.name, "inbox_entry": inbox_entry.name, "status": status,
                                             "fingerprint": survey(inbox_entry).fingerprint, "finished": finished}))
    return folder


def test_inbox_entries_leave_once_recorded_and_sent_for_inbox_days(tmp_path, caplog):
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    old = entry(inbox, "Smith_John")                  # done 2 days ago: removed
    record(outbox, old, 2)
    recent = entry(inbox, "recent")                   # done 12 hours ago: kept
    record(outbox, recent, 0.5)
    failed = entry(inbox, "failed-one")               # failed 2 days ago: kept for outbox_days
    record(outbox, failed, 2, "failed")
    unsent = entry(inbox, "unsent")                   # its SR still waits for PACS: kept
    record(outbox, unsent, 2)
    changed = entry(inbox, "changed")                 # recorded, then new files arrived: kept
    record(outbox, changed, 2)
    (changed / "IM0002.dcm").write_bytes(b"more")
    new = entry(inbox, "new")                         # not analysed yet: kept
    with caplog.at_level(logging.INFO, logger="ctedge.retention"):
        removed = WatchRetention(SETTINGS, inbox, outbox, unsent=lambda: {"unsent"}).run(now=NOW)
    assert [r.study for r in removed] == [pseudonym("Smith_John")]
    assert not old.exists() and all(p.exists() for p in (recent, failed, unsent, changed, new))
    assert (outbox / "Smith_John" / SOURCE).is_file()  # the record stays for outbox_days
    assert f"removed inbox entry {pseudonym('Smith_John')} (2.0 days, retention.inbox_days)" in caplog.text
    assert "Smith" not in caplog.text


def test_records_leave_after_outbox_days_once_their_entry_is_gone(tmp_path):
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    gone = record(outbox, entry(inbox, "gone"), 20)
    failed_gone = record(outbox, entry(inbox, "failed-gone"), 20, "failed")
    young = record(outbox, entry(inbox, "young"), 3)
    for path in (inbox / "gone", inbox / "failed-gone", inbox / "young"):
        for f in path.iterdir():
            f.unlink()
        path.rmdir()
    still = record(outbox, entry(inbox, "still-in-inbox"), 20, "failed")  # the watcher would redo it
    removed = WatchRetention(SETTINGS, inbox, outbox).run(now=NOW)
    assert sorted(r.what for r in removed) == ["failure record", "failure record", "inbox entry", "result record"]
    assert not gone.exists() and not failed_gone.exists() and young.exists()
    assert not (inbox / "still-in-inbox").exists() and not still.exists()  # failed 20 days ago: entry, then record


def test_finished_server_studies_leave_after_results_days(tmp_path):
    def study(name: str, status: str, days_ago: float) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        finished = datetime.fromtimestamp(NOW - days_ago * DAY, timezone.utc).isoformat(timespec="seconds")
        (folder / "status.json").write_text(json.dumps({"status": status, "finished": finished, "updated": finished}))
        return folder

    old, young = study("20250101-000000-0a1b2c3d", "done", 15), study("20250102-000000-0a1b2c3d", "failed", 13)
    running = study("20250103-000000-0a1b2c3d", "running", 30)
    (tmp_path / "dicom").mkdir()
    assert [r.what for r in clean_results(tmp_path, SETTINGS, now=NOW)] == ["server study"]
    assert not old.exists() and young.exists() and running.exists() and (tmp_path / "dicom").exists()


def test_retention_days_are_checked(tmp_path):
    path = write_profile(tmp_path / "p.yaml", retention={"inbox_days": -1})
    with pytest.raises(UserError, match="retention.inbox_days must be positive"):
        load_profile(path)
    assert load_profile(write_profile(tmp_path / "q.yaml")).retention == RetentionSettings()


def test_the_command_lists_then_removes(tmp_path, capsys):
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    record(outbox, entry(inbox, "P1"), 3)
    profile = write_profile(tmp_path / "p.yaml", server={"results_dir": tmp_path / "results"})
    args = ["retention", "--config", str(profile), "--inbox", str(inbox), "--out", str(outbox)]
    assert main([*args, "--dry-run"]) == 0
    assert "would remove 1 item(s)" in capsys.readouterr().out and (inbox / "P1").exists()
    assert main(args) == 0
    assert "removed 1 item(s)" in capsys.readouterr().out and not (inbox / "P1").exists()
    assert main(["retention", "--config", str(profile), "--inbox", str(inbox)]) == 2


@pytest.mark.slow
def test_the_watcher_applies_retention_after_its_pass(tmp_path):
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    phantom_study(inbox / "P1", n_slices=12, size=64)
    profile = write_profile(tmp_path / "p.yaml", watcher={"stable_seconds": 0}, retention={"inbox_days": 0})
    assert main(["watch", str(inbox), "--out", str(outbox), "--config", str(profile), "--once"]) == 0
    assert (outbox / "P1" / "result.json").is_file() and not (inbox / "P1").exists()


def test_summary_rows_leave_after_outbox_days(tmp_path, caplog):
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    old = datetime.fromtimestamp(NOW - 20 * DAY, timezone.utc).isoformat(timespec="seconds")
    young = datetime.fromtimestamp(NOW - 3 * DAY, timezone.utc).isoformat(timespec="seconds")
    summary = outbox / SUMMARY
    summary.write_text("finished,study,status,verdict,model,seconds\n"
                       f"{old},Smith_John,done,covid,demo 0.2.0,4.2\n"
                       f"{young},Doe_Jane,done,healthy,demo 0.2.0,3.9\n"
                       "unreadable,Kept_Anyway,failed,,,0.1\n")
    summary.chmod(0o644)
    retention = WatchRetention(SETTINGS, tmp_path / "inbox", outbox)
    assert [r.what for r in retention.run(now=NOW, dry_run=True)] == ["summary row"]
    assert "Smith_John" in summary.read_text()
    with caplog.at_level(logging.INFO, logger="ctedge.retention"):
        removed = retention.run(now=NOW)
    assert [(r.what, r.study) for r in removed] == [("summary row", pseudonym("Smith_John"))]
    assert summary.read_text().splitlines() == ["finished,study,status,verdict,model,seconds",
                                                f"{young},Doe_Jane,done,healthy,demo 0.2.0,3.9",
                                                "unreadable,Kept_Anyway,failed,,,0.1"]
    assert (summary.stat().st_mode & 0o777) == 0o600
    assert f"removed summary row {pseudonym('Smith_John')} (20.0 days, retention.outbox_days)" in caplog.text
    assert "Smith" not in caplog.text and [p.name for p in outbox.iterdir()] == [SUMMARY]
    add_summary_row(outbox, "P3", "done", "covid", "demo 0.2.0", 1.0)      # the watcher appends after the rewrite
    assert summary.read_text().splitlines()[-1].split(",")[1:] == ["P3", "done", "covid", "demo 0.2.0", "1.0"]


def test_a_row_appended_during_the_rewrite_goes_to_the_new_file(tmp_path):
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    add_summary_row(outbox, "P1", "done", "covid", "demo 0.2.0", 1.0)
    summary = outbox / SUMMARY
    with open_summary(outbox):                                   # what retention holds while it rewrites
        writer = threading.Thread(target=add_summary_row, args=(outbox, "P2", "done", "healthy", "demo 0.2.0", 2.0))
        writer.start()
        writer.join(0.5)
        assert writer.is_alive()                                 # the watcher waits for the lock
        new = outbox / ".rewritten"
        new.write_text("finished,study,status,verdict,model,seconds\n")
        os.replace(new, summary)
    writer.join(30)
    assert [row.split(",")[1] for row in summary.read_text().splitlines()] == ["study", "P2"]
