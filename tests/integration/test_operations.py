"""Operations through the real daemon: hot reload, structured logs, metrics, insights, top.

Every test runs ``modcoord start --foreground`` as a real process with its own copy of the
configs (edited per test where a setting must differ), talks to it through a real client
and the real CLI (``python -m modcoord.supervisor``), and reads the JSON log it writes.
Every wait is bounded (``wait_for``, ``Popen.wait(timeout)``, ``Queue.get(timeout)``).
"""

from __future__ import annotations

import json
import math
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import (
    CLI,
    DaemonFactory,
    DaemonProcess,
    edited_yaml,
    file_records,
    records,
    run_cli,
    start_daemon,
    startswith,
    wait_for,
    wait_record,
)
from metrics_check import (
    check_conventions,
    check_histogram,
    parse_openmetrics,
    parse_text,
    promtool_check,
    value_of,
)

from modcoord.supervisor.daemon.config import default_config_dir
from modcoord.supervisor.protocol.module import ModuleInfo
from modcoord.supervisor.protocol.wire import encode_frame

MODES = {"MANUAL", "HYBRID", "FULLY_AUTO"}
LOW_HIT_RATE = "Low cache hit rate - consider adjusting cache TTL or strategy"
HIGH_LATENCY = "High coordination latency detected - consider optimizing module communication"


# --------------------------------------------------------------------------- helpers


