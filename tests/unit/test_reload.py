"""Tests of live reloads: the directory watcher, the reloader and systemd notifications."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from modcoord.actors.clock import MockClock
from modcoord.actors.errors import ConfigError
from modcoord.supervisor.daemon.config import ConfigSet, load_config_dir
from modcoord.supervisor.daemon.reload import ConfigWatcher, Reloader, is_config_file
from modcoord.supervisor.daemon.systemd import sd_notify

WAIT = 5.0


@pytest.fixture
def log_records() -> Iterator[list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    handler_id = logger.add(
        lambda msg: records.append({"level": msg.record["level"].name,
                                    "message": msg.record["message"],
                                    **msg.record["extra"]}),
        level="DEBUG", format="{message}",
    )
    yield records
    logger.remove(handler_id)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1))


# --------------------------------------------------------------------------- coalescing


def test_is_config_file() -> None:
    assert is_config_file("/etc/modcoord/hybrid.yaml")
    assert is_config_file("daemon.yaml")
    for other in ("notes.txt", "hybrid.yaml.tmp", "hybrid.yaml~", ".hybrid.yaml.swp",
                  ".#hybrid.yaml", "4913", "/x/hybrid.yml.bak"):
        assert not is_config_file(other), other


def test_a_burst_of_events_gives_one_call(clock: MockClock, tmp_path: Path) -> None:
    # Times are multiples of 1/16 s, exact in binary floating point.
    calls: list[float] = []
    watcher = ConfigWatcher(tmp_path, lambda: calls.append(clock.monotonic()),
                            debounce_s=0.25, clock=clock)
    start = clock.monotonic()
    for _ in range(10):  # 10 events 62.5 ms apart: the last at start + 0.5625
        assert watcher.notify(str(tmp_path / "hybrid.yaml"))
        clock.advance(0.0625)
    assert calls == []  # the first deadline (start + 0.25) has passed, but events went on
    assert watcher.statistics().pending
    clock.advance(0.125)   # 0.1875 s after the last event: still within the quiet period
    assert calls == []
    clock.advance(0.0625)  # 0.25 s after the last event
    assert calls == [start + 0.5625 + 0.25]
    clock.advance(5.0)
    assert len(calls) == 1
    assert clock.pending_timers() == 0

    # An event after the quiet period starts a new burst: another call.
    watcher.notify(str(tmp_path / "daemon.yaml"))
    clock.advance(0.25)
    assert len(calls) == 2
    stats = watcher.statistics()
    assert (stats.events, stats.relevant, stats.changes, stats.pending) == (11, 11, 2, False)


def test_events_on_other_files_are_ignored(clock: MockClock, tmp_path: Path) -> None:
    calls: list[int] = []
    watcher = ConfigWatcher(tmp_path, lambda: calls.append(1), debounce_s=0.2, clock=clock)
    for name in ("notes.txt", "hybrid.yaml.tmp", ".#hybrid.yaml", "4913"):
        assert not watcher._on_event(str(tmp_path / name))
    assert clock.pending_timers() == 0
    clock.advance(10.0)
    assert calls == []
    stats = watcher.statistics()
    assert (stats.events, stats.relevant, stats.changes) == (4, 0, 0)


def test_a_failing_callback_is_counted_and_watching_goes_on(clock: MockClock,
                                                           tmp_path: Path) -> None:
    calls: list[int] = []

    def on_change() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first one fails")

    watcher = ConfigWatcher(tmp_path, on_change, debounce_s=0.125, clock=clock)
    watcher.notify("manual.yaml")
    clock.advance(0.125)
    watcher.notify("manual.yaml")
    clock.advance(0.125)
    assert len(calls) == 2
    assert watcher.statistics().failures == 1


def test_stop_drops_a_pending_change(clock: MockClock, tmp_path: Path) -> None:
    calls: list[int] = []
    watcher = ConfigWatcher(tmp_path, lambda: calls.append(1), debounce_s=0.25, clock=clock)
    watcher.notify("hybrid.yaml")
    watcher.stop()
    clock.advance(1.0)
    assert calls == []
    assert not watcher.notify("hybrid.yaml")
    assert not watcher.statistics().pending


# --------------------------------------------------------------------------- real watchdog


class _Changes:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        self.event.set()


@pytest.mark.parametrize("how", ["atomic_rename", "in_place", "delete", "create"])
def test_real_filesystem_changes_trigger_on_change(config_dir: Path, how: str) -> None:
    changes = _Changes()
    watcher = ConfigWatcher(config_dir, changes, debounce_s=0.05)
    watcher.start()
    try:
        assert watcher.statistics().running
        (config_dir / "notes.txt").write_text("not a config")
        target = config_dir / "hybrid.yaml"
        if how == "atomic_rename":
            tmp = config_dir / "hybrid.yaml.tmp"
            tmp.write_text(target.read_text().replace("delay_ms: 300", "delay_ms: 250", 1))
            os.replace(tmp, target)
        elif how == "in_place":
            with target.open("a") as fh:
                fh.write("# edited in place\n")
        elif how == "delete":
            (config_dir / "daemon.yaml").unlink()
        else:
            (config_dir / "extra.yaml").write_text("{}\n")
        assert changes.event.wait(WAIT), f"no on_change after {how}"
        stats = watcher.statistics()
        assert stats.changes >= 1
        assert stats.events > stats.relevant >= 1  # notes.txt was seen and ignored
    finally:
        watcher.stop()
    assert not watcher.statistics().running


def test_start_on_a_missing_directory_fails(tmp_path: Path) -> None:
    watcher = ConfigWatcher(tmp_path / "missing", lambda: None)
    with pytest.raises(FileNotFoundError):
        watcher.start()
    watcher.stop()


# --------------------------------------------------------------------------- reloader


class _Applied:
    def __init__(self) -> None:
        self.configs: list[ConfigSet] = []

    def __call__(self, config: ConfigSet) -> None:
        self.configs.append(config)


def test_reload_applies_skips_rejects_and_recovers(
        config_dir: Path, log_records: list[dict[str, Any]]) -> None:
    applied = _Applied()
    notes: list[str] = []
    reloader = Reloader(lambda: load_config_dir(config_dir), applied, notify=notes.append)

    first = reloader.reload("start")
    assert (first.ok, first.changed, first.error) == (True, True, None)
    assert first.digest == load_config_dir(config_dir).digest
    assert len(applied.configs) == 1

    same = reloader.reload("SIGHUP")
    assert (same.ok, same.changed, same.digest) == (True, False, first.digest)
    assert len(applied.configs) == 1  # unchanged digest: not applied again

    edit(config_dir / "hybrid.yaml", "delay_ms: 300", "delay_ms: 120")
    edited = reloader.reload("file change")
    assert edited.changed and edited.digest != first.digest
    assert applied.configs[-1].mode("HYBRID").debounce.delay_ms == 120
    good_digest = edited.digest

    broken_cases = [
        ("hybrid.yaml", "delay_ms: 120", "delay_mss: 120", "debounce.delay_mss",
         "unknown key"),
        ("manual.yaml", "enabled: true\n  ttl_ms", 'enabled: "yes"\n  ttl_ms',
         "cache.enabled", "bool"),
        ("fully_auto.yaml", "debounce:\n", "debounce: [unclosed\n", "", "invalid YAML"),
    ]
    for filename, old, new, key, problem in broken_cases:
        path = config_dir / filename
        saved = path.read_text()
        edit(path, old, new)
        result = reloader.reload("file change")
        assert not result.ok and not result.changed
        assert result.digest == good_digest  # the running config stays
        assert result.error is not None
        assert filename in result.error and key in result.error and problem in result.error
        assert reloader.last_error == result.error
        assert len(applied.configs) == 2  # apply NOT called
        rejected = [r for r in log_records if r["message"] == "config reload rejected"]
        assert rejected[-1]["level"] == "ERROR"
        assert rejected[-1]["actor"] == "reloader"
        assert rejected[-1]["file"].endswith(filename)
        assert rejected[-1]["key"] == key
        path.write_text(saved)

    # The repaired directory equals what runs: skipped, and the error is cleared.
    repaired = reloader.reload("file change")
    assert (repaired.ok, repaired.changed, repaired.error) == (True, False, None)
    assert reloader.last_error is None

    edit(config_dir / "daemon.yaml", "level: INFO", "level: DEBUG")
    assert reloader.reload("command").changed
    assert applied.configs[-1].daemon.logs.level == "DEBUG"

    stats = reloader.statistics()
    assert (stats.reloads_ok, stats.rejected, stats.skipped) == (3, 3, 2)
    assert stats.last_error is None and stats.last_reason == "command"
    assert stats.digest == reloader.digest == applied.configs[-1].digest
    assert sum(r["message"] == "config reloaded" and r["level"] == "INFO"
               for r in log_records) == 3

    # Every reload is bracketed for systemd.
    assert len(notes) == 2 * 8
    for before, after in zip(notes[::2], notes[1::2], strict=True):
        head, usec = before.split("\n")
        assert head == "RELOADING=1"
        assert usec.startswith("MONOTONIC_USEC=") and int(usec.split("=")[1]) > 0
        assert after == "READY=1"


def test_a_known_digest_skips_the_first_reload(config_dir: Path) -> None:
    applied = _Applied()
    running = load_config_dir(config_dir)
    reloader = Reloader(lambda: load_config_dir(config_dir), applied,
                        notify=lambda s: None, digest=running.digest)
    result = reloader.reload("SIGHUP")
    assert (result.ok, result.changed) == (True, False)
    assert applied.configs == []

    primed = Reloader(lambda: load_config_dir(config_dir), applied, notify=lambda s: None)
    primed.prime(running)
    assert primed.digest == running.digest
    assert not primed.reload("SIGHUP").changed
    edit(config_dir / "manual.yaml", "max_size: 50", "max_size: 60")
    assert primed.reload("SIGHUP").changed
    assert applied.configs[-1].mode("MANUAL").batch.max_size == 60
    assert primed.statistics().skipped == 1


def test_a_failing_apply_is_rejected_and_retried(config_dir: Path) -> None:
    attempts: list[ConfigSet] = []

    def apply(config: ConfigSet) -> None:
        attempts.append(config)
        if len(attempts) == 1:
            raise RuntimeError("actor unreachable")

    reloader = Reloader(lambda: load_config_dir(config_dir), apply, notify=lambda s: None)
    failed = reloader.reload("SIGHUP")
    assert not failed.ok and failed.digest is None
    assert failed.error is not None and "apply failed: RuntimeError: actor unreachable" in (
        failed.error)
    retried = reloader.reload("SIGHUP")  # same digest, but never applied: applied now
    assert retried.ok and retried.changed
    assert len(attempts) == 2
    assert reloader.last_error is None


def test_apply_raising_config_error_names_it(config_dir: Path) -> None:
    def apply(config: ConfigSet) -> None:
        raise ConfigError("daemon.yaml", "socket", "cannot change while running")

    reloader = Reloader(lambda: load_config_dir(config_dir), apply, notify=lambda s: None)
    result = reloader.reload("command")
    assert result.error == "daemon.yaml: socket: cannot change while running"


def test_concurrent_reloads_do_not_overlap(config_dir: Path) -> None:
    active = 0
    overlap = threading.Event()
    lock = threading.Lock()
    counter = iter(range(1000))

    def load() -> ConfigSet:
        nonlocal active
        with lock:
            active += 1
            if active > 1:
                overlap.set()
        config = load_config_dir(config_dir)
        # a new digest every time, so every reload applies
        return ConfigSet(config.directory, config.daemon, config.modes,
                         f"{config.digest}-{next(counter)}")

    def apply(config: ConfigSet) -> None:
        nonlocal active
        overlap.wait(0.3)  # a bounded window in which an unserialised reload would enter
        with lock:
            active -= 1

    reloader = Reloader(load, apply, notify=lambda s: None)
    threads = [threading.Thread(target=reloader.reload, args=(f"t{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads)
    assert not overlap.is_set()
    assert reloader.statistics().reloads_ok == 3


# --------------------------------------------------------------------------- systemd


def test_reload_notifies_a_real_systemd_socket(config_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        server.settimeout(WAIT)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        reloader = Reloader(lambda: load_config_dir(config_dir), lambda c: None)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert reloader.reload("SIGHUP").changed
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        first = server.recv(4096).decode()
        second = server.recv(4096).decode()
    lines = first.split("\n")
    assert lines[0] == "RELOADING=1"
    key, value = lines[1].split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    assert second == "READY=1"


def test_sd_notify_abstract_socket_and_absent_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"modcoord-test-{os.getpid()}-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        server.settimeout(WAIT)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify("READY=1\nSTATUS=serving")
        assert server.recv(4096) == b"READY=1\nSTATUS=serving"
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)  # nobody listens any more
    assert not sd_notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert not sd_notify("READY=1")
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sd_notify("READY=1")
