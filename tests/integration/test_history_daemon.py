"""The performance history through real daemons: a real module process publishes and
``modcoord history --json/--csv`` shows its rate; the database survives a restart; a
corrupt or locked database leaves the daemon running with a memory-only history that
``status`` calls degraded (tiers, retention and trends with a MockClock:
``unit/test_history.py``)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonFactory, DaemonProcess, module_script, records, wait_for

# A module publishing ~200 updates a second until killed.
_PUBLISHER = module_script("flood", """
    print("registered", flush=True)
    n = 0
    while True:
        for _ in range(20):
            client.publish("flood", f"k{n % 50}", {"n": n})
            n += 1
        time.sleep(0.1)  # quiet-period: the publisher's pace (~200/s)
""")


@pytest.fixture
def publisher(daemon: DaemonProcess) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", _PUBLISHER, str(daemon.runtime_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "registered", proc.stderr
    yield proc
    proc.kill()
    proc.communicate(timeout=10)


def _json(daemon: DaemonProcess, *args: str) -> dict[str, Any]:
    result = daemon.cli(*args, "--json")
    assert result.code == 0, result.err
    out: dict[str, Any] = json.loads(result.out)
    return out


def _history(daemon: DaemonProcess, *args: str) -> dict[str, Any]:
    return _json(daemon, "history", *args)


def _points(daemon: DaemonProcess, metric: str, since: str = "5m") -> list[list[float]]:
    """The series of ``metric`` (``[]`` while the history does not hold it yet)."""
    result = daemon.cli("history", "--metric", metric, "--since", since, "--json")
    if result.code != 0:
        assert "unknown metric" in result.out, result.out
        return []
    points: list[list[float]] = json.loads(result.out)["series"][metric]
    return points


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_history_json_and_csv_show_a_publishing_module(
        daemon: DaemonProcess, publisher: subprocess.Popen[str]) -> None:
    metric = "module.flood.updates_per_s"

    def rate_seen() -> bool:
        return len([p for p in _points(daemon, metric, "1m") if p[3] > 50]) >= 3

    wait_for(rate_seen, 20, message="the flood module's rate in the history")
    out = _history(daemon, "--metric", metric, "--metric", "updates_in_per_s", "--since", "1m")
    assert out["ok"] is True and out["resolution_s"] == 1 and out["state"] == "ok"
    assert set(out["series"]) == {metric, "updates_in_per_s"}
    assert out["columns"] == ["ts", "min", "max", "mean", "last"]
    rates = [p[3] for p in out["series"][metric]][1:-1]  # whole seconds only
    assert rates and 50 < max(rates) < 1000, rates
    csv_out = daemon.cli("history", "--metric", metric, "--since", "1m", "--csv")
    assert csv_out.code == 0, csv_out.err
    rows = list(csv.reader(io.StringIO(csv_out.out)))
    assert rows[0] == ["metric", "ts", "min", "max", "mean", "last"]
    assert len(rows) > 3 and {r[0] for r in rows[1:]} == {metric}
    assert max(float(r[4]) for r in rows[1:]) > 50
    # On a non-terminal without --json: one sparkline line per metric.
    text = daemon.cli("history", "--metric", metric, "--since", "1m")
    assert text.code == 0 and metric in text.out and "last" in text.out, text.out
    # An unknown metric: a clear refusal naming what the history holds, exit 1.
    bad = daemon.cli("history", "--metric", "nope", "--json")
    assert bad.code == 1
    error = json.loads(bad.out)
    assert error["ok"] is False and "unknown metric(s) nope" in error["error"]
    assert "updates_in_per_s" in error["error"]
    status = _json(daemon, "status")["history"]
    assert status["state"] == "ok" and status["path"].endswith("history.sqlite3")
    assert status["rows"] > 0 and status["max_rows"] >= status["rows"]
    assert 0 < status["cpu_s"] < 60, status  # the sampler's and writer's own CPU time


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_history_survives_a_daemon_restart(daemon_factory: DaemonFactory,
                                           tmp_path: Path) -> None:
    first = daemon_factory(root=tmp_path / "d")
    wait_for(lambda: len(_points(first, "modules")) >= 3, 15, message="a few samples")
    before = _history(first, "--metric", "modules", "--since", "5m")["series"]["modules"]
    first.stop()
    assert (first.state_dir / "history.sqlite3").exists()
    second = daemon_factory(root=tmp_path / "d")
    assert second.pid != first.pid
    after = _history(second, "--metric", "modules", "--since", "5m")["series"]["modules"]
    stamps = {p[0] for p in after}
    assert {p[0] for p in before[:-1]} <= stamps  # the first daemon's seconds are kept
    assert _json(second, "status")["history"]["state"] == "ok"


def _assert_degraded_but_working(daemon: DaemonProcess, why: str) -> None:
    # The history opens its database after the daemon reported ready ("starting" until
    # then; a locked file is waited for up to sqlite's busy timeout).
    wait_for(lambda: _json(daemon, "status")["history"]["state"] != "starting", 30,
             message="the history opened")
    status = _json(daemon, "status")
    assert status["is_coordinating"] is True
    history = status["history"]
    assert history["state"] == "degraded", history
    assert why in history["reason"] and "memory-only" in history["reason"], history
    wait_for(lambda: len(_points(daemon, "modules", "1m")) >= 2, 15,
             message="memory history")
    assert _history(daemon, "--since", "1m")["state"] == "degraded"
    assert records(daemon, message="history database unusable: keeping history in memory")


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_corrupt_database_leaves_a_memory_history(daemon_factory: DaemonFactory,
                                                    tmp_path: Path) -> None:
    state = tmp_path / "d" / "state"
    state.mkdir(parents=True, mode=0o700)
    (state / "history.sqlite3").write_bytes(b"\x00garbage, not SQLite\xff" * 512)
    daemon = daemon_factory(root=tmp_path / "d")
    _assert_degraded_but_working(daemon, "not a database")


_LOCKER = textwrap.dedent("""
    import sqlite3, sys, time
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("PRAGMA locking_mode=EXCLUSIVE")
    db.execute("CREATE TABLE IF NOT EXISTS t (x)")
    db.execute("BEGIN EXCLUSIVE")
    db.execute("INSERT INTO t VALUES (1)")
    print("locked", flush=True)
    time.sleep(120)  # quiet-period: hold the lock until the test kills us