def write_atomically(path: Path, text: str) -> None:
    """Save like an editor does: a temporary file in the same directory renamed over it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_in_place(path: Path, text: str) -> None:
    """Truncate and rewrite the file itself (same inode)."""
    with open(path, "r+") as fh:
        fh.seek(0)
        fh.truncate()
        fh.write(text)


def status(daemon: DaemonProcess) -> dict[str, Any]:
    result = daemon.cli("status", "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)  # type: ignore[no-any-return]


def config_show(daemon: DaemonProcess) -> dict[str, Any]:
    result = daemon.cli("config", "show")
    assert result.code == 0, result.err
    return json.loads(result.out)  # type: ignore[no-any-return]


class Module:
    """A module living in this (test) process: records what reaches it.

    Args:
        module_id: its id.
        subscribe: source ids whose updates it receives.
        slow_s: how long ``on_mode_change`` takes (simulated work).
    """

    supported_modes = MODES

    def __init__(self, module_id: str, subscribe: tuple[str, ...] = (),
                 slow_s: float = 0.0) -> None:
        self.module_id = module_id
        self.name = f"Module {module_id}"
        self.subscribe = list(subscribe)
        self.slow_s = slow_s
        self._lock = threading.Lock()
        self._updates: list[tuple[str, str, Any]] = []
        self._pause = threading.Event()

    def on_mode_change(self, mode: str, strategy: str, context: dict[str, Any]) -> str:
        if self.slow_s:
            self._pause.wait(self.slow_s)  # never set: a bounded pause standing for work
        return f"{self.module_id}: {mode}/{strategy}"

    def on_batch(self, batch: Any) -> None:
        with self._lock:
            self._updates.extend((u.module_id, u.key, u.payload) for u in batch.updates)

    def received(self) -> list[str]:
        with self._lock:
            return [key for _, key, _ in self._updates]


# --------------------------------------------------------------------------- status, mode


@pytest.mark.integration
def test_status_json_and_mode_switch_through_the_cli(daemon: DaemonProcess) -> None:
    st = status(daemon)
    assert st["pid"] == daemon.pid
    assert st["mode"] == "HYBRID" and st["is_coordinating"] is True
    assert set(st["actors"]) == {"debouncer", "cache", "batcher", "memory", "monitor"}
    assert all(a["alive"] and a["restarts"] == 0 for a in st["actors"].values())
    perf = st["performance_metrics"]
    assert set(perf["coordination_latency_ms"]) >= {"p50", "p95", "p99"}
    assert {"memory_usage_bytes", "active_subscriptions", "cache_hit_rate",
            "batch_efficiency"} <= set(perf)
    assert perf["memory_usage_bytes"] > 1_000_000
    assert st["cache_stats"]["max_size"] == 1000 and "size" in st["cache_stats"]
    assert st["batch_queue"]["pending"] == 0
    assert st["last_reload_error"] is None

    shown = daemon.cli("mode")
    assert (shown.code, shown.out.strip()) == (0, "HYBRID")
    switched = daemon.cli("mode", "manual")
    assert switched.code == 0, switched.err
    assert "HYBRID -> MANUAL" in switched.out and "conservative" in switched.out
    assert daemon.cli("mode").out.strip() == "MANUAL"
    assert status(daemon)["mode"] == "MANUAL"
    bad = daemon.cli("mode", "TURBO")
    assert bad.code == 2 and "TURBO" in bad.err  # a usage error, as for start --mode
    assert daemon.cli("mode").out.strip() == "MANUAL"


# --------------------------------------------------------------------------- hot reload


@pytest.mark.integration
def test_reload_by_atomic_rename_changes_live_delivery(daemon_factory: DaemonFactory,
                                                       tmp_path: Path) -> None:
    # Start with a debounce delay no test would wait for: a publish sits pending.
    d = start_daemon(daemon_factory, tmp_path / "d",
                     hybrid={"debounce": {"delay_ms": 30000, "max_wait_ms": 60000}})
    hybrid = d.config_dir / "hybrid.yaml"
    reader, writer = Module("reader", subscribe=("*",)), Module("writer")
    with d.connect() as c:
        c.register(reader).get(timeout=5)
        c.register(writer).get(timeout=5)
        c.publish("writer", "before", {"n": 1}).get(timeout=5)
        wait_for(lambda: c.debouncer.pending().get(timeout=5) == 1, 5,
                 message="the publish pending in the debouncer")
        assert c.cache.statistics().get(timeout=5)["max_size"] == 1000

        inode = hybrid.stat().st_ino
        write_atomically(hybrid, edited_yaml(hybrid, {
            "debounce": {"delay_ms": 20, "critical_delay_ms": 10, "max_wait_ms": 1000},
            "cache": {"max_entries": 123},
        }))
        assert hybrid.stat().st_ino != inode  # really a rename, not a rewrite

        wait_for(lambda: c.cache.statistics().get(timeout=5)["max_size"] == 123, 10,
                 message="the new cache.max_entries applied")
        # The pending update is pulled in to the new, shorter delay (kept, not dropped)...
        wait_for(lambda: "before" in reader.received(), 10, message="the pending update delivered")
        # ...and a new publish goes out after 20 ms, not 30 s.
        c.publish("writer", "after", {"n": 2}).get(timeout=5)
        wait_for(lambda: "after" in reader.received(), 5, message="a new publish delivered")
    assert reader.received() == ["before", "after"]
    shown = config_show(d)["modes"]["HYBRID"]
    assert shown["debounce"]["delay_ms"] == 20 and shown["cache"]["max_entries"] == 123
    rec = wait_record(d, message="config reloaded", reason="file change")
    assert rec["actor"] == "reloader" and rec["level"] == "INFO"
    assert status(d)["last_reload_error"] is None


@pytest.mark.integration
def test_reload_by_in_place_write_changes_live_caching(daemon: DaemonProcess) -> None:
    hybrid = daemon.config_dir / "hybrid.yaml"
    with daemon.connect() as c:
        assert c.coordinate("HYBRID", {"doc": 1}).get(timeout=5).cached is False
        assert c.coordinate("HYBRID", {"doc": 1}).get(timeout=5).cached is True

        inode = hybrid.stat().st_ino
        write_in_place(hybrid, edited_yaml(hybrid, {"cache": {"enabled": False}}))
        assert hybrid.stat().st_ino == inode  # really a rewrite of the same file

        wait_for(lambda: c.cache.statistics().get(timeout=5)["enabled"] is False, 10,
                 message="cache.enabled: false applied")
        first = c.coordinate("HYBRID", {"doc": 2}).get(timeout=5)
        second = c.coordinate("HYBRID", {"doc": 2}).get(timeout=5)
        assert (first.cached, second.cached) == (False, False)

        write_in_place(hybrid, edited_yaml(hybrid, {"cache": {"enabled": True,
                                                              "ttl_ms": 60000}}))
        wait_for(lambda: c.cache.statistics().get(timeout=5)["enabled"] is True, 10,
                 message="cache.enabled: true applied")
        assert c.coordinate("HYBRID", {"doc": 3}).get(timeout=5).cached is False
        assert c.coordinate("HYBRID", {"doc": 3}).get(timeout=5).cached is True
    assert config_show(daemon)["modes"]["HYBRID"]["cache"]["ttl_ms"] == 60000


BROKEN_EDITS: dict[str, tuple[Callable[[str], str], str]] = {
    # name: (the broken hybrid.yaml text built from the good one, the key the error names)
    "unknown key": (lambda good: good.replace("ttl_ms: 5000", "ttl_ms: 5000\n  ttl: 9"),
                    "cache.ttl"),
    "wrong type": (lambda good: good.replace("ttl_ms: 5000", "ttl_ms: soon"), "cache.ttl_ms"),
    "invalid yaml": (lambda good: good.replace("ttl_ms: 5000", "ttl_ms: [5000"), ""),
}


@pytest.mark.integration
@pytest.mark.parametrize("kind", sorted(BROKEN_EDITS))
def test_broken_edit_is_rejected_and_the_running_config_kept(daemon: DaemonProcess,
                                                              kind: str) -> None:
    hybrid = daemon.config_dir / "hybrid.yaml"
    good = hybrid.read_text()
    build, key = BROKEN_EDITS[kind]
    # The broken file also carries a valid change (max_entries): the file is rejected whole.
    broken = build(good.replace("max_entries: 1000", "max_entries: 77"))
    assert broken != good
    write_in_place(hybrid, broken)

    error = wait_for(lambda: status(daemon)["last_reload_error"], 10,
                     message="last_reload_error set")
    assert str(hybrid) in error
    if key:
        assert f": {key}: " in error
    else:
        assert "invalid YAML at line" in error
    rec = wait_record(daemon, message="config reload rejected")
    assert rec["level"] == "ERROR" and rec["actor"] == "reloader"
    assert rec["file"] == str(hybrid) and rec["key"] == key and rec["problem"]
    assert rec["reason"] == "file change"

    # The old config still runs: the cache still caches, with its old size.
    with daemon.connect() as c:
        assert c.cache.statistics().get(timeout=5)["max_size"] == 1000
        c.coordinate("HYBRID", {"k": kind}).get(timeout=5)
        assert c.coordinate("HYBRID", {"k": kind}).get(timeout=5).cached is True
    assert config_show(daemon)["modes"]["HYBRID"]["cache"]["ttl_ms"] == 5000

    # A good edit clears the error.
    write_in_place(hybrid, good.replace("ttl_ms: 5000", "ttl_ms: 6000"))
    wait_for(lambda: status(daemon)["last_reload_error"] is None, 10,
             message="last_reload_error cleared")
    assert config_show(daemon)["modes"]["HYBRID"]["cache"]["ttl_ms"] == 6000


@pytest.mark.integration
def test_reload_command_exit_codes(daemon: DaemonProcess) -> None:
    hybrid = daemon.config_dir / "hybrid.yaml"
    good = hybrid.read_text()

    unchanged = daemon.cli("reload")
    assert (unchanged.code, unchanged.out.strip()) == (0, "config unchanged")

    write_in_place(hybrid, good.replace("window_ms: 100", "window_ms: 250"))
    done = daemon.cli("reload")
    # The watcher may have applied the edit first; either way it is applied on return.
    assert done.code == 0, done.err
    assert done.out.strip() in ("config reloaded", "config unchanged")
    # (These failed about once in eight CI runs, showing 100: say what the reloader did.)
    assert window_ms(daemon) == 250, reloader_story(daemon, done)

    write_in_place(hybrid, good.replace("window_ms: 100", "window_ms: -5"))
    rejected = daemon.cli("reload")
    assert rejected.code == 1
    assert "reload rejected" in rejected.err
    assert str(hybrid) in rejected.err and "batch.window_ms" in rejected.err
    assert "-5" in rejected.err
    assert window_ms(daemon) == 250, reloader_story(daemon, rejected)
    assert "batch.window_ms" in status(daemon)["last_reload_error"]
    assert records(daemon, message="config reload rejected", reason="request",
                   key="batch.window_ms")

    write_in_place(hybrid, good)
    fixed = daemon.cli("reload")
    assert fixed.code == 0, fixed.err
    assert status(daemon)["last_reload_error"] is None
    assert window_ms(daemon) == 100, reloader_story(daemon, fixed)


def window_ms(daemon: DaemonProcess) -> Any:
    """HYBRID's ``batch.window_ms`` as the running daemon shows it."""
    return config_show(daemon)["modes"]["HYBRID"]["batch"]["window_ms"]


