"""A module that only listens stays subscribed while its connection is live; a stalled one
is swept, told, and comes back.

Unit tests: ``Connection.live`` with the real server over a real socket and a
:class:`MockClock`, and the client's handling of the ``swept`` event (the memory
manager's side is in ``test_memory.py``). Integration tests: the real daemon, with
``memory.inactive_after_ms`` of 1 s and ``cleanup_interval_ms`` of 0.2 s in its config,
and a real listening module in its own process. Every wait is bounded.
"""

from __future__ import annotations

import queue
import selectors
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonProcess, records, start_daemon, startswith, wait_for
from server_harness import (  # noqa: F401 - fixtures
    WAIT,
    Editor,
    FakeCoordinator,
    RawClient,
    fake,
    runtime_dir,
)

from modcoord.actors.clock import MockClock
from modcoord.supervisor.client import Client, connect
from modcoord.supervisor.daemon.server import Connection, Server
from modcoord.supervisor.protocol.paths import socket_path

DaemonFactory = Callable[..., DaemonProcess]
FAST_SWEEPS = {"memory": {"inactive_after_ms": 1000, "cleanup_interval_ms": 200}}


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


# -- integration: the real daemon and a real listening process -----------------------------------

LISTENER_SCRIPT = textwrap.dedent('''
    import sys, threading
    from modcoord.supervisor import connect

    class Listener:
        module_id = "listener"
        name = "Listener"
        supported_modes = {"MANUAL", "HYBRID", "FULLY_AUTO"}
        subscribe = ["src"]

        def on_mode_change(self, mode, strategy, context):
            return "ok"

        def on_batch(self, batch):
            for u in batch.updates:
                print("GOT", u.key, flush=True)

        def on_swept(self, notice):
            print("SWEPT", notice["reason"], flush=True)

    with connect(sys.argv[1], timeout=5) as client:
        client.register(Listener()).get(timeout=5)
        print("READY", flush=True)
        for line in sys.stdin:  # only listen; any line asks for the counters, EOF ends
            s = client.statistics()
            print("STATS", s.sweeps_notified, s.connection_losses, flush=True)
''')


class ListenerProcess:
    """The listening module in a process of its own; its stdout lines go to a queue."""

    def __init__(self, tmp_path: Path, runtime_dir: Path) -> None:
        script = tmp_path / "listener.py"
        script.write_text(LISTENER_SCRIPT)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(runtime_dir)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()
        self.wait_line(lambda line: line == "READY", 15)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def wait_line(self, match: Callable[[str], bool], timeout: float = 10.0) -> str:
        for line in self.seen:
            if match(line):
                return line
        import time

        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"the listener did not print the line within {timeout}"
                                     f" s; it printed {self.seen[-5:]}, stderr "
                                     f"{self.stderr[-5:]}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(line)
            if match(line):
                return line

    def got(self, key: str, timeout: float = 10.0) -> None:
        self.wait_line(lambda line: line == f"GOT {key}", timeout)

    def stats(self) -> tuple[int, int]:
        assert self.proc.stdin is not None
        before = len([s for s in self.seen if s.startswith("STATS")])
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        seen = 0

        def nth_stats(line: str) -> bool:
            nonlocal seen
            if line.startswith("STATS"):
                seen += 1
            return line.startswith("STATS") and seen > before

        line = self.wait_line(nth_stats)
        _, swept, losses = line.split()
        return int(swept), int(losses)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


class Source:
    module_id = "src"
    name = "Source"
    supported_modes = {"MANUAL", "HYBRID", "FULLY_AUTO"}
    subscribe: list[str] = []

    def on_mode_change(self, mode: str, strategy: str, context: Any) -> str:
        return "ok"

    def on_batch(self, batch: Any) -> None:
        pass


@pytest.fixture
def listening(daemon_factory: DaemonFactory, tmp_path: Path
              ) -> Iterator[tuple[DaemonProcess, ListenerProcess, Client]]:
    d = start_daemon(daemon_factory, tmp_path / "d", hybrid=FAST_SWEEPS)
    listener = ListenerProcess(tmp_path, d.runtime_dir)
    try:
        with d.connect() as publisher:
            publisher.register(Source()).get(timeout=5)
            yield d, listener, publisher
    finally:
        listener.close()


def _memory(client: Client) -> dict[str, Any]:
    return client.status().get(timeout=5)["memory"]  # type: ignore[no-any-return]


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_module_that_only_listens_keeps_receiving(
        listening: tuple[DaemonProcess, ListenerProcess, Client]) -> None:
    d, listener, publisher = listening
    import time

    # Five times memory.inactive_after_ms, with sweeps every 0.2 s: the listener never
    # publishes or coordinates, and must keep every update.
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < 5.0:
        publisher.publish("src", f"k{n}", n).get(timeout=5)
        listener.got(f"k{n}")
        n += 1
        threading.Event().wait(0.25)
    assert n >= 5  # spread over the whole 5 s
    memory = _memory(publisher)
    assert memory["sweeps_total"] == 0 and memory["modules_swept"] == 0
    assert memory["cleanups"]["interval"] >= 15  # the sweeps did run
    assert records(d, message=startswith("module listener inactive")) == []
    assert listener.stats() == (0, 0)


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_a_stalled_listener_is_swept_told_and_receives_again(
        listening: tuple[DaemonProcess, ListenerProcess, Client]) -> None:
    d, listener, publisher = listening
    publisher.publish("src", "before", 0).get(timeout=5)
    listener.got("before")
    listener.proc.send_signal(signal.SIGSTOP)  # it stops reading, connection open
    try:
        # Enough output to fill the socket buffers: the rest waits in the daemon.
        for i in range(40):
            publisher.publish("src", f"bulk{i}", "x" * 100_000).get(timeout=5)
        swept = wait_for(lambda: records(d, message=startswith("module listener inactive")),
                         15, message="the sweep of the stalled listener")
        assert "connection" in swept[0]["message"] and swept[0]["module"] == "listener"
        memory = _memory(publisher)
        assert memory["modules_swept"] == 1 and memory["sweeps_total"] == 1
    finally:
        listener.proc.send_signal(signal.SIGCONT)
    # It reads what waited, then the swept event: told, it registers again.
    for i in range(40):
        listener.got(f"bulk{i}", 20)
    notice = listener.wait_line(startswith("SWEPT"), 10)
    assert "connection" in notice
    wait_for(lambda: _memory(publisher)["modules_swept"] == 0, 10,
             message="the listener re-activated")
    assert _memory(publisher)["reactivations_total"] >= 1
    publisher.publish("src", "after", 1).get(timeout=5)
    listener.got("after")
    assert listener.stats() == (1, 0)  # told once, never disconnected
    assert any("registering it again" in line for line in listener.stderr)
