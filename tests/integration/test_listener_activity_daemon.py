"""A module that only listens keeps receiving through the real daemon; a stalled one is
swept, told, and comes back.

The daemon runs with ``memory.inactive_after_ms`` of 1 s and ``cleanup_interval_ms`` of
0.2 s in its config; the listening module is a real process. The unit side (``Connection.live``,
the client's handling of the ``swept`` event) is in ``unit/test_listener_activity.py``. Every
wait is bounded.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import (
    DaemonFactory,
    DaemonProcess,
    records,
    start_daemon,
    startswith,
    wait_for,
)
from server_harness import Publisher

from modcoord.supervisor.client import Client
from modcoord.supervisor.daemon.config import MODES

FAST_SWEEPS = {"memory": {"inactive_after_ms": 1000, "cleanup_interval_ms": 200}}


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


@pytest.fixture
def listening(daemon_factory: DaemonFactory, tmp_path: Path
              ) -> Iterator[tuple[DaemonProcess, ListenerProcess, Client]]:
    d = start_daemon(daemon_factory, tmp_path / "d", hybrid=FAST_SWEEPS)
    listener = ListenerProcess(tmp_path, d.runtime_dir)
    try:
        with d.connect() as publisher:
            publisher.register(Publisher("src", "Source", MODES)).get(timeout=5)
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
    assert records(d, message=startswith("module inactive"), module="listener") == []
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
        swept = wait_for(lambda: records(d, message=startswith("module inactive"),
                                         module="listener"),
                         15, message="the sweep of the stalled listener")
        assert "connection" in swept[0]["reason"] and swept[0]["idle_s"] > 0
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
