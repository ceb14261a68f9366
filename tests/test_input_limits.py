"""Input limits: incomplete frames time out, an input budget bounds what incomplete frames
hold, and the connection/descriptor limit pauses accepting instead of spinning.

Unit tests run the real server over real sockets with the fake coordinator and a
:class:`MockClock` for every timer. Integration tests run the real daemon
(``modcoord start --foreground``) with a small ``frame_timeout_s`` / input budget in its
``daemon.yaml``, or with a low ``RLIMIT_NOFILE`` set in the child before it execs, and
talk to it through real clients. Every wait is bounded.
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
from test_client_server import WAIT, FakeCoordinator, RawClient

from modcoord.actors.clock import MockClock
from modcoord.supervisor.daemon.server import (
    ACCEPT_PAUSE_S,
    Server,
)
from modcoord.supervisor.protocol.paths import socket_path
from modcoord.supervisor.protocol.wire import encode_frame

MB = 1024 * 1024


def _header(size: int) -> bytes:
    return struct.pack(">I", size)


def _padded_request(rid: int, total: int) -> bytes:
    """A whole ``status`` request frame of about ``total`` bytes (an unknown field pads it,
    so the answer is an InvalidMessageError: a response to that id either way)."""
    frame = encode_frame([0, rid, "status", {"pad": "x" * total}])
    return frame


def _response_ids(raw: RawClient, count: int) -> list[Any]:
    out = []
    while len(out) < count:
        msg = raw.recv()
        assert msg is not None, f"EOF after responses {out}"
        if msg[0] == 1:
            out.append(msg[1])
    return out


# -- unit: the server with a mock clock ---------------------------------------------------------


@pytest.fixture
def runtime_dir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
def make_server(runtime_dir: Path, clock: MockClock) -> Iterator[Callable[..., Server]]:
    made: list[Server] = []

    def make(**kwargs: Any) -> Server:
        srv = Server(FakeCoordinator(), socket_path(runtime_dir), clock=clock.monotonic,
                     **kwargs).start()
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.stop()


def _raw(runtime_dir: Path) -> RawClient:
    return RawClient(socket_path(runtime_dir))


def _tick(server: Server, clock: MockClock, seconds: float) -> None:
    """Advance the server's clock and wake its loop so its timers run."""
    clock.advance(seconds)
    server._wake()


