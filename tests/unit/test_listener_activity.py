"""A module that only listens stays subscribed while its connection is live.

``Connection.live`` with the real server over a real socket and a :class:`MockClock`, and
the client's handling of the ``swept`` event (the memory manager's side is in
``test_memory.py``; the real daemon and a real listening process in
``integration/test_listener_activity_daemon.py``). Every wait is bounded.
"""

from __future__ import annotations

import selectors
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import wait_for
from server_harness import (
    WAIT,
    Editor,
    FakeCoordinator,
    RawClient,
)

from modcoord.actors.clock import MockClock
from modcoord.supervisor.client import connect
from modcoord.supervisor.daemon.server import Connection, Server
from modcoord.supervisor.protocol.paths import socket_path

# -- unit: Connection.live ----------------------------------------------------------------------


@pytest.fixture
def server(fake: FakeCoordinator, runtime_dir: Path, clock: MockClock) -> Iterator[Server]:
    srv = Server(fake, socket_path(runtime_dir), clock=clock.monotonic).start()
    yield srv
    srv.stop()


def _only_connection(server: Server) -> Connection:
    wait_for(lambda: len(server._conns) == 1, WAIT, message="the connection accepted")
    (conn,) = server._conns.values()
    return conn


def test_a_connection_is_live_while_it_takes_its_output(
        server: Server, runtime_dir: Path, clock: MockClock) -> None:
    raw = RawClient(socket_path(runtime_dir))
    conn = _only_connection(server)
    assert conn.live(5.0)
    clock.advance(60.0)
    assert conn.live(5.0)  # nothing to send for a minute: still live
    # The peer stops reading: output piles up in the server.
    data = b"\x00\x00\x00\x01\xc0" * 20_000  # frames holding msgpack nil
    sent = 0
    while conn.buffered() == 0:
        assert conn.send(data)
        sent += len(data)
    wait_for(lambda: conn.events & selectors.EVENT_WRITE, WAIT, message="write interest")
    clock.advance(4.9)
    assert conn.live(5.0)
    clock.advance(0.2)
    assert not conn.live(5.0)  # 5.1 s with output waiting and none of it taken
    # It reads again: everything drains and the connection is live.
    got = 0
    while got < sent:
        got += len(raw.sock.recv(1 << 20))
    wait_for(lambda: conn.buffered() == 0, WAIT, message="drained")
    assert conn.live(5.0)
    raw.close()
    wait_for(lambda: conn.closed, WAIT, message="closed")
    assert not conn.live(5.0)


def test_partial_progress_keeps_a_connection_live(
        server: Server, runtime_dir: Path, clock: MockClock) -> None:
    raw = RawClient(socket_path(runtime_dir))
    conn = _only_connection(server)
    while conn.buffered() < 8 << 20:
        assert conn.send(b"\x00\x00\x00\x01\xc0" * 100_000)
    for _ in range(5):  # a slow reader: output never drains, but some is always taken
        clock.advance(3.0)
        before = conn.buffered()
        got = 0
        while got < 1 << 20:
            got += len(raw.sock.recv(1 << 20))
        wait_for(lambda b=before: conn.buffered() < b, WAIT, message="progress")
        assert conn.buffered() > 0 and conn.live(5.0)
    raw.close()


class Listener(Editor):
    def __init__(self, module_id: str = "listener") -> None:
        super().__init__(module_id, subscribe=("src",))
        self.notices: list[dict[str, Any]] = []

    def on_swept(self, notice: dict[str, Any]) -> None:
        self.notices.append(notice)


def test_the_client_registers_a_swept_module_again_and_tells_it(
        server: Server, fake: FakeCoordinator, runtime_dir: Path) -> None:
    with connect(runtime_dir, timeout=WAIT) as client:
        listener = Listener()
        client.register(listener).get()
        conn = _only_connection(server)
        notice = {"reason": "its connection has taken none of its output", "idle_s": 31.0,
                  "inactive_after_ms": 30000.0}
        conn.swept("listener", notice)
        assert fake.wait_for(lambda: len(fake.registrations) == 2)
        assert fake.registrations[1].module_id == "listener"
        assert fake.registrations[1].subscribe == ("src",)
        wait_for(lambda: listener.notices, WAIT, message="on_swept called")
        assert listener.notices == [{**notice, "module_id": "listener"}]
        assert client.statistics().sweeps_notified == 1
        # A module without on_swept is registered again just the same; an unknown one is
        # only logged.
        client.register(Editor("plain", subscribe=("src",))).get()
        conn.swept("plain", notice)
        conn.swept("stranger", notice)
        assert fake.wait_for(lambda: [i.module_id for i in fake.registrations][3:] == [
            "plain"])
        wait_for(lambda: client.statistics().sweeps_notified == 3, WAIT, message="counted")
        assert client.statistics().callback_errors == 0
