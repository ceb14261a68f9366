"""Input limits through the real daemon: incomplete frames time out and the input budget
bounds their memory, honest large requests still get through, and at the descriptor limit
the daemon rests, refuses and keeps serving.

The daemon (``modcoord start --foreground``) runs with a small ``frame_timeout_s`` / input
budget in its ``daemon.yaml``, or with a low ``RLIMIT_NOFILE`` set in the child before it
execs; real clients talk to it. The unit side is ``unit/test_input_limits.py``. Every wait is
bounded.
"""

from __future__ import annotations

import contextlib
import errno
import resource
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from daemon_harness import DaemonProcess, records, startswith, wait_for
from server_harness import Publisher

from modcoord.supervisor.daemon.config import MODES

MB = 1024 * 1024


def _header(size: int) -> bytes:
    return struct.pack(">I", size)


# -- integration: the real daemon -----------------------------------------------------------------


class LimitedDaemon(DaemonProcess):
    """The real daemon, started with ``RLIMIT_NOFILE`` set to ``nofile`` (soft, hard)."""

    def __init__(self, root: Path, nofile: tuple[int, int] | None = None,
                 daemon_yaml: dict[str, Any] | None = None) -> None:
        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        super().__init__(root, configs={"daemon": daemon_yaml} if daemon_yaml else None,
                         preexec_fn=limit)
        self.nofile = nofile

    def start(self, timeout: float = 15.0) -> LimitedDaemon:
        super().start(timeout)
        return self


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Callable[..., LimitedDaemon]]:
    made: list[LimitedDaemon] = []

    def make(**kwargs: Any) -> LimitedDaemon:
        d = LimitedDaemon(tmp_path / f"d{len(made)}", **kwargs)
        made.append(d)
        return d.start()

    yield make
    for d in made:
        d.stop()


def _soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open files limit")


def _open_nonblocking(path: Path) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    if s.connect_ex(str(path)) not in (0, errno.EINPROGRESS):
        s.close()
        return None  # the listen backlog is full
    return s


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


@pytest.mark.integration
def test_soft_descriptor_limit_is_raised_to_the_hard_limit(
        limited: Callable[..., LimitedDaemon]) -> None:
    hard = min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    d = limited(nofile=(256, hard))
    assert _soft_nofile(d.pid) == hard
    with d.connect() as c:
        assert c.status().get(timeout=5)["server"]["max_connections"] > 256


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_at_the_descriptor_limit_the_daemon_rests_refuses_and_keeps_serving(
        limited: Callable[..., LimitedDaemon]) -> None:
    d = limited(nofile=(128, 128))
    with d.connect() as existing:

        def server() -> dict[str, Any]:
            return existing.status().get(timeout=5)["server"]  # type: ignore[no-any-return]

        assert existing.status().get(timeout=5)["pid"] == d.pid
        # Fill every connection the daemon allows, then keep knocking for 3 s.
        peers: list[socket.socket] = []
        for _ in range(150):
            s = _open_nonblocking(d.socket)
            if s is not None:
                peers.append(s)
        wait_for(lambda: server()["refused_at_limit"] > 0, 10, message="refusals")
        stats = server()
        assert stats["connections"] == stats["max_connections"] < 128
        cpu_before = _cpu(d.pid)
        started = time.monotonic()
        statuses = 0
        while time.monotonic() - started < 3.0:
            for _ in range(10):
                s = _open_nonblocking(d.socket)
                if s is not None:
                    peers.append(s)
            assert existing.status().get(timeout=5)["pid"] == d.pid
            statuses += 1
            threading.Event().wait(0.05)
        elapsed = time.monotonic() - started
        cpu = _cpu(d.pid) - cpu_before
        print(f"daemon CPU at the descriptor limit: {cpu:.3f} s in {elapsed:.1f} s")
        # Refusals and ~50 status calls in 3 s: nowhere near a busy loop (which is 1 s/s).
        assert cpu < 0.3 * elapsed, f"daemon used {cpu:.2f} s of CPU in {elapsed:.1f} s"
        assert statuses >= 20
        stats = server()
        assert stats["refused_at_limit"] > 100 and stats["accept_pauses"] > 2
        # A refused peer was told why.
        told = 0
        for s in peers:
            try:
                data = s.recv(65536)
            except (BlockingIOError, ConnectionResetError):
                continue
            if b"connection limit" in data and b"LimitNOFILE" in data:
                told += 1
        assert told >= 100
        # The log did not explode: one line per LIMIT_LOG_INTERVAL_S at most.
        lines = records(d, message=lambda m: isinstance(m, str) and (
            "accept" in m or "connection limit" in m))
        assert 1 <= len(lines) <= 3, [r["message"] for r in lines]
        assert d.log_file.stat().st_size < 1 * MB
        for s in peers:
            s.close()
        wait_for(lambda: server()["connections"] == 1, 10,
                 message="the extra connections closed")
        # New clients connect again (once accepting has rested its interval).
        def fresh_client_works() -> bool:
            try:
                with d.connect(reconnect=False) as fresh:
                    return fresh.status().get(timeout=5)["pid"] == d.pid  # type: ignore[no-any-return]
            except Exception:
                return False

        wait_for(fresh_client_works, 10, message="a new client served")
        assert existing.status().get(timeout=5)["pid"] == d.pid