""")


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_locked_database_leaves_a_memory_history(daemon_factory: DaemonFactory,
                                                   tmp_path: Path) -> None:
    state = tmp_path / "d" / "state"
    state.mkdir(parents=True, mode=0o700)
    locker = subprocess.Popen([sys.executable, "-c", _LOCKER, str(state / "history.sqlite3")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        daemon = daemon_factory(root=tmp_path / "d")
        _assert_degraded_but_working(daemon, "locked")
    finally:
        locker.kill()
        locker.wait(timeout=10)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_top_draws_the_last_minutes_as_sparklines(daemon: DaemonProcess) -> None:
    from modcoord.supervisor.cli.history import SPARK_BLOCKS

    wait_for(lambda: len(_points(daemon, "memory_rss_bytes")) >= 3, 15,
             message="a few samples")
    result = daemon.cli("top", "--iterations", "1", "--interval", "0.2", timeout=20)
    assert result.code == 0, result.err
    assert "last 5 min" in result.out, result.out
    lines = [line for line in result.out.splitlines() if "memory_rss_bytes" in line]
    assert lines and any(ch in lines[0] for ch in SPARK_BLOCKS), result.out


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_an_unsafe_state_dir_is_refused_at_start(tmp_path: Path) -> None:
    from daemon_harness import run_cli

    state = tmp_path / "open-state"
    state.mkdir()
    state.chmod(0o777)
    result = run_cli("start", "--state-dir", str(state), runtime_dir=tmp_path / "run")
    assert result.code == 78, result
    assert f"state directory {state} is writable by group or others" in result.err
    fresh = tmp_path / "new-state"
    ok = run_cli("start", "--state-dir", str(fresh), "--json", runtime_dir=tmp_path / "run")
    try:
        assert ok.code == 0, ok.err
        assert fresh.is_dir() and (fresh.stat().st_mode & 0o777) == 0o700
        def status() -> dict[str, Any]:
            out = run_cli("status", "--json", runtime_dir=tmp_path / "run").out
            return json.loads(out)  # type: ignore[no-any-return]

        assert status()["daemon"]["state_dir"] == str(fresh)
        # The history's database opens after readiness: wait for it (bounded).
        wait_for(lambda: status()["history"]["path"] == str(fresh / "history.sqlite3"),
                 timeout=20, message="the history database to open in the new state dir")
    finally:
        run_cli("stop", runtime_dir=tmp_path / "run")


_CLONE_NEWNS, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE, _MS_RDONLY = (
    0x00020000, 32, 4096, 16384, 1 << 18, 1)


def _read_only_mount(directory: Path) -> Callable[[], None]:
    """A ``preexec_fn`` putting the child in a private mount namespace where ``directory``
    is a read-only bind mount of itself (the one way to make it read-only for root)."""
    import ctypes

    target = str(directory).encode()

    def enter() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        for ok in (libc.unshare(_CLONE_NEWNS) == 0,
                   libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) == 0,
                   libc.mount(target, target, None, _MS_BIND, None) == 0,
                   libc.mount(b"none", target, None,
                              _MS_REMOUNT | _MS_BIND | _MS_RDONLY, None) == 0):
            if not ok:
                raise OSError(ctypes.get_errno(), "read-only bind mount failed")

    return enter


def _can_mount_read_only(tmp_path: Path) -> str | None:
    """Why a read-only bind mount cannot be made here (no CAP_SYS_ADMIN), or None."""
    probe = tmp_path / "ro-probe"
    probe.mkdir()
    script = (f"mount --make-rprivate / && mount --bind {probe} {probe} && "
              f"mount -o remount,bind,ro {probe} && ! touch {probe}/x 2>/dev/null")
    try:
        done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True,
                              text=True, timeout=10)
    except OSError as exc:
        return f"unshare is not available: {exc}"
    return None if done.returncode == 0 else f"no read-only bind mount: {done.stderr}"


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_read_only_state_dir_leaves_a_memory_history(daemon_factory: DaemonFactory,
                                                       tmp_path: Path) -> None:
    import os

    state = tmp_path / "d" / "state"
    state.mkdir(parents=True, mode=0o700)
    preexec: Callable[[], None] | None = None
    if os.geteuid() != 0:
        state.chmod(0o500)  # enough for an unprivileged daemon
    else:  # root writes through mode bits: a read-only mount it is
        why = _can_mount_read_only(tmp_path)
        if why is not None:
            pytest.skip(f"running as root and {why}")
        preexec = _read_only_mount(state)
    try:
        daemon = daemon_factory(root=tmp_path / "d", preexec_fn=preexec)
        _assert_degraded_but_working(daemon, "is not writable")
        status = _json(daemon, "status")["history"]
        assert str(state) in status["reason"], status
        assert not any(state.iterdir()), list(state.iterdir())  # nothing was written there
    finally:
        state.chmod(0o700)


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_a_module_rate_series_stops_when_its_process_goes(
        daemon: DaemonProcess, publisher: subprocess.Popen[str]) -> None:
    """A real module process publishes, then is killed (the daemon unregisters it): its
    rate series gets no more points (no zeros) while the history goes on sampling."""
    metric = "module.flood.updates_per_s"
    wait_for(lambda: len(_points(daemon, metric, "1m")) >= 3, 20,
             message="the flood module's rate in the history")
    publisher.kill()
    publisher.communicate(timeout=10)
    wait_for(lambda: json.loads(daemon.cli("status", "--json").out)["modules"] == 0, 20,
             message="the module unregistered")
    last = _points(daemon, metric, "1m")[-1][0]
    wait_for(lambda: sum(p[0] > last for p in _points(daemon, "modules", "1m")) >= 4, 20,
             message="four more samples")
    after = _points(daemon, metric, "1m")
    assert after[-1][0] == last, after[-3:]  # not one point more, zero or otherwise
    assert all(p[3] > 0 for p in after), after