def reloader_story(daemon: DaemonProcess, answer: Any) -> str:
    """What the CLI answered and what the daemon's reloader logged (for a failure)."""
    logged = [(r.get("message"), r.get("reason"), r.get("digest"), r.get("key"))
              for r in records(daemon, actor="reloader")]
    return f"cli: {answer.code} {answer.out!r} {answer.err!r}; reloader: {logged}"


@pytest.mark.integration
def test_sighup_reloads(daemon: DaemonProcess) -> None:
    hybrid = daemon.config_dir / "hybrid.yaml"
    good = hybrid.read_text()

    write_in_place(hybrid, good.replace("max_entries: 1000", "max_entries: 4321"))
    daemon.signal(signal.SIGHUP)
    wait_record(daemon, reason="SIGHUP",
                message=lambda m: m in ("config reloaded", "config unchanged"))
    with daemon.connect() as c:
        wait_for(lambda: c.cache.statistics().get(timeout=5)["max_size"] == 4321, 10,
                 message="the edit applied")

    # A broken config is rejected on every attempt (never skipped as unchanged): the
    # SIGHUP one is logged with its reason.
    write_in_place(hybrid, good.replace("max_entries: 1000", "max_entries: many"))
    wait_record(daemon, message="config reload rejected", reason="file change")
    daemon.signal(signal.SIGHUP)
    rec = wait_record(daemon, message="config reload rejected", reason="SIGHUP")
    assert rec["key"] == "cache.max_entries" and rec["file"] == str(hybrid)
    assert "cache.max_entries" in status(daemon)["last_reload_error"]
    assert daemon.proc is not None and daemon.proc.poll() is None  # SIGHUP never stops it


