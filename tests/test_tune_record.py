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
from edge.tune import Choice, cache_path, cpu_key, record, tuned_choice, wait_for_idle
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
    return Choice(variant, 1, 12.5, when.isoformat(timespec="seconds"), cpu_key(), load)


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
