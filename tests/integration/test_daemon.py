"""The daemon process's lifecycle: start/stop, signals, pidfile,
permissions, invalid config, readiness notification, surviving a SIGKILL.

Every daemon here is a real process (``tests/daemon_harness.py``); clients are real
``connect()`` clients in the test process or raw sockets. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from daemon_harness import DaemonProcess, gone, records, run_cli, wait_for

from modcoord.actors.errors import ConnectionLostError
from modcoord.supervisor.daemon.config import MODES

pytestmark = pytest.mark.integration


def _slow_debounce(d: DaemonProcess, delay_ms: int = 20000) -> None:
    """Make HYBRID updates stay pending (in the debouncer) for ``delay_ms``."""
    d.edit_config("hybrid", {"debounce": {"delay_ms": delay_ms, "max_wait_ms": delay_ms}})


class Module:
    """A module living in the test process."""

    supported_modes = set(MODES)

    def __init__(self, module_id: str, subscribe: list[str] | None = None) -> None:
        self.module_id = module_id
        self.name = module_id
        self.subscribe = subscribe or []
        self.lock = threading.Lock()
        self.latest: dict[str, Any] = {}
        self.deliveries = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def on_mode_change(self, mode: str, strategy: str, context: dict[str, Any]) -> Any:
        if context.get("block"):
            self.entered.set()
            self.release.wait(20)
        return os.getpid()

    def on_batch(self, batch: Any) -> None:
        with self.lock:
            for u in batch.updates:
                self.latest[u.key] = u.payload
                self.deliveries += 1


# -- start / status / stop -------------------------------------------------------------------


@pytest.fixture
def detached(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A root for a detached daemon; whatever holds its pidfile is killed afterwards."""
    d = DaemonProcess(tmp_path / "detached")
    yield d
    pidfile = d.runtime_dir / "modcoord.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    if not gone(pid):
        os.kill(pid, signal.SIGKILL)


def test_start_detaches_and_stop_stops(detached: DaemonProcess) -> None:
    d = detached
    started = run_cli("start", "--config-dir", str(d.config_dir), runtime_dir=d.runtime_dir,
                      timeout=20)
    assert started.code == 0, started.err
    match = re.search(r"pid (\d+), socket (\S+)", started.out)
    assert match, started.out
    pid, sock = int(match.group(1)), Path(match.group(2))
    assert sock == d.socket and sock.exists()
    assert not gone(pid)
    assert (d.runtime_dir / "modcoord.pid").read_text().strip() == str(pid)

    status = d.cli("status", "--json")
    assert status.code == 0, status.err
    assert json.loads(status.out)["pid"] == pid

    stopped = d.cli("stop", "--timeout", "20")
    assert stopped.code == 0, stopped.err
    assert gone(pid)
    assert not sock.exists()
    after = d.cli("status")
    assert after.code == 3
    assert "not" in after.err.lower() or "no modcoord" in after.err.lower()
    assert d.cli("stop").code == 3


# -- SIGKILL ---------------------------------------------------------------------------------


def test_sigkill_fails_pending_futures_and_the_client_comes_back(
        daemon_factory: Callable[..., DaemonProcess]) -> None:
    d = daemon_factory(start=False)
    d.edit_config("daemon", {"callback_timeout_ms": 30000})
    d.start()
    module = Module("survivor")
    client = d.connect(timeout=10)
    try:
        client.register(module).get(10)
        # A coordination that cannot complete: the module's on_mode_change blocks.
        blocked = client.coordinate("HYBRID", {"block": True})
        assert module.entered.wait(10)
        publishes = [client.publish("survivor", f"k{i}", i) for i in range(2000)]
        assert not blocked.done()

        os.kill(d.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(ConnectionLostError):
            blocked.get(timeout=2.0)  # CallTimeoutError (a failure) if it hangs
        for f in publishes:  # each either answered before the kill or failed since
            assert f.exception(timeout=2.0) is None or isinstance(f.exception(0),
                                                                  ConnectionLostError)
        assert time.monotonic() - started < 2.5
        module.release.set()
        assert d.wait_exit(5) == -signal.SIGKILL
        # Calls made while the daemon is away fail at once.
        with pytest.raises(ConnectionLostError):
            client.status().get(timeout=1.0)

        # The pidfile and socket it left behind do not block a new daemon.
        assert (d.runtime_dir / "modcoord.pid").exists()
        again = daemon_factory(root=d.root)
        assert again.pid != d.pid

        assert client.wait_connected(10), "the client did not reconnect"
        status = client.status().get(10)
        assert status["pid"] == again.pid
        assert status["modules"] == 1  # re-registered
        result = client.coordinate("HYBRID", {"after": "restart"}).get(10)
        assert result.results == {"survivor": os.getpid()} and result.errors == {}
        stats = client.statistics()
        assert stats.reconnects == 1 and stats.connection_losses == 1
    finally:
        module.release.set()
        client.close()


# -- SIGTERM ---------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_sigterm_flushes_pending_updates_then_exits_0(
        signum: int, daemon_factory: Callable[..., DaemonProcess]) -> None:
    d = daemon_factory(start=False)
    _slow_debounce(d)  # 20 s: only the graceful stop can deliver them in time
    d.start()
    sub = Module("sub", subscribe=["pub"])
    with d.connect(timeout=10) as client:
        client.register(sub).get(10)
        client.register(Module("pub")).get(10)
        futures = [client.publish("pub", f"doc-{i % 40}", {"rev": i}, "low" if i % 3 else "high")
                   for i in range(200)]
        for f in futures:
            f.get(10)
        assert client.debouncer.pending().get(10) == 40
        assert sub.deliveries == 0

        d.signal(signum)
        assert d.wait_exit(10) == 0
        wait_for(lambda: len(sub.latest) == 40, 5, message="every pending update delivered")
    with sub.lock:
        assert sub.latest == {f"doc-{k}": {"rev": 160 + k} for k in range(40)}
        assert sub.deliveries == 40
    messages = [r["message"] for r in records(d)]
    assert any(m.startswith("daemon stopped") for m in messages)


