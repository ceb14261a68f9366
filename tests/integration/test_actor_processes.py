"""Actors in processes of their own, through the real daemon and real module processes:
where each actor runs (``status``), SIGKILL under a publishing load (nothing accepted is
lost, the actor is back with a new pid, the restart counted), a hung (SIGSTOPped) process
replaced by the heartbeat, escalation past the restart intensity, and ``--kill`` refused
for an actor inside the daemon."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonProcess, gone, records, wait_for, wait_record

pytestmark = pytest.mark.integration

DaemonFactory = Callable[..., DaemonProcess]

SUBSCRIBER = textwrap.dedent("""\
    import sys
    from modcoord.supervisor import connect

    out = open(sys.argv[2], "a", buffering=1)

    class Sub:
        module_id = sys.argv[3]
        name = sys.argv[3]
        supported_modes = ["MANUAL", "HYBRID", "FULLY_AUTO"]
        subscribe = ["pub"]

        def on_mode_change(self, mode, strategy, context):
            return {"ok": True}

        def on_batch(self, batch):
            out.write("".join(f"{u.key} {u.seq}\\n" for u in batch.updates))

    with connect(runtime_dir=sys.argv[1], timeout=10, reconnect=False) as client:
        client.register(Sub()).get(10)
        print("ready", flush=True)
        sys.stdin.read()  # until the test closes stdin
    """)

PUBLISHER = textwrap.dedent("""\
    import sys, time
    from modcoord.supervisor import connect

    total, chunk = int(sys.argv[3]), 50
    out = open(sys.argv[2], "a", buffering=1)

    class Pub:
        module_id = "pub"
        name = "pub"
        supported_modes = ["MANUAL", "HYBRID", "FULLY_AUTO"]
        subscribe = []

        def on_mode_change(self, mode, strategy, context):
            return {"ok": True}

    with connect(runtime_dir=sys.argv[1], timeout=20, reconnect=False) as client:
        client.register(Pub()).get(10)
        for start in range(0, total, chunk):
            futures = [(f"k{i}", client.publish("pub", f"k{i}", {"i": i},
                                                "high" if i % 7 == 0 else "medium"))
                       for i in range(start, min(total, start + chunk))]
            out.write("".join(f"{key} {f.get(20)}\\n" for key, f in futures))
            time.sleep(0.02)  # quiet-period: a steady load for seconds, not one burst
    print("done", flush=True)
    """)


class Modules:
    """The subscriber and the publisher as real processes; stopped at teardown."""

    def __init__(self, d: DaemonProcess, root: Path) -> None:
        self.d = d
        self.received = root / "received.txt"
        self.accepted = root / "accepted.txt"
        self.procs: list[subprocess.Popen[str]] = []

    def _spawn(self, source: str, *args: str) -> subprocess.Popen[str]:
        p = subprocess.Popen([sys.executable, "-c", source, str(self.d.runtime_dir), *args],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def subscriber(self, module_id: str = "sub") -> None:
        received = self.received if module_id == "sub" else self.received.with_name(
            f"received-{module_id}.txt")
        p = self._spawn(SUBSCRIBER, str(received), module_id)
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"

    def publisher(self, total: int) -> subprocess.Popen[str]:
        return self._spawn(PUBLISHER, str(self.accepted), str(total))

    @staticmethod
    def _pairs(path: Path) -> list[tuple[str, int]]:
        try:
            lines = path.read_text().split("\n")[:-1]
        except FileNotFoundError:
            return []
        return [(k, int(s)) for k, s in (line.split() for line in lines)]

    def accepted_seqs(self) -> dict[str, int]:
        return dict(self._pairs(self.accepted))

    def received_seqs(self, module_id: str = "sub") -> dict[str, set[int]]:
        path = self.received if module_id == "sub" else self.received.with_name(
            f"received-{module_id}.txt")
        out: dict[str, set[int]] = {}
        for key, seq in self._pairs(path):
            out.setdefault(key, set()).add(seq)
        return out

    def missing(self, module_id: str = "sub") -> list[str]:
        got = self.received_seqs(module_id)
        return [k for k, s in self.accepted_seqs().items() if s not in got.get(k, ())]

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                if p.stdin is not None:
                    p.stdin.close()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)


@pytest.fixture
def modules_of(tmp_path: Path) -> Iterator[Callable[[DaemonProcess], Modules]]:
    made: list[Modules] = []

    def make(d: DaemonProcess) -> Modules:
        m = Modules(d, tmp_path)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


def _actors(d: DaemonProcess) -> dict[str, dict[str, Any]]:
    with d.connect(timeout=10, reconnect=False) as c:
        actors: dict[str, dict[str, Any]] = c.status().get(10)["actors"]
    return actors


def _running_pid(d: DaemonProcess, actor: str) -> int:
    """The actor's pid once its process runs (a fresh start forks in the background)."""
    def pid() -> int:
        a = _actors(d)[actor]
        return int(a["pid"]) if a["pid"] and a["state"] == "running" else 0
    found: int = wait_for(pid, 15, message=f"{actor}'s process running")
    return found


def _start(daemon_factory: DaemonFactory, **supervisor: Any) -> DaemonProcess:
    d = daemon_factory("--allow-fault-injection", start=False)
    supervisor.setdefault("out_of_process", ["batcher", "debouncer"])
    d.edit_config("daemon", {"supervisor": {"max_restarts": 20, "within_s": 30,
                                            "backoff_initial_ms": 1, **supervisor}})
    return d.start()