def _rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_half_frames_time_out_and_the_input_budget_bounds_memory(
        limited: Callable[..., LimitedDaemon]) -> None:
    budget = 16 * MB
    d = limited(daemon_yaml={"frame_timeout_s": 0.5, "max_input_buffer_bytes": budget})
    body = 1024 * 1024 - 64
    half = _header(body) + b"\x00" * (body // 2)
    count = 100
    with d.connect() as honest:

        def server() -> dict[str, Any]:
            return honest.status().get(timeout=10)["server"]  # type: ignore[no-any-return]

        server()
        rss_before = _rss(d.pid)
        attackers: list[tuple[socket.socket, memoryview]] = []
        for _ in range(count):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(d.socket))
            s.setblocking(False)
            attackers.append((s, memoryview(half)))
        peak = 0
        max_reserved = 0
        closed: set[int] = set()
        deadline = time.monotonic() + 60
        while len(closed) < count and time.monotonic() < deadline:
            for i, (s, rest) in enumerate(attackers):
                if i in closed:
                    continue
                if rest:  # send the half frame as fast as the daemon takes it
                    try:
                        attackers[i] = (s, rest[s.send(rest):])
                    except BlockingIOError:
                        pass
                    except (BrokenPipeError, ConnectionResetError):
                        closed.add(i)
                        continue
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    data = b""
                if not data or b"frame_timeout_s" in data:
                    closed.add(i)
            stats = server()  # an honest client is served meanwhile
            max_reserved = max(max_reserved, stats["input_reserved"])
            peak = max(peak, _rss(d.pid) - rss_before)
            threading.Event().wait(0.02)
        assert len(closed) == count, f"{len(closed)} of {count} closed by the daemon"
        stats = server()
        assert stats["frame_timeouts"] == count
        assert stats["buffered_in"] == 0 and stats["input_reserved"] == 0
        assert 0 < max_reserved <= budget
        # 100 half frames of 1 MiB held whole take over 100 MiB (the decoder keeps a copy
        # besides its buffer); the budget keeps it near 2 x 16 MiB.
        print(f"daemon RSS growth with {count} half frames of 1 MiB: {peak / MB:.1f} MiB")
        assert peak < 50 * MB, f"RSS grew by {peak / MB:.1f} MiB"
        lines = records(d, message=startswith("closing connection"))
        assert sum("frame_timeout_s" in r.get("reason", "") for r in lines) == count
        for s, _rest in attackers:
            s.close()


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_honest_large_requests_get_through_an_exhausted_input_budget(
        limited: Callable[..., LimitedDaemon]) -> None:
    d = limited(daemon_yaml={"frame_timeout_s": 1.0, "max_input_buffer_bytes": 2 * MB})
    attackers = []
    with d.connect() as honest:
        for _ in range(6):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(d.socket))
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.send(_header(1024 * 1024 - 64) + b"\x00" * 100_000)
            attackers.append(s)
        wait_for(lambda: honest.status().get(timeout=5)["server"]["input_waiting"] > 0, 10,
                 message="the attackers exhaust the budget")
        honest.register(Publisher("src", "Source", MODES)).get(timeout=10)
        small = [honest.publish("src", f"k{i}", i) for i in range(20)]
        large = honest.publish("src", "big", "y" * 600_000)
        assert all(isinstance(f.get(timeout=20), int) for f in small)
        assert isinstance(large.get(timeout=20), int)
        stats = honest.status().get(timeout=5)["server"]
        assert stats["input_waits"] >= 1 and stats["frame_timeouts"] >= 1
    for s in attackers:
        s.close()