def test_an_incomplete_frame_times_out_with_a_clear_error(
        make_server: Callable[..., Server], runtime_dir: Path, clock: MockClock) -> None:
    server = make_server(frame_timeout_s=10.0)
    slow = _raw(runtime_dir)
    honest = _raw(runtime_dir)
    frame = _padded_request(1, 100_000)
    slow.send_bytes(frame[: len(frame) // 2])
    wait_for(lambda: server.statistics().buffered_in >= len(frame) // 2, WAIT,
             message="the half frame buffered")
    _tick(server, clock, 9.0)
    # Under the limit: still open, and the rest of a frame completes normally.
    honest.send_bytes(frame[:1000])
    _tick(server, clock, 0.5)
    honest.send_bytes(frame[1000:])
    assert _response_ids(honest, 1) == [1]
    assert server.statistics().frame_timeouts == 0
    _tick(server, clock, 1.5)  # the slow frame is now 11 s old
    msg = slow.recv()
    assert msg is not None and msg[0] == 1 and msg[1] is None
    assert msg[2][0] == "FramingError" and "frame_timeout_s" in msg[2][1], msg
    assert slow.at_eof()
    stats = server.statistics()
    assert stats.frame_timeouts == 1 and stats.buffered_in == 0
    # The honest connection carries on.
    honest.send_bytes(_padded_request(2, 10))
    assert _response_ids(honest, 1) == [2]


def test_input_budget_holds_back_large_frames_in_order_while_small_ones_flow(
        make_server: Callable[..., Server], runtime_dir: Path, clock: MockClock) -> None:
    server = make_server(max_input_bytes=500_000, frame_timeout_s=10.0)
    first, second, third, small = (_raw(runtime_dir) for _ in range(4))
    big = [_padded_request(i, 300_000) for i in (1, 2, 3)]
    first.send_bytes(big[0][:100_000])
    wait_for(lambda: server.statistics().input_reserved >= 300_000, WAIT,
             message="the first frame's reservation")
    second.send_bytes(big[1][:100_000])
    wait_for(lambda: server.statistics().input_waiting == 1, WAIT,
             message="the second frame held back")
    third.send_bytes(big[2][:50_000])
    wait_for(lambda: server.statistics().input_waiting == 2, WAIT,
             message="the third frame held back")
    stats = server.statistics()
    assert stats.input_reserved <= 500_000
    # What the held-back connections hold is bounded by one read each.
    assert stats.buffered_in <= 100_000 + 2 * 100_000
    # Small requests are never held back, even now.
    small.send_bytes(b"".join(_padded_request(10 + i, 100) for i in range(50)))
    assert sorted(_response_ids(small, 50)) == list(range(10, 60))
    # Waiting connections are not timed out (the server is not reading them).
    _tick(server, clock, 9.0)
    first.send_bytes(big[0][100_000:])
    assert _response_ids(first, 1) == [1]
    wait_for(lambda: server.statistics().input_waiting == 1, WAIT,
             message="the second admitted")
    second.send_bytes(big[1][100_000:])
    assert _response_ids(second, 1) == [2]
    third.send_bytes(big[2][50_000:])
    assert _response_ids(third, 1) == [3]
    stats = server.statistics()
    assert stats.input_waits == 2 and stats.frame_timeouts == 0
    assert stats.input_reserved == 0 and stats.input_waiting == 0


def test_a_frame_larger_than_the_budget_still_gets_through_alone(
        make_server: Callable[..., Server], runtime_dir: Path) -> None:
    server = make_server(max_input_bytes=100_000)
    raw = _raw(runtime_dir)
    raw.send_bytes(_padded_request(1, 400_000))
    assert _response_ids(raw, 1) == [1]
    assert server.statistics().input_reserved == 0


def test_a_closed_connection_releases_its_reservation(
        make_server: Callable[..., Server], runtime_dir: Path) -> None:
    server = make_server(max_input_bytes=400_000)
    holder, waiter = _raw(runtime_dir), _raw(runtime_dir)
    holder.send_bytes(_padded_request(1, 300_000)[:50_000])
    wait_for(lambda: server.statistics().input_reserved > 0, WAIT, message="reserved")
    frame = _padded_request(2, 300_000)
    waiter.send_bytes(frame[:50_000])
    wait_for(lambda: server.statistics().input_waiting == 1, WAIT, message="held back")
    holder.close()
    wait_for(lambda: server.statistics().input_waiting == 0, WAIT, message="admitted")
    waiter.send_bytes(frame[50_000:])
    assert _response_ids(waiter, 1) == [2]


class _FailingListener:
    """The listening socket, whose next ``accept`` fails with EMFILE (once)."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.failures = 1

    def accept(self) -> tuple[socket.socket, Any]:
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return self.real.accept()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_emfile_refuses_through_the_reserve_and_rests_instead_of_spinning(
        make_server: Callable[..., Server], runtime_dir: Path, clock: MockClock) -> None:
    server = make_server()
    assert server._accepting.has_reserve
    probe = _raw(runtime_dir)
    probe.send_bytes(_padded_request(1, 10))
    assert _response_ids(probe, 1) == [1]
    server._listener = _FailingListener(server._listener)  # type: ignore[arg-type,assignment]
    refused = _raw(runtime_dir)
    msg = refused.recv()  # accepted with the reserve descriptor and told why
    assert msg is not None and msg[2][0] == "ConnectionRefused", msg
    assert "connection limit" in msg[2][1] and "LimitNOFILE" in msg[2][1]
    assert refused.at_eof()
    wait_for(lambda: server.statistics().accept_pauses == 1, WAIT, message="a rest")
    stats = server.statistics()
    assert (stats.accept_errors, stats.refused_at_limit) == (1, 1)
    assert server._accepting.has_reserve  # taken back
    # Resting: a new peer waits in the backlog while the loop goes round and round.
    waiting = _raw(runtime_dir)
    for rid in range(2, 12):
        probe.send_bytes(_padded_request(rid, 10))
        assert _response_ids(probe, 1) == [rid]
    assert server.statistics().accepted == 1
    _tick(server, clock, ACCEPT_PAUSE_S)
    wait_for(lambda: server.statistics().accepted == 2, WAIT, message="accepting resumed")
    waiting.send_bytes(_padded_request(1, 10))
    assert _response_ids(waiting, 1) == [1]


def test_connection_cap_refuses_politely_and_pauses(
        make_server: Callable[..., Server], runtime_dir: Path, clock: MockClock) -> None:
    server = make_server(max_connections=2)
    kept = [_raw(runtime_dir), _raw(runtime_dir)]
    for i, raw in enumerate(kept):
        raw.send_bytes(_padded_request(i, 10))
        assert _response_ids(raw, 1) == [i]
    assert server.statistics().accept_pauses == 0  # nothing refused: no rest either

    def refused(raw: RawClient) -> None:
        msg = raw.recv()
        assert msg is not None and msg[2][0] == "ConnectionRefused", msg
        assert "2 allowed by RLIMIT_NOFILE" in msg[2][1] and "LimitNOFILE" in msg[2][1]
        assert raw.at_eof()

    refused(_raw(runtime_dir))
    wait_for(lambda: server.statistics().accept_pauses == 1, WAIT, message="a rest")
    stats = server.statistics()
    assert (stats.refused_at_limit, stats.connections) == (1, 2)
    # Resting: the next peer is answered only when the pause is over.
    later = _raw(runtime_dir)
    for rid in range(10, 20):  # the loop goes round ...
        kept[1].send_bytes(_padded_request(rid, 10))
        assert _response_ids(kept[1], 1) == [rid]
    later.sock.setblocking(False)
    with pytest.raises(BlockingIOError):  # ... and the new peer is not answered yet
        later.sock.recv(1)
    later.sock.settimeout(WAIT)
    _tick(server, clock, ACCEPT_PAUSE_S)
    refused(later)
    assert server.statistics().refused_at_limit == 2
    kept[0].close()
    wait_for(lambda: server.statistics().connections == 1, WAIT, message="one closed")
    _tick(server, clock, ACCEPT_PAUSE_S)
    again = _raw(runtime_dir)
    again.send_bytes(_padded_request(7, 10))
    assert _response_ids(again, 1) == [7]


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
        assert sum("frame_timeout_s" in r["message"] for r in lines) == count
        for s, _rest in attackers:
            s.close()


class _Source:
    module_id = "src"
    name = "Source"
    supported_modes = {"MANUAL", "HYBRID", "FULLY_AUTO"}
    subscribe: list[str] = []

    def on_mode_change(self, mode: str, strategy: str, context: Any) -> str:
        return "ok"


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
        honest.register(_Source()).get(timeout=10)
        small = [honest.publish("src", f"k{i}", i) for i in range(20)]
        large = honest.publish("src", "big", "y" * 600_000)
        assert all(isinstance(f.get(timeout=20), int) for f in small)
        assert isinstance(large.get(timeout=20), int)
        stats = honest.status().get(timeout=5)["server"]
        assert stats["input_waits"] >= 1 and stats["frame_timeouts"] >= 1
    for s in attackers:
        s.close()
