"""The tune record stays right: one per install (the profile's data folder, never $HOME), a new one for
a new runtime, timings taken on an idle CPU with the load recorded, and doctor shows its age."""

from __future__ import annotations

import logging
import os
import pwd
from datetime import datetime, timedelta, timezone

import pytest

from edge import tune
from edge.card import load_card
from edge.doctor import check_tuned
from edge.engine import Device
from edge.profile import load_profile
from edge.tune import Choice, cache_path, cpu_key, record, resolve, tuned_choice, wait_for_idle
from tests.helpers.profiles import DEMO_BUNDLE, write_profile

ME = pwd.getpwuid(os.getuid())


@pytest.fixture
def install(tmp_path, monkeypatch):
    """A profile read from a file, with no $CTEDGE_TUNE_CACHE and a $HOME that must stay empty."""
    monkeypatch.delenv("CTEDGE_TUNE_CACHE", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    profile = load_profile(write_profile(tmp_path / "p.yaml", server={"results_dir": tmp_path / "data" / "results"}))
    yield profile
    assert list(home.iterdir()) == []


def choice(variant: str = "float32", days_ago: float = 0, load: float = 0.1) -> Choice:
    when = datetime.now(timezone.utc) - timedelta(days=days_ago)
    return Choice(variant, 1, 12.5, when.isoformat(timespec="seconds"), cpu_key(), load=load)


def test_the_record_lives_in_the_install_s_data_folder(install, tmp_path):
    path = cache_path(install)
    assert path == tmp_path / "data" / "results" / "tuned.json"
    record(load_card(DEMO_BUNDLE), choice("float32"), path)
    assert (path.stat().st_mode & 0o077) == 0
    info = Device.from_profile(install).info
    assert (info.variant, info.threads) == ("float32", 1) and "tuned on this CPU" in info.chosen


def test_a_new_runtime_is_tuned_again(install, monkeypatch):
    card = load_card(DEMO_BUNDLE)
    record(card, choice(), cache_path(install))
    assert tuned_choice(card, cache_path(install)) is not None
    monkeypatch.setattr(tune, "runtime_version", lambda: "ai-edge-litert 99.0")
    assert tuned_choice(card, cache_path(install)) is None
    assert "ai-edge-litert 99.0" in cpu_key()


def test_timing_waits_for_an_idle_cpu(monkeypatch, caplog):
    cpus = os.cpu_count() or 1
    loads = iter([cpus * 1.0, cpus * 0.8, 0.1])
    slept = []
    monkeypatch.setattr(os, "getloadavg", lambda: (next(loads), 0.0, 0.0))
    monkeypatch.setattr(tune.time, "sleep", slept.append)
    assert wait_for_idle(max_wait_s=60, poll_s=5) == 0.1
    assert slept == [5, 5]


def test_timing_on_a_busy_cpu_warns_and_records_the_load(monkeypatch, caplog):
    busy = (os.cpu_count() or 1) * 2.0
    monkeypatch.setattr(os, "getloadavg", lambda: (busy, 0.0, 0.0))
    with caplog.at_level(logging.WARNING, logger="ctedge.tune"):
        assert wait_for_idle(max_wait_s=0) == busy
    assert "the choice may be wrong" in caplog.text


def test_doctor_shows_the_choice_its_age_and_load(install):
    card = load_card(DEMO_BUNDLE)
    record(card, choice("float32", days_ago=3), cache_path(install))
    check = check_tuned(install, card)
    assert check.ok and "float32, 1 thread(s)" in check.detail and ", 3 day(s) ago, load 0.10" in check.detail
    assert str(cache_path(install)) in check.detail
    record(card, choice("float32", load=(os.cpu_count() or 1) * 3.0), cache_path(install))
    check = check_tuned(install, card)
    assert check.warning and "timed on a busy CPU" in check.detail


@pytest.mark.parametrize("load_now, retimed", [(0.1, True), (None, False)])
def test_a_choice_timed_busy_is_timed_again_at_a_start_on_an_idle_cpu(install, monkeypatch, caplog, load_now, retimed):
    """serve and watch (tune_if_missing) re-time a choice recorded under load once the CPU is idle; while
    it is still busy they keep it and warn once; predict (no tune_if_missing) never times."""
    card, cache, busy = load_card(DEMO_BUNDLE), cache_path(install), (os.cpu_count() or 1) * 3.0
    record(card, choice("float32", days_ago=1, load=busy), cache)
    monkeypatch.setattr(os, "getloadavg", lambda: (busy if load_now is None else load_now, 0.0, 0.0))
    timed = []

    def fake_tune(card, group, repeats):
        timed.append(group.shape)
        return choice("int8", load=os.getloadavg()[0]), []

    monkeypatch.setattr(tune, "tune", fake_tune)
    assert resolve(card, install.model, cache=cache)[0] == "float32" and timed == []
    with caplog.at_level(logging.WARNING, logger="ctedge.tune"):
        variant = resolve(card, install.model, tune_if_missing=True, cache=cache)[0]
    assert len(timed) == (1 if retimed else 0)
    assert variant == tuned_choice(card, cache).variant == ("int8" if retimed else "float32")
    assert tuned_choice(card, cache).load == (0.1 if retimed else busy)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if retimed:
        assert "timed on a busy CPU (load" in warnings[0] and "idle now (load 0.10): measuring" in warnings[0]
    else:
        assert len(warnings) == 1 and "busy now too" in warnings[0] and "keeping it" in warnings[0]
    record(card, choice("float32", load=0.2), cache)                   # timed idle: kept, whatever the load now
    assert resolve(card, install.model, tune_if_missing=True, cache=cache)[0] == "float32" and len(timed) <= 1