# --------------------------------------------------------------------------- config


@pytest.mark.integration
def test_config_validate_good_and_bad_directories(tmp_path: Path) -> None:
    packaged = run_cli("config", "validate")
    assert packaged.code == 0 and packaged.out.startswith("valid: ")
    assert "MANUAL, HYBRID, FULLY_AUTO" in packaged.out

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(default_config_dir(), target,
                        ignore=shutil.ignore_patterns("*.py", "__pycache__"))
        return target

    good = copy("good")
    ok = run_cli("config", "validate", str(good))
    assert ok.code == 0 and str(good) in ok.out

    cases: dict[str, tuple[str, Callable[[str], str], str, str]] = {
        "unknown-key": ("manual.yaml",
                        lambda t: t.replace("delay_ms: 300", "delay_ms: 300\n  dealy_ms: 3"),
                        "debounce.dealy_ms", "unknown key"),
        "wrong-type": ("fully_auto.yaml", lambda t: t.replace("enabled: false", "enabled: 'no'"),
                       "cache.enabled", "boolean"),
        "bad-range": ("hybrid.yaml", lambda t: t.replace("max_queue: 10000", "max_queue: 10"),
                      "batch", "max_queue must be at least max_size"),
        "unknown-section": ("hybrid.yaml", lambda t: t + "turbo: {on: true}\n", "turbo",
                            "unknown key"),
        "daemon-file": ("daemon.yaml", lambda t: t.replace("level: INFO", "level: LOUD"),
                        "logs.level", "LOUD"),
        "invalid-yaml": ("manual.yaml", lambda t: t.replace("cache:", "cache: : :"), "",
                         "invalid YAML at line"),
    }
    for name, (filename, edit, key, problem) in cases.items():
        bad = copy(name)
        path = bad / filename
        path.write_text(edit(path.read_text()))
        result = run_cli("config", "validate", str(bad))
        assert result.code == 1, (name, result)
        assert result.out == ""
        assert result.err.startswith("invalid: "), (name, result.err)
        assert str(path) in result.err, (name, result.err)
        if key:
            assert f": {key}: " in result.err, (name, result.err)
        assert problem in result.err, (name, result.err)

    missing = copy("missing")
    (missing / "hybrid.yaml").unlink()
    gone = run_cli("config", "validate", str(missing))
    assert gone.code == 1 and str(missing / "hybrid.yaml") in gone.err
    assert "file not found" in gone.err


@pytest.mark.integration
def test_config_show_prints_the_effective_config(daemon_factory: DaemonFactory,
                                                 tmp_path: Path) -> None:
    d = start_daemon(daemon_factory, tmp_path / "d", manual={"cache": {"ttl_ms": 1234}})
    shown = config_show(d)
    assert shown["directory"] == str(d.config_dir)
    assert set(shown["modes"]) == MODES
    assert shown["modes"]["MANUAL"]["cache"]["ttl_ms"] == 1234
    assert shown["modes"]["HYBRID"]["batch"] == {"enabled": True, "window_ms": 100.0,
                                                 "max_size": 50, "max_queue": 10000}
    assert shown["modes"]["FULLY_AUTO"]["cache"]["enabled"] is False
    assert shown["daemon"]["default_mode"] == "HYBRID"
    assert shown["daemon"]["logs"]["level"] == "INFO"


# --------------------------------------------------------------------------- logs