def test_status_shows_where_each_actor_runs(daemon_factory: DaemonFactory) -> None:
    d = _start(daemon_factory)
    batcher, debouncer = _running_pid(d, "batcher"), _running_pid(d, "debouncer")
    actors = _actors(d)
    assert len({d.pid, batcher, debouncer}) == 3
    for name in ("monitor", "memory", "cache"):
        assert actors[name]["pid"] == d.pid and actors[name]["process"] == "daemon"
    for name in ("batcher", "debouncer"):
        assert actors[name]["process"] == "own"
    for a in actors.values():
        assert a["rss_bytes"] > 1 << 20
        assert isinstance(a["cpu_seconds"], float) and a["cpu_seconds"] >= 0
    text = d.cli("status")
    assert text.code == 0, text.err


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("actor", ["debouncer", "batcher"])
def test_sigkill_under_load_loses_no_accepted_update(
        actor: str, daemon_factory: DaemonFactory,
        modules_of: Callable[[DaemonProcess], Modules]) -> None:
    d = _start(daemon_factory)
    old = _running_pid(d, actor)
    m = modules_of(d)
    m.subscriber()
    total = 4000
    pub = m.publisher(total)
    wait_for(lambda: len(m.accepted_seqs()) >= 1000, 30, message="publishing under way")
    killed = d.cli("debug", "crash", actor, "--kill")
    assert killed.code == 0, killed.err
    assert f"process of {actor} killed" in killed.out
    wait_for(lambda: gone(old), 10, message="the killed process gone")
    assert pub.wait(60) == 0
    assert len(m.accepted_seqs()) == total
    wait_for(lambda: not m.missing(), 30, message="every accepted update delivered")
    new = _running_pid(d, actor)
    assert new != old
    actors = _actors(d)
    assert actors[actor]["restarts"] == 1
    assert all(a["alive"] for a in actors.values()), actors
    assert records(d, message="accepted updates replayed after an actor process ended")


@pytest.mark.timeout(90)
def test_every_subscriber_gets_every_batch_of_an_out_of_process_batcher(
        daemon_factory: DaemonFactory,
        modules_of: Callable[[DaemonProcess], Modules]) -> None:
    """Three subscribers of one source: a batch crosses the pipe once and reaches each."""
    d = _start(daemon_factory)
    _running_pid(d, "batcher")
    m = modules_of(d)
    names = ("sub", "sub-b", "sub-c")
    for name in names:
        m.subscriber(name)
    total = 600
    assert m.publisher(total).wait(60) == 0
    assert len(m.accepted_seqs()) == total
    for name in names:
        wait_for(lambda name=name: not m.missing(name), 30,
                 message=f"{name} to get every accepted update")
    batcher = _actors(d)["batcher"]
    assert batcher["process"] == "own" and batcher["restarts"] == 0


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_stopped_process_is_found_by_the_heartbeat_and_replaced(
        daemon_factory: DaemonFactory,
        modules_of: Callable[[DaemonProcess], Modules]) -> None:
    d = _start(daemon_factory, heartbeat_interval_ms=50, heartbeat_timeout_ms=600)
    old = _running_pid(d, "batcher")
    m = modules_of(d)
    m.subscriber()
    os.kill(old, signal.SIGSTOP)
    try:
        pub = m.publisher(300)  # accepted while the batcher is stopped
        hung = wait_record(d, 15, message="actor process not answering the heartbeat: killed")
        assert hung["actor_pid"] == old and hung["silent_s"] > 0.6
        wait_for(lambda: gone(old), 10, message="the stopped process killed")
    finally:
        if not gone(old):
            os.kill(old, signal.SIGCONT)
    assert pub.wait(60) == 0
    wait_for(lambda: not m.missing(), 30, message="every accepted update delivered")
    assert _running_pid(d, "batcher") != old
    assert _actors(d)["batcher"]["restarts"] == 1


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_killing_past_the_intensity_escalates_and_flushes(
        daemon_factory: DaemonFactory,
        modules_of: Callable[[DaemonProcess], Modules]) -> None:
    d = _start(daemon_factory, max_restarts=1, within_s=60)
    m = modules_of(d)
    m.subscriber()
    pub = m.publisher(500)
    assert pub.wait(60) == 0
    first = _running_pid(d, "debouncer")
    assert d.cli("debug", "crash", "debouncer", "--kill").code == 0
    wait_for(lambda: _running_pid(d, "debouncer") != first, 15, message="first restart")
    assert d.cli("debug", "crash", "batcher", "--kill").code == 0  # the second: too many
    assert d.wait_exit(20) == 1
    wait_for(lambda: not m.missing(), 15, message="every accepted update delivered")
    logged = records(d)
    assert any("intensity" in r.get("reason", "") for r in logged
               if r["level"] == "CRITICAL"), [r["message"] for r in logged]


def test_kill_is_refused_for_an_actor_inside_the_daemon(
        daemon_factory: DaemonFactory) -> None:
    d = _start(daemon_factory, out_of_process=["debouncer"])
    _running_pid(d, "debouncer")
    assert _actors(d)["batcher"]["pid"] == d.pid
    refused = d.cli("debug", "crash", "batcher", "--kill")
    assert refused.code == 1
    assert "batcher runs inside the daemon" in refused.err
    assert "supervisor.out_of_process" in refused.err
    assert _actors(d)["batcher"]["restarts"] == 0