class RawSink:
    """A module on a raw socket that registers, subscribes to everything, then never
    reads: whatever is delivered to it piles up in the daemon's output buffer."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(5.0)
        self.sock.connect(str(path))
        body = msgpack.packb([0, 1, "register", {
            "module_id": "sink", "name": "sink", "supported_modes": list(MODES),
            "subscribe": ["*"], "has_metrics": False}], use_bin_type=True)
        self.sock.sendall(struct.pack(">I", len(body)) + body)
        header = self._exactly(4)
        reply = msgpack.unpackb(self._exactly(struct.unpack(">I", header)[0]), raw=False)
        assert reply[1] == 1 and reply[2] is None, reply

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "daemon closed the connection"
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


def test_second_sigterm_forces_exit(daemon_factory: Callable[..., DaemonProcess]) -> None:
    """The graceful stop is held up deterministically: a subscriber that never reads gets
    megabytes of flushed updates, so the daemon spends its drain timeout (1 s) sending."""
    d = daemon_factory(start=False)
    _slow_debounce(d)
    d.start()
    sink = RawSink(d.socket)
    try:
        with d.connect(timeout=10) as client:
            client.register(Module("pub")).get(10)
            blob = "x" * 20000
            for f in [client.publish("pub", f"k{i}", blob) for i in range(200)]:
                f.get(10)
            assert client.debouncer.pending().get(10) == 200

            d.signal(signal.SIGTERM)
            wait_for(lambda: any(r["message"] == "daemon stopping" for r in records(d)),
                     10, message="the graceful stop to begin")
            d.signal(signal.SIGTERM)
            code = d.wait_exit(10)
    finally:
        sink.close()
    assert code == 1
    assert "second signal" in d.stderr_text()
    assert not any(r["message"].startswith("daemon stopped") for r in records(d))


# -- one daemon per runtime directory, permissions -------------------------------------------


def test_second_daemon_on_the_same_runtime_dir_is_refused(
        daemon_factory: Callable[..., DaemonProcess]) -> None:
    d = daemon_factory()
    for extra in (["--foreground"], []):
        second = run_cli("start", *extra, "--config-dir", str(d.config_dir),
                         runtime_dir=d.runtime_dir, timeout=20)
        assert second.code == 1, (extra, second)
        assert "already running" in second.err, (extra, second.err)
        assert str(d.pid) in second.err
    assert d.proc is not None and d.proc.poll() is None
    assert (d.runtime_dir / "modcoord.pid").read_text().strip() == str(d.pid)
    with d.connect() as c:
        assert c.status().get(10)["pid"] == d.pid


def test_runtime_dir_is_0700_and_socket_0600(
        daemon_factory: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    fresh = daemon_factory()
    loose_root = tmp_path / "loose"
    (loose_root / "run").mkdir(parents=True)
    (loose_root / "run").chmod(0o755)
    loose = daemon_factory(root=loose_root)
    for d in (fresh, loose):
        st_dir = d.runtime_dir.stat()
        assert stat.S_IMODE(st_dir.st_mode) == 0o700, oct(st_dir.st_mode)
        assert st_dir.st_uid == os.getuid()
        st_sock = os.stat(d.socket)
        assert stat.S_ISSOCK(st_sock.st_mode)
        assert stat.S_IMODE(st_sock.st_mode) == 0o600, oct(st_sock.st_mode)


# -- invalid config --------------------------------------------------------------------------


@pytest.mark.parametrize("foreground", [True, False], ids=["foreground", "detached"])
def test_invalid_config_at_start_exits_78(
        foreground: bool, daemon_factory: Callable[..., DaemonProcess]) -> None:
    d = daemon_factory(start=False)
    d.edit_config("hybrid", {"cache": {"ttl_ms": "soon"}})
    extra = ["--foreground"] if foreground else []
    result = run_cli("start", *extra, "--config-dir", str(d.config_dir),
                     runtime_dir=d.runtime_dir, timeout=20)
    assert result.code == 78, result
    assert "hybrid.yaml" in result.err and "ttl_ms" in result.err, result.err
    assert d.cli("status").code == 3

    d.edit_config("hybrid", {"cache": {"ttl_ms": 5000, "bogus_key": 1}})
    result = run_cli("start", *extra, "--config-dir", str(d.config_dir),
                     runtime_dir=d.runtime_dir, timeout=20)
    assert result.code == 78, result
    assert "hybrid.yaml" in result.err and "bogus_key" in result.err, result.err
    assert d.cli("status").code == 3


def test_unknown_mode_at_start_is_a_usage_error(
        daemon_factory: Callable[..., DaemonProcess]) -> None:
    d = daemon_factory(start=False)
    result = run_cli("start", "--mode", "TURBO", runtime_dir=d.runtime_dir, timeout=20)
    assert result.code == 2, result
    assert "TURBO" in result.err and "FULLY_AUTO" in result.err
    assert d.cli("status").code == 3


# -- SIGHUP ----------------------------------------------------------------------------------


def test_sighup_reloads_the_config(daemon_factory: Callable[..., DaemonProcess]) -> None:
    d = daemon_factory()
    hybrid = d.config_dir / "hybrid.yaml"
    original = hybrid.read_text()

    def sighup_records() -> list[dict[str, Any]]:
        return [r for r in records(d) if r.get("reason") == "SIGHUP"]

    with d.connect() as c:
        # Nothing changed: SIGHUP still runs a reload, which finds the config unchanged.
        d.signal(signal.SIGHUP)
        first = wait_for(sighup_records, 10, message="a reload for SIGHUP")
        assert first[0]["message"] == "config unchanged"

        # A new value: applied (by SIGHUP, or by the file watcher if it got there first).
        d.edit_config("hybrid", {"cache": {"ttl_ms": 7000}})
        d.signal(signal.SIGHUP)
        wait_for(lambda: c.config().get(10)["modes"]["HYBRID"]["cache"]["ttl_ms"] == 7000, 10,
                 message="the new ttl applied")
        wait_for(lambda: len(sighup_records()) >= 2, 10, message="a second SIGHUP reload")

        # An invalid file: rejected, kept as last_reload_error, the running config stays.
        d.edit_config("hybrid", {"debounce": {"delay_ms": "soon"}})
        d.signal(signal.SIGHUP)
        error = wait_for(lambda: c.status().get(10)["last_reload_error"], 10,
                         message="last_reload_error")
        assert "hybrid.yaml" in error and "delay_ms" in error
        assert c.config().get(10)["modes"]["HYBRID"]["cache"]["ttl_ms"] == 7000
        assert any(r["message"] == "config reload rejected" for r in records(d))

        hybrid.write_text(original)
        d.signal(signal.SIGHUP)
        wait_for(lambda: c.status().get(10)["last_reload_error"] is None, 10,
                 message="the error cleared")
        assert c.config().get(10)["modes"]["HYBRID"]["cache"]["ttl_ms"] == 5000
    assert d.proc is not None and d.proc.poll() is None


# -- systemd readiness -----------------------------------------------------------------------


def test_foreground_sends_ready_to_notify_socket(
        daemon_factory: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(10.0)
    try:
        d = daemon_factory(env={"NOTIFY_SOCKET": str(path)})
        received: list[str] = []
        while not any("READY=1" in m.splitlines() for m in received):
            received.append(listener.recv(4096).decode())  # socket.timeout: bounded
        ready = next(m for m in received if "READY=1" in m.splitlines())
        assert f"MAINPID={d.pid}" in ready.splitlines()
        d.signal(signal.SIGTERM)
        assert d.wait_exit(10) == 0
        while not any("STOPPING=1" in m.splitlines() for m in received):
            received.append(listener.recv(4096).decode())
    finally:
        listener.close()


# -- escalation ------------------------------------------------------------------------------


def test_restart_intensity_exceeded_flushes_and_exits_1(
        daemon_factory: Callable[..., DaemonProcess]) -> None:
    d = daemon_factory("--allow-fault-injection", start=False)
    d.edit_config("daemon", {"supervisor": {"max_restarts": 2, "within_s": 60,
                                            "backoff_initial_ms": 1, "backoff_max_ms": 5}})
    _slow_debounce(d)
    d.start()
    sub = Module("sub", subscribe=["pub"])
    with d.connect(timeout=10, reconnect=False) as client:
        client.register(sub).get(10)
        client.register(Module("pub")).get(10)
        for f in [client.publish("pub", f"k{i}", i) for i in range(30)]:
            f.get(10)
        for n in (1, 2):
            client.crash("cache").get(10)
            wait_for(lambda n=n: client.status().get(10)["actors"]["cache"]["restarts"] == n,
                     10, message=f"restart {n}")
        client.crash("cache").get(10)  # the third within the window: too many
        assert d.wait_exit(15) == 1
        wait_for(lambda: len(sub.latest) == 30, 5, message="pending updates flushed")
    assert sub.latest == {f"k{i}": i for i in range(30)}
    logged = records(d)
    assert any("intensity" in r.get("reason", "") for r in logged if r["level"] == "CRITICAL"), [
        r["message"] for r in logged]
    assert any(r["message"] == "daemon stopped" and r["exit_code"] == 1 for r in logged)
