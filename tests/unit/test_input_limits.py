"""Input limits: incomplete frames time out, an input budget bounds what incomplete frames
hold, and the connection limit pauses accepting instead of spinning.

The real server over real sockets with the fake coordinator and a :class:`MockClock` for
every timer (the real daemon: ``integration/test_input_limits_daemon.py``). Every wait is
bounded.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import wait_for
from server_harness import WAIT, FakeCoordinator, RawClient

from modcoord.actors.clock import MockClock
from modcoord.supervisor.daemon.server import (
    ACCEPT_PAUSE_S,
    Server,
)
from modcoord.supervisor.protocol.paths import socket_path
from modcoord.supervisor.protocol.wire import encode_frame


def _padded_request(rid: int, total: int) -> bytes:
    """A whole ``status`` request frame of about ``total`` bytes (an unknown field pads it,
    so the answer is an InvalidMessageError: a response to that id either way)."""
    frame = encode_frame([0, rid, "status", {"pad": "x" * total}])
    return frame


def _response_ids(raw: RawClient, count: int) -> list[Any]:
    out: list[Any] = []
    while len(out) < count:
        msg = raw.recv()
        assert msg is not None, f"EOF after responses {out}"
        if msg[0] == 1:
            out.append(msg[1])
    return out


# -- unit: the server with a mock clock ---------------------------------------------------------


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