def _check_core_fields(rec: dict[str, Any], pid: int) -> None:
    assert {"time", "level", "message", "actor", "mode", "pid"} <= set(rec), rec
    stamp = datetime.fromisoformat(rec["time"])
    assert stamp.tzinfo is not None, rec["time"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", rec["time"])
    assert rec["level"] in {"TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR",
                            "CRITICAL"}
    assert isinstance(rec["message"], str) and rec["message"]
    assert isinstance(rec["actor"], str) and rec["actor"]
    assert rec["mode"] in MODES
    assert rec["pid"] == pid


@pytest.mark.integration
def test_log_records_carry_the_fields_and_the_events(daemon_factory: DaemonFactory,
                                                     tmp_path: Path) -> None:
    # Quick inactivity sweeps, so a cleanup with a swept module is logged within the test.
    fast_sweep = {"memory": {"cleanup_interval_ms": 100, "inactive_after_ms": 200}}
    d = start_daemon(daemon_factory, tmp_path / "d", hybrid=fast_sweep)
    with d.connect() as c:
        c.register(Module("editor-7", subscribe=("*",))).get(timeout=5)
        registered = wait_record(d, message=startswith("module registered"),
                                 module="editor-7")
        _check_core_fields(registered, d.pid)
        assert registered["actor"] == "supervisor" and registered["mode"] == "HYBRID"
        assert registered["level"] == "INFO"

        # A module whose connection stops reading is swept (a reading one never is).
        stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stalled.connect(str(d.socket))
        stalled.sendall(encode_frame([0, 1, "register", ModuleInfo.of(
            Module("viewer-9", subscribe=("*",))).to_params()]))
        wait_record(d, message=startswith("module registered"), module="viewer-9")
        for i in range(20):
            c.publish("editor-7", f"bulk{i}", "x" * 100_000).get(timeout=5)
        swept = wait_record(d, message=startswith("module inactive"), module="viewer-9")
        assert swept["actor"] == "memory"
        stalled.close()
        assert not records(d, message=startswith("module inactive"), module="editor-7")
        wait_record(d, message="cleanup done", reason="interval", actor="memory")
        c.coordinate("HYBRID", {"wake": 1}, ).get(timeout=5)

        assert d.cli("optimize").code == 0
        forced = wait_record(d, message="cleanup done", reason="forced")
        assert forced["actor"] == "memory" and forced["strategy"] == "balanced"

        assert d.cli("mode", "FULLY_AUTO").code == 0
        switched = wait_record(d, message="mode switched", previous="HYBRID",
                               mode="FULLY_AUTO")
        assert switched["actor"] == "supervisor"

        assert d.cli("reload").code == 0
        reloaded = wait_record(d, message="config unchanged", reason="request")
        assert reloaded["actor"] == "reloader" and reloaded["mode"] == "FULLY_AUTO"

        c.unregister("editor-7").get(timeout=5)
        gone = wait_record(d, message="module unregistered", module="editor-7")
        assert gone["actor"] == "supervisor" and gone["mode"] == "FULLY_AUTO"

    wait_record(d, message=startswith("daemon ready"), actor="daemon")
    every = file_records(d.log_file.parent)
    for rec in every:
        _check_core_fields(rec, d.pid)
    about_module = [r for r in every if r.get("module") == "editor-7"]
    assert about_module and not [r for r in every if "editor-7" in r["message"]]


def _logs(d: DaemonProcess, *args: str) -> list[str]:
    result = d.cli("logs", *args)
    assert result.code == 0, result.err
    return result.out.splitlines()


@pytest.mark.integration
def test_logs_command_filters(daemon: DaemonProcess) -> None:
    with daemon.connect() as c:
        for module_id in ("alpha", "beta"):
            c.register(Module(module_id)).get(timeout=5)
        c.unregister("alpha").get(timeout=5)
    hybrid = daemon.config_dir / "hybrid.yaml"
    hybrid.write_text(hybrid.read_text() + "bogus: 1\n")
    assert daemon.cli("reload").code == 1
    wait_record(daemon, message="module unregistered", module="alpha")

    everything = file_records(daemon.log_file.parent)
    last5 = [json.loads(line) for line in _logs(daemon, "-n", "5", "--json")]
    assert len(last5) == 5
    assert last5 == file_records(daemon.log_file.parent)[-5:] or last5 == everything[-5:]

    plain = _logs(daemon, "-n", "3")
    assert len(plain) == 3
    for line in plain:
        assert re.match(r"^\d\d:\d\d:\d\d\.\d{3} (TRACE|DEBUG|INFO|SUCCESS|WARNING|ERROR|"
                        r"CRITICAL) +\S+ ", line), line
    assert "\x1b[" not in "".join(plain)  # no colours when not on a terminal

    errors = [json.loads(line) for line in _logs(daemon, "--level", "error", "--json")]
    assert errors and all(r["level"] in ("ERROR", "CRITICAL") for r in errors)
    assert any(r["message"] == "config reload rejected" and r["key"] == "bogus"
               for r in errors)
    assert len(errors) == len([r for r in file_records(daemon.log_file.parent)
                               if r["level"] in ("ERROR", "CRITICAL")])

    supervisor = [json.loads(line) for line in _logs(daemon, "--actor", "supervisor", "--json")]
    assert supervisor and all(r["actor"] == "supervisor" for r in supervisor)
    assert {r["child"] for r in supervisor if r["message"] == "started"} == {
        "monitor", "memory", "cache", "batcher", "debouncer"}

    alpha = [json.loads(line) for line in _logs(daemon, "--module", "alpha", "--json")]
    assert [(r["message"], r.get("name")) for r in alpha][:1] == [
        ("module registered", "Module alpha")]
    assert "module unregistered" in [r["message"] for r in alpha]
    assert all(r["module"] == "alpha" for r in alpha)
    # beta was unregistered when its client's connection closed.
    beta = _logs(daemon, "--module", "beta", "--actor", "supervisor")
    assert len(beta) == 2, beta
    assert beta[0].endswith(' INFO     supervisor[beta] module registered name="Module beta"')
    assert beta[1].endswith(" INFO     supervisor[beta] module unregistered")
    assert _logs(daemon, "--module", "beta", "--actor", "supervisor", "-n", "1") == beta[1:]

    bad_level = daemon.cli("logs", "--level", "LOUDEST")
    assert bad_level.code == 2 and "Traceback" not in bad_level.err
    assert "unknown log level 'LOUDEST'" in bad_level.err


class _LineReader:
    """Reads a process's stdout lines in a thread; ``get(timeout)`` is bounded."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        self._stream = proc.stdout
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for line in self._stream:
            self.lines.put(line)
        self.lines.put(None)

    def records_until(self, done: Callable[[list[dict[str, Any]]], bool], timeout: float,
                      seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
        import time

        deadline = time.monotonic() + timeout
        while not done(seen):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"follower did not show what was expected in {timeout} s;"
                                     f" last: {seen[-3:]}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError("the follower exited")
            seen.append(json.loads(line))  # every line is one JSON object
        return seen


@pytest.mark.integration
def test_logs_follow_across_rotation_and_ctrl_c(daemon_factory: DaemonFactory,
                                                tmp_path: Path) -> None:
    d = start_daemon(daemon_factory, tmp_path / "d",
                     daemon={"logs": {"max_bytes": 4096, "keep": 50}})
    follower = subprocess.Popen(
        [*CLI, "logs", "-f", "--json", "-n", "1", "--runtime-dir", str(d.runtime_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        reader = _LineReader(follower)
        seen: list[dict[str, Any]] = []
        reader.records_until(lambda s: len(s) >= 1, 10, seen)  # the backlog: it is up

        ids = [f"rot-{i:02d}" for i in range(40)]
        with d.connect() as c:
            for module_id in ids:
                c.register(Module(module_id)).get(timeout=5)
                c.unregister(module_id).get(timeout=5)

        def all_seen(s: list[dict[str, Any]]) -> bool:
            done = sum(1 for r in s if r.get("message") == "module unregistered")
            return done >= len(ids)

        reader.records_until(all_seen, 15, seen)
        rotated = [p for p in d.log_file.parent.glob("modcoord.*.jsonl")]
        assert len(rotated) >= 3, "the log should have rotated several times"
        in_order = [r["module"] for r in seen if r.get("message", "").startswith(
            "module registered")]
        assert in_order == ids  # each once, in order, across the rotations
        assert [r["module"] for r in seen if r.get("message") == "module unregistered"] == ids
        assert all(r["pid"] == d.pid for r in seen)

        follower.send_signal(signal.SIGINT)
        code = follower.wait(timeout=10)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(timeout=5)
    err = follower.stderr.read() if follower.stderr else ""
    assert code == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


@pytest.mark.integration
def test_logs_follow_ends_quietly_when_its_reader_goes_away(daemon: DaemonProcess) -> None:
    """``modcoord logs -f | head -1``: the follower exits once the pipe closes, no traceback."""
    follower = subprocess.Popen(
        [*CLI, "logs", "-f", "--json", "-n", "1", "--runtime-dir", str(daemon.runtime_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert follower.stdout is not None
        json.loads(follower.stdout.readline())  # the backlog record: it is following
        follower.stdout.close()
        with daemon.connect() as c:
            def exited() -> bool:
                c.register(Module("poke")).get(timeout=5)  # new records to write
                c.unregister("poke").get(timeout=5)
                return follower.poll() is not None

            wait_for(exited, 10, interval=0.1, message="the follower exiting")
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(timeout=5)
    err = follower.stderr.read() if follower.stderr else ""
    assert follower.returncode == 1, err
    assert "Traceback" not in err and "BrokenPipeError" not in err


# --------------------------------------------------------------------------- metrics


def _coordinate_some(c: Any, distinct: int, repeats: int) -> None:
    for i in range(distinct):
        c.coordinate("HYBRID", {"ctx": i}).get(timeout=5)
    for _ in range(repeats):
        assert c.coordinate("HYBRID", {"ctx": 0}).get(timeout=5).cached is True


def _scrape(port: int, accept: str | None = None) -> tuple[str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                     headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 200
        return resp.headers["Content-Type"], resp.read().decode()


@pytest.mark.integration
def test_metrics_exposition_cli_and_http(daemon_factory: DaemonFactory,
                                         tmp_path: Path) -> None:
    d = start_daemon(daemon_factory, tmp_path / "d",
                     daemon={"metrics": {"enabled": True, "port": 0}})
    with d.connect() as c:
        c.register(Module("metered", subscribe=("*",))).get(timeout=5)
        _coordinate_some(c, distinct=5, repeats=20)
        c.publish("metered", "k", {"v": 1}, priority="critical").get(timeout=5)
        hits = c.cache.statistics().get(timeout=5)["hits"]
        assert d.cli("reload").code == 0  # unchanged: counted as skipped

        result = d.cli("metrics")
        assert result.code == 0, result.err
        families = parse_text(result.out)
        check_conventions(families)
        assert all(name.startswith(("modcoord_", "process_")) for name in families)
        assert value_of(families, "modcoord_modules") == 1
        assert value_of(families, "modcoord_cache_hits") == hits >= 20
        assert families["modcoord_mode"].type == "gauge"
        assert value_of(families, "modcoord_mode", mode="HYBRID") == 1
        reloads = {s.labels["result"]: s.value
                   for s in families["modcoord_config_reloads"].samples
                   if s.name.endswith("_total")}
        assert reloads == {"ok": 0, "rejected": 0, "skipped": 1}
        assert value_of(families, "modcoord_config_last_reload_ok") == 1
        assert value_of(families, "process_resident_memory_bytes") > 1 << 20
        build = families["modcoord_build_info"].samples[0].labels
        assert set(build) == {"version", "protocol_version", "python"}
        # Actors are a label of one family, not part of metric names.
        handling, _ = check_histogram(families["modcoord_actor_message_handling_seconds"])
        assert {dict(k)["actor"] for k in handling} == {
            "debouncer", "cache", "batcher", "memory", "monitor"}
        assert not [n for n in families if n.startswith("modcoord_actor_debouncer")]
        assert "modcoord_batch_efficiency" not in families

        coordination = families["modcoord_coordination_seconds"]
        assert coordination.type == "histogram"
        buckets, count = check_histogram(coordination)
        assert count >= 25
        sub_ms = [(le, n) for le, n in buckets[()] if le < 0.001]
        assert len(sub_ms) >= 3, "sub-millisecond resolution"
        assert sub_ms[-1][1] > 0, "cache hits are answered in under a millisecond"

        state = json.loads((d.runtime_dir / "daemon.json").read_text())
        port = int(state["metrics_port"])
        assert port > 0
        assert c.status().get(timeout=5)["daemon"]["metrics_port"] == str(port)
        content_type, body = _scrape(port)
        assert content_type.startswith("text/plain; version=0.0.4")
        scraped = parse_text(body)
        check_conventions(scraped)
        assert set(scraped) == set(families)
        assert check_histogram(scraped["modcoord_coordination_seconds"])[1] >= count
        assert value_of(scraped, "modcoord_cache_hits") == hits

        content_type, body = _scrape(port, "application/openmetrics-text; version=1.0.0")
        assert content_type.startswith("application/openmetrics-text; version=1.0.0")
        assert body.endswith("# EOF\n")
        om = parse_openmetrics(body)
        check_conventions(om, openmetrics=True)
        assert om["modcoord_build"].type == "info"
        assert om["modcoord_coordination_seconds"].unit == "seconds"


@pytest.mark.integration
def test_metrics_pass_promtool_check(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    d = start_daemon(daemon_factory, tmp_path / "d",
                     daemon={"metrics": {"enabled": True, "port": 0}})
    with d.connect() as c:
        c.register(Module("metered", subscribe=("*",))).get(timeout=5)
        _coordinate_some(c, distinct=3, repeats=5)
        result = d.cli("metrics")
        assert result.code == 0, result.err
        checked = promtool_check(result.out)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert (checked.stdout + checked.stderr).strip() == ""
        port = int(c.status().get(timeout=5)["daemon"]["metrics_port"])
        checked = promtool_check(_scrape(port)[1])
        assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.integration
def test_exported_buckets_agree_with_the_status_percentiles(daemon: DaemonProcess) -> None:
    """The daemon's coordination histogram: the exported exact buckets bracket the
    percentiles ``status`` reports (within their 1%), and ``_count`` is every request."""
    with daemon.connect() as c:
        before = c.status().get(timeout=5)["performance_metrics"][
            "coordination_latency_ms"]["count"]
        _coordinate_some(c, distinct=40, repeats=160)
        status = c.status().get(timeout=5)
        families = parse_text(daemon.cli("metrics").out)
    latency = status["performance_metrics"]["coordination_latency_ms"]
    buckets, count = check_histogram(families["modcoord_coordination_seconds"])
    assert count == latency["count"] >= before + 200
    series = buckets[()]
    for q in ("p50", "p95", "p99"):
        quantile_s = latency[q] / 1000.0
        rank = math.ceil({"p50": 0.5, "p95": 0.95, "p99": 0.99}[q] * count)
        for le, n in series:
            if le >= quantile_s * 1.01:
                assert n >= rank, f"{q}={quantile_s}s but only {n} <= {le}s (rank {rank})"
            if le < quantile_s * 0.99:
                assert n < rank, f"{q}={quantile_s}s but {n} <= {le}s (rank {rank})"


# --------------------------------------------------------------------------- insights


def _insights(d: DaemonProcess) -> dict[str, Any]:
    result = d.cli("insights", "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)  # type: ignore[no-any-return]


INSIGHT_FIELDS = {"id", "severity", "observed", "threshold", "window_s", "message",
                  "recommendation"}


@pytest.mark.integration
def test_insights_not_enough_data_then_low_cache_hit_rate(daemon: DaemonProcess) -> None:
    fresh = _insights(daemon)
    assert set(fresh) >= {"insights", "recommendations"}
    (only,) = fresh["insights"]
    assert set(only) >= INSIGHT_FIELDS
    assert only["id"] == "not_enough_data" and only["severity"] == "info"
    assert only["message"].startswith("Not enough data yet")
    assert fresh["recommendations"] == []
    text = daemon.cli("insights")
    assert text.code == 0 and "Not enough data yet" in text.out

    with daemon.connect() as c:
        for i in range(25):  # every context distinct: all misses
            assert c.coordinate("HYBRID", {"user": i}).get(timeout=5).cached is False
    report = _insights(daemon)
    by_id = {i["id"]: i for i in report["insights"]}
    low = by_id["low_cache_hit_rate"]
    assert set(low) >= INSIGHT_FIELDS
    assert low["message"] == LOW_HIT_RATE
    assert low["observed"] == 0.0 and low["threshold"] == 0.5
    assert low["window_s"] == 60.0 and low["severity"] == "warning"
    assert "cache.ttl_ms" in low["recommendation"]
    assert "high_coordination_latency" not in by_id  # fast coordinations
    assert low["recommendation"] in report["recommendations"]
    text = daemon.cli("insights")
    assert f"low_cache_hit_rate: {LOW_HIT_RATE}" in text.out
    logged = records(daemon, insight="low_cache_hit_rate", event="fired")
    assert len(logged) == 1 and logged[0]["level"] == "WARNING"
    assert logged[0]["message"] == "insight fired" and logged[0]["summary"] == LOW_HIT_RATE


@pytest.mark.integration
def test_high_coordination_latency_fires_once_and_does_not_flap(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    d = start_daemon(daemon_factory, tmp_path / "d", hybrid={"monitor": {"min_samples": 5}})
    with d.connect() as c:
        c.register(Module("sluggish", slow_s=0.15)).get(timeout=5)
        for i in range(6):  # distinct contexts: each one asks the slow module
            result = c.coordinate("HYBRID", {"doc": i}).get(timeout=5)
            assert result.cached is False and result.latency_ms >= 140
            assert result.results == {"sluggish": "sluggish: HYBRID/balanced"}

        reports = [c.insights().get(timeout=5) for _ in range(3)]
        reports.append(_insights(d))
        evaluations = c.monitor.statistics().get(timeout=5)["evaluations"]
    assert evaluations >= 4
    for report in reports:
        by_id = {i["id"]: i for i in report["insights"]}
        assert set(by_id) == {"high_coordination_latency", "low_cache_hit_rate"}, by_id
        high = by_id["high_coordination_latency"]
        assert high["message"] == HIGH_LATENCY
        assert high["severity"] == "warning"
        assert high["threshold"] == 100.0 and high["observed"] >= 140
        assert "cache.ttl_ms" in high["recommendation"]
        assert by_id["low_cache_hit_rate"]["message"] == LOW_HIT_RATE
    assert all(r["insights"] == reports[0]["insights"] for r in reports)  # no flapping

    fired = records(d, insight="high_coordination_latency", event="fired")
    assert len(fired) == 1, fired  # logged once, not on every evaluation
    assert fired[0]["level"] == "WARNING" and fired[0]["actor"] == "monitor"
    assert fired[0]["message"] == "insight fired" and fired[0]["summary"] == HIGH_LATENCY
    assert fired[0]["threshold"] == 100.0
    assert len(records(d, insight="low_cache_hit_rate", event="fired")) == 1
    assert not records(d, insight="high_coordination_latency", event="cleared")


# --------------------------------------------------------------------------- top


@pytest.mark.integration
def test_top_renders_without_a_terminal(daemon: DaemonProcess) -> None:
    with daemon.connect() as c:
        c.register(Module("shown", subscribe=("*",))).get(timeout=5)
        c.coordinate("HYBRID", {"top": 1}).get(timeout=5)
        result = daemon.cli("top", "--iterations", "2", "--interval", "0.2", timeout=20)
    assert result.code == 0, result.err
    out = result.out
    assert f"modcoord pid {daemon.pid}" in out and "mode HYBRID" in out
    for label in ("updates in", "updates delivered", "debounce pending", "batch queue",
                  "coordination p50/p95/p99 ms", "cache hit rate", "batch efficiency",
                  "memory", "modules / subscriptions", "actor debouncer", "actor monitor"):
        assert label in out, label
    assert re.search(r"modules / subscriptions\s+\S\s+1 / 1", out), out
    assert "/s)" in out  # the second refresh shows rates
    assert "Traceback" not in result.err
