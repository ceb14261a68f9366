"""Integration: the real daemon, real module processes, real CLI processes.

Modules live in spawned processes (:class:`ModuleProcess`): each connects with
``modcoord.supervisor.connect``, registers its modules, reports every ``on_batch`` and
``on_mode_change`` back through a queue, and publishes on command. The test process is a
client too (control calls, statistics). Every wait is bounded.

Two daemons are shared per module: ``shared`` (HYBRID, packaged configs, no fault
injection) and ``crashy`` (fault injection, a generous restart intensity and timings that
keep updates pending long enough to crash an actor on them). Tests leave the shared one as
they found it: HYBRID and no module registered (the ``hd`` fixture checks).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import socket
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import yaml
from daemon_harness import DaemonProcess, receive_answer, wait_for

from modcoord.actors.errors import InvalidMessageError, ModcoordError
from modcoord.supervisor.daemon.config import MODES

pytestmark = pytest.mark.integration

ACTORS = ("debouncer", "cache", "batcher", "memory", "monitor")
RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3}
_SPAWN = multiprocessing.get_context("spawn")


# -- module processes ------------------------------------------------------------------------


class _ChildModule:
    """A module living in a spawned process; reports its callbacks to the test."""

    def __init__(self, spec: dict[str, Any], events: Any) -> None:
        self.module_id = spec["module_id"]
        self.name = f"itest {self.module_id}"
        self.supported_modes = set(spec.get("modes", MODES))
        self.subscribe = list(spec.get("subscribe", []))
        self._behavior = spec.get("behavior", "ok")
        self._events = events

    def on_mode_change(self, mode: str, strategy: str, context: dict[str, Any]) -> Any:
        self._events.put(("mode_change", self.module_id, mode, strategy, dict(context),
                          os.getpid()))
        if self._behavior == "raise":
            raise RuntimeError(f"{self.module_id} refuses {mode}")
        return {"pid": os.getpid(), "module_id": self.module_id, "mode": mode}

    def on_batch(self, batch: Any) -> None:
        updates = [[u.module_id, u.key, u.payload, u.priority, u.seq] for u in batch.updates]
        self._events.put(("batch", self.module_id, batch.batch_id, batch.reason, updates,
                          time.monotonic()))


def _module_main(runtime_dir: str, specs: list[dict[str, Any]], conn: Any, events: Any) -> None:
    """Body of a module process: register, then obey commands from the pipe."""
    from modcoord.supervisor import connect

    try:
        coord = connect(runtime_dir=runtime_dir, timeout=10, name="itest-module")
        for spec in specs:
            coord.register(_ChildModule(spec, events)).get(timeout=10)
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    with coord:
        conn.send(("ready", os.getpid()))
        while conn.poll(120):
            cmd = conn.recv()
            if cmd[0] == "exit":
                conn.send(("ok", None))
                return
            try:
                if cmd[0] == "publish":
                    t0 = time.monotonic()
                    futures = [coord.publish(*item) for item in cmd[1]]
                    conn.send(("ok", {"seqs": [f.get(timeout=10) for f in futures], "t0": t0}))
                else:
                    conn.send(("error", f"unknown command {cmd[0]!r}"))
            except Exception as exc:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))


def mod(module_id: str, subscribe: list[str] | None = None, behavior: str = "ok"
        ) -> dict[str, Any]:
    return {"module_id": module_id, "subscribe": subscribe or [], "behavior": behavior}


class ModuleProcess:
    """A spawned process hosting modules (see :func:`_module_main`)."""

    def __init__(self, runtime_dir: Path, *specs: dict[str, Any]) -> None:
        self.conn, child = _SPAWN.Pipe()
        self.queue = _SPAWN.Queue()
        self.proc = _SPAWN.Process(target=_module_main,
                                   args=(str(runtime_dir), list(specs), child, self.queue),
                                   daemon=True)
        self.events: list[tuple[Any, ...]] = []
        self.pid = 0

    def start(self) -> ModuleProcess:
        self.proc.start()
        return self

    def _recv(self, timeout: float) -> Any:
        return receive_answer(self.conn, f"module process {self.proc.pid}", timeout)

    def wait_ready(self, timeout: float = 30.0) -> ModuleProcess:
        self.pid = self._recv(timeout)
        return self

    def publish(self, items: list[tuple[str, str, Any, str]], timeout: float = 20.0
                ) -> dict[str, Any]:
        """Publish ``(module_id, key, payload, priority)`` items pipelined; returns
        ``{"seqs": [...], "t0": monotonic time before the first publish}``."""
        self.conn.send(("publish", items))
        result: dict[str, Any] = self._recv(timeout)
        return result

    def _pull(self, timeout: float) -> None:
        try:
            self.events.append(self.queue.get(timeout=timeout))
        except queue.Empty:
            return
        while True:
            try:
                self.events.append(self.queue.get_nowait())
            except queue.Empty:
                return

    def wait_events(self, condition: Callable[[ModuleProcess], Any], timeout: float = 10.0,
                    message: str = "events") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = condition(self)
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {message}; "
                                     f"got {self.events!r:.2000}")
            self._pull(min(remaining, 0.5))

    def batches(self, module_id: str | None = None) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == "batch"
                and (module_id is None or e[1] == module_id)]

    def updates(self, module_id: str | None = None) -> list[list[Any]]:
        return [u for b in self.batches(module_id) for u in b[4]]

    def latest(self, module_id: str | None = None) -> dict[tuple[str, str], list[Any]]:
        out: dict[tuple[str, str], list[Any]] = {}
        for u in self.updates(module_id):
            out[(u[0], u[1])] = u
        return out

    def mode_changes(self) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == "mode_change"]

    def stop(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(("exit",))
                self._recv(5)
            except (AssertionError, OSError, EOFError):
                pass
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(5)


@pytest.fixture
def modules() -> Iterator[Callable[..., ModuleProcess]]:
    """``modules(runtime_dir, *specs)`` starts a module process; all are stopped after."""
    made: list[ModuleProcess] = []

    def start(runtime_dir: Path, *specs: dict[str, Any]) -> ModuleProcess:
        p = ModuleProcess(runtime_dir, *specs).start()
        made.append(p)
        return p

    yield start
    for p in made:
        p.stop()


def start_all(*procs: ModuleProcess) -> None:
    for p in procs:
        p.wait_ready()


# -- daemons ---------------------------------------------------------------------------------


def _edit_yaml(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path_factory.mktemp("shared")).start()
    yield d
    d.stop()


@pytest.fixture
def hd(shared: DaemonProcess) -> DaemonProcess:
    """The shared daemon, checked to be up, in HYBRID and with no module registered."""
    assert shared.proc is not None and shared.proc.poll() is None, "shared daemon died"
    with shared.connect() as c:
        if c.status().get(10)["mode"] != "HYBRID":
            c.set_mode("HYBRID").get(10)
        wait_for(lambda: c.status().get(10)["modules"] == 0, 10,
                 message="modules of earlier tests to go")
    return shared


@pytest.fixture
def client(hd: DaemonProcess) -> Iterator[Any]:
    with hd.connect(timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def crashy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """Fault injection on, restart intensity high enough for ten crashes, and timings that
    keep updates pending long enough to crash an actor on them (a CLI run takes 0.2 s, more
    on a loaded machine, over a second under heavy load): in HYBRID they wait 3 s in the
    debouncer, in FULLY_AUTO 3 s in the batcher."""
    d = DaemonProcess(tmp_path_factory.mktemp("crashy"), "--allow-fault-injection")
    _edit_yaml(d.config_dir / "daemon.yaml",
               lambda c: c["supervisor"].update(max_restarts=100, within_s=30))

    def hybrid(c: dict[str, Any]) -> None:
        c["debounce"].update(delay_ms=3000, critical_delay_ms=50, max_wait_ms=6000)
        c["batch"].update(window_ms=200)

    def fully_auto(c: dict[str, Any]) -> None:
        c["debounce"].update(delay_ms=20, critical_delay_ms=10, max_wait_ms=100)
        c["batch"].update(window_ms=3000)

    _edit_yaml(d.config_dir / "hybrid.yaml", hybrid)
    _edit_yaml(d.config_dir / "fully_auto.yaml", fully_auto)
    d.start()
    yield d
    d.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- publish / deliver -----------------------------------------------------------------------


def test_publish_delivers_latest_payload_per_key_across_processes(
        hd: DaemonProcess, modules: Callable[..., ModuleProcess]) -> None:
    sub = modules(hd.runtime_dir, mod("sub", subscribe=["pub"]))
    pub = modules(hd.runtime_dir, mod("pub"))
    start_all(sub, pub)
    assert len({sub.pid, pub.pid, hd.pid, os.getpid()}) == 4

    items = [("pub", f"doc-{k}", {"doc": k, "rev": r}, "medium")
             for r in range(5) for k in range(4)]
    seqs = pub.publish(items)["seqs"]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(items)
    last_seq = {f"doc-{k}": seqs[4 * 4 + k] for k in range(4)}

    sub.wait_events(lambda p: len(p.latest("sub")) == 4
                    and all(u[2]["rev"] == 4 for u in p.latest("sub").values()),
                    message="the latest revision of every doc")
    for (source, key), update in sub.latest("sub").items():
        module_id, key_, payload, priority, seq = update
        assert (module_id, key_) == ("pub", key) == (source, key)
        assert payload == {"doc": int(key.split("-")[1]), "rev": 4}
        assert priority == "medium"
        assert seq == last_seq[key]
    # The publisher subscribes to nothing, so it got nothing.
    assert pub.batches() == []


def test_rapid_publishes_collapse_into_one_delivery(
        hd: DaemonProcess, client: Any, modules: Callable[..., ModuleProcess]) -> None:
    sub = modules(hd.runtime_dir, mod("sub", subscribe=["typist"]))
    pub = modules(hd.runtime_dir, mod("typist"))
    start_all(sub, pub)
    before = client.debouncer.statistics().get(10)

    seqs = pub.publish([("typist", "hot", {"n": i}, "medium") for i in range(100)])["seqs"]
    sub.wait_events(lambda p: ("typist", "hot") in p.latest("sub"), message="the hot key")
    # A later key published now is emitted after any straggler of "hot" would be.
    pub.publish([("typist", "sentinel", {"n": -1}, "medium")])
    sub.wait_events(lambda p: ("typist", "sentinel") in p.latest("sub"), message="sentinel")

    hot = [u for u in sub.updates("sub") if u[1] == "hot"]
    assert len(hot) == 1
    assert hot[0][2] == {"n": 99} and hot[0][4] == seqs[-1]
    after = client.debouncer.statistics().get(10)
    assert after["received"] - before["received"] == 101
    assert after["emitted"] - before["emitted"] == 2
    assert after["collapsed"] - before["collapsed"] == 99
    assert after["pending"] == 0


def test_critical_update_overtakes_normal_one(
        hd: DaemonProcess, modules: Callable[..., ModuleProcess]) -> None:
    sub = modules(hd.runtime_dir, mod("sub", subscribe=["sensor"]))
    pub = modules(hd.runtime_dir, mod("sensor"))
    start_all(sub, pub)

    # The normal one is published first, the critical one right after it.
    sent = pub.publish([("sensor", "temperature", {"c": 21}, "medium"),
                        ("sensor", "alarm", {"fire": True}, "critical")])
    normal_seq, critical_seq = sent["seqs"]
    assert normal_seq < critical_seq
    sub.wait_events(lambda p: len(p.updates("sub")) == 2, message="both updates")

    batches = sub.batches("sub")
    index = {u[1]: i for i, b in enumerate(batches) for u in b[4]}
    assert index["alarm"] < index["temperature"], "critical update did not arrive first"
    critical_batch, normal_batch = batches[index["alarm"]], batches[index["temperature"]]
    assert critical_batch[3] == "critical"
    assert [u[1] for u in critical_batch[4]] == ["alarm"]
    critical_latency = critical_batch[5] - sent["t0"]
    normal_latency = normal_batch[5] - sent["t0"]
    assert critical_latency < 0.6 * normal_latency


def _expected_order(updates: list[list[Any]]) -> list[list[Any]]:
    """Priority, then (within a priority) modules by their first seq, then seq."""
    first: dict[tuple[int, str], int] = {}
    for u in updates:
        k = (RANK[u[3]], u[0])
        first[k] = min(first.get(k, u[4]), u[4])
    return sorted(updates, key=lambda u: (RANK[u[3]], first[(RANK[u[3]], u[0])], u[4]))


def test_batches_are_ordered_by_priority_and_grouped_by_module(
        hd: DaemonProcess, modules: Callable[..., ModuleProcess]) -> None:
    sub = modules(hd.runtime_dir, mod("sub", subscribe=["ordA", "ordB"]))
    pub = modules(hd.runtime_dir, mod("ordA"), mod("ordB"))
    start_all(sub, pub)
    plan = [("ordA", "a1", "high"), ("ordB", "b1", "low"), ("ordA", "a2", "low"),
            ("ordB", "b2", "high"), ("ordA", "a3", "medium"), ("ordB", "b3", "medium"),
            ("ordB", "b4", "high"), ("ordA", "a4", "high"), ("ordA", "a5", "low"),
            ("ordB", "b5", "low")]
    seqs = pub.publish([(m, k, {"key": k}, p) for m, k, p in plan])["seqs"]
    sub.wait_events(lambda p: len(p.updates("sub")) == len(plan), message="every update")

    batches = sub.batches("sub")
    assert len(batches) == 1, f"expected one batch, got {batches}"
    got = batches[0][4]
    published = [[m, k, {"key": k}, p, s] for (m, k, p), s in zip(plan, seqs, strict=True)]
    assert sorted(got, key=lambda u: u[4]) == published  # every field as published
    assert got == _expected_order(published)
    # Spelled out: priorities never go up, and within one priority each module is one run.
    assert [RANK[u[3]] for u in got] == sorted(RANK[u[3]] for u in got)
    for rank in {RANK[u[3]] for u in got}:
        runs = [u[0] for u in got if RANK[u[3]] == rank]
        collapsed = [m for i, m in enumerate(runs) if i == 0 or runs[i - 1] != m]
        assert len(collapsed) == len(set(collapsed)), f"module interleaved: {runs}"
    assert [u[1] for u in got] == ["a1", "a4", "b2", "b4", "a3", "b3",
                                   "b1", "b5", "a2", "a5"]


# -- coordination ----------------------------------------------------------------------------


def test_coordination_is_cached_per_mode_and_context(
        hd: DaemonProcess, client: Any, modules: Callable[..., ModuleProcess]) -> None:
    proc = modules(hd.runtime_dir, mod("co1"), mod("co2"))
    start_all(proc)
    ctx = {"user": unique("u"), "view": "main", "zoom": 2}
    reordered = dict(reversed(list(ctx.items())))
    assert list(reordered) != list(ctx)

    first = client.coordinate("HYBRID", ctx).get(10)
    assert first.cached is False and first.errors == {}
    assert first.mode == "HYBRID" and first.strategy == "balanced"
    assert first.results == {m: {"pid": proc.pid, "module_id": m, "mode": "HYBRID"}
                             for m in ("co1", "co2")}
    assert proc.pid not in (os.getpid(), hd.pid)

    second = client.coordinate("HYBRID", reordered).get(10)
    assert second.cached is True and second.results == first.results
    assert client.coordinate("hybrid", ctx).get(10).cached is True

    other_ctx = client.coordinate("HYBRID", {**ctx, "zoom": 3}).get(10)
    assert other_ctx.cached is False
    other_mode = client.coordinate("MANUAL", ctx).get(10)
    assert other_mode.cached is False and other_mode.strategy == "conservative"
    assert {r["mode"] for r in other_mode.results.values()} == {"MANUAL"}
    assert client.coordinate("MANUAL", reordered).get(10).cached is True

    # Modules only did the work of the three uncached coordinations (2 modules each);
    # one more uncached call is a marker: nothing else can be queued before its calls.
    client.coordinate("HYBRID", {"marker": unique("m")}).get(10)
    proc.wait_events(lambda p: len(p.mode_changes()) >= 8, message="mode changes")
    changes = proc.mode_changes()
    assert len(changes) == 8
    assert [c[4] for c in changes[:2]] == [ctx, ctx]
    assert all(c[5] == proc.pid for c in changes)


def test_fully_auto_does_not_cache(
        hd: DaemonProcess, client: Any, modules: Callable[..., ModuleProcess]) -> None:
    proc = modules(hd.runtime_dir, mod("fa1"))
    start_all(proc)
    ctx = {"job": unique("j")}
    try:
        client.set_mode("FULLY_AUTO").get(10)
        results = [client.coordinate("FULLY_AUTO", ctx).get(10) for _ in range(3)]
    finally:
        client.set_mode("HYBRID").get(10)
    assert [r.cached for r in results] == [False, False, False]
    assert all(r.results == {"fa1": {"pid": proc.pid, "module_id": "fa1",
                                     "mode": "FULLY_AUTO"}} for r in results)
    assert all(r.strategy == "aggressive" for r in results)


def test_coordination_reports_module_errors(
        hd: DaemonProcess, client: Any, modules: Callable[..., ModuleProcess]) -> None:
    good = modules(hd.runtime_dir, mod("good"))
    bad = modules(hd.runtime_dir, mod("bad", behavior="raise"))
    start_all(good, bad)
    ctx = {"case": unique("err")}
    result = client.coordinate("HYBRID", ctx).get(10)
    assert result.results == {"good": {"pid": good.pid, "module_id": "good", "mode": "HYBRID"}}
    assert set(result.errors) == {"bad"}
    assert "RuntimeError" in result.errors["bad"] and "bad refuses HYBRID" in result.errors["bad"]
    # A result with errors is not cached: the failing module is asked again.
    again = client.coordinate("HYBRID", ctx).get(10)
    assert again.cached is False and set(again.errors) == {"bad"}
    bad.wait_events(lambda p: len(p.mode_changes()) == 2, message="two calls")


def test_set_mode_notifies_modules_in_their_processes(
        hd: DaemonProcess, client: Any, modules: Callable[..., ModuleProcess]) -> None:
    p1 = modules(hd.runtime_dir, mod("mm1"))
    p2 = modules(hd.runtime_dir, mod("mm2"), mod("mm3"))
    start_all(p1, p2)
    try:
        answer = client.set_mode("MANUAL").get(10)
        assert answer["mode"] == "MANUAL" and answer["previous"] == "HYBRID"
        assert answer["errors"] == {}
        assert answer["results"] == {
            "mm1": {"pid": p1.pid, "module_id": "mm1", "mode": "MANUAL"},
            "mm2": {"pid": p2.pid, "module_id": "mm2", "mode": "MANUAL"},
            "mm3": {"pid": p2.pid, "module_id": "mm3", "mode": "MANUAL"},
        }
        assert client.status().get(10)["mode"] == "MANUAL"
        p1.wait_events(lambda p: p.mode_changes(), message="on_mode_change")
        (change,) = p1.mode_changes()
        assert change[1:4] == ("mm1", "MANUAL", "conservative") and change[5] == p1.pid
        assert change[4].get("previous_mode") == "HYBRID"

        printed = hd.cli("mode")
        assert printed.code == 0 and printed.out.strip() == "MANUAL"
        switched = hd.cli("mode", "fully_auto")
        assert switched.code == 0, switched.err
        assert "MANUAL" in switched.out and "FULLY_AUTO" in switched.out
        assert "3 modules notified" in switched.out
        assert hd.cli("mode").out.strip() == "FULLY_AUTO"
        assert client.status().get(10)["mode"] == "FULLY_AUTO"
        p2.wait_events(lambda p: len(p.mode_changes()) == 4, message="second switch")
        assert sorted((c[1], c[2], c[3]) for c in p2.mode_changes()[2:]) == [
            ("mm2", "FULLY_AUTO", "aggressive"), ("mm3", "FULLY_AUTO", "aggressive")]

        refused = hd.cli("mode", "TURBO")
        assert refused.code == 2 and "TURBO" in refused.err  # a usage error
        assert hd.cli("mode").out.strip() == "FULLY_AUTO"
    finally:
        client.set_mode("HYBRID").get(10)


# -- bad input -------------------------------------------------------------------------------


def _frame(obj: Any) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


class RawConnection:
    """A raw socket to the daemon, speaking (or not) its framing by hand."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5.0)
        self.sock.connect(str(path))
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, rid: Any, method: Any, params: Any) -> None:
        self.send(_frame([0, rid, method, params]))

    def read(self) -> Any:
        """The next message; ``EOFError`` once the daemon closed the connection."""
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack(">I", self.buf[:4])
                if len(self.buf) >= 4 + n:
                    body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
                    return msgpack.unpackb(body, raw=False, strict_map_key=False)
            chunk = self.sock.recv(65536)  # socket.timeout fails the test: bounded
            if not chunk:
                raise EOFError
            self.buf += chunk

    def call(self, rid: int, method: Any, params: Any) -> tuple[Any, Any]:
        self.request(rid, method, params)
        msg = self.read()
        assert msg[0] == 1 and msg[1] == rid, msg
        return msg[2], msg[3]

    def expect_closed(self) -> list[Any]:
        """Read until EOF; returns what came before it."""
        got = []
        while True:
            try:
                got.append(self.read())
            except EOFError:
                return got
            except ConnectionResetError:
                return got

    def close(self) -> None:
        self.sock.close()


def test_bad_input_is_refused_and_harms_nobody(
        hd: DaemonProcess, client: Any, modules: Callable[..., ModuleProcess]) -> None:
    sub = modules(hd.runtime_dir, mod("watcher", subscribe=["steady"]))
    start_all(sub)
    client.register(type("Steady", (), {
        "module_id": "steady", "name": "Steady", "supported_modes": set(MODES),
        "subscribe": [], "on_mode_change": lambda self, m, s, c: "ok",
        "on_batch": lambda self, b: None})()).get(10)
    published: list[int] = []

    def still_fine(step: str) -> None:
        assert client.status().get(10)["pid"] == hd.pid, step
        published.append(client.publish("steady", f"after-{step}", step).get(10))

    # Broken framing: error frame (if any) then the connection is closed.
    raw = RawConnection(hd.socket)
    raw.send(b"\xde\xad\xbe\xef" * 8)  # a length prefix of 3.7 GB
    replies = raw.expect_closed()
    assert all(r[0] == 1 and r[1] is None and r[2][0] == "FramingError" for r in replies)
    still_fine("garbage")

    raw = RawConnection(hd.socket)
    raw.send(struct.pack(">I", 6) + b"\xc1" * 6)  # a frame that is not msgpack
    replies = raw.expect_closed()
    assert replies and replies[0][2][0] == "InvalidMessageError", replies
    still_fine("undecodable")

    raw = RawConnection(hd.socket)
    raw.send(_frame(42))  # msgpack, but no envelope at all
    replies = raw.expect_closed()
    assert replies and replies[0][2][0] == "InvalidMessageError", replies
    still_fine("no-envelope")

    raw = RawConnection(hd.socket)
    raw.send(struct.pack(">I", (1 << 20) + 1) + b"x" * 1024)  # oversized frame
    replies = raw.expect_closed()
    assert replies and replies[0][2][0] == "FramingError", replies
    assert "exceeds" in replies[0][2][1]
    still_fine("oversized")

    raw = RawConnection(hd.socket)
    raw.send(struct.pack(">I", 100) + b"\x94" + b"\x00" * 9)  # truncated, then gone
    raw.close()
    still_fine("truncated")

    # Well-framed but wrong: a clear error to that request, the connection stays usable.
    raw = RawConnection(hd.socket)
    cases: list[tuple[Any, Any, str]] = [
        ("publish", {"module_id": 5, "key": "k", "payload": 1}, "module_id"),
        ("publish", {"module_id": "m", "key": "", "payload": 1}, "key"),
        ("publish", {"module_id": "m", "key": "k", "payload": 1, "priority": "urgent"},
         "priority"),
        ("publish", {"module_id": "steady", "key": "k", "payload": 1}, "not registered"),
        ("coordinate", {"mode": "HYBRID", "context": [1, 2]}, "context"),
        ("coordinate", {"mode": "TURBO"}, "TURBO"),
        ("coordinate", {"mode": 7}, "mode"),
        ("set_mode", {"mode": "TURBO"}, "TURBO"),
        ("set_mode", {}, "mode"),
        ("register", {"module_id": 7}, "module_id"),
        ("register", {"module_id": "x", "subscribe": 3}, "subscribe"),
        ("status", {"verbose": True}, "verbose"),
        ("status", [1, 2], "map"),
        ("crash", {"actor": "kernel"}, "actor"),
        ("actor", {"actor": "cache", "method": "_private"}, "method"),
        ("actor", {"actor": "cache", "method": "explode"}, "explode"),
        ("launch_missiles", {}, "unknown method"),
        (17, {}, "method"),
    ]
    for i, (method, params, needle) in enumerate(cases, start=1):
        error, result = raw.call(i, method, params)
        assert error is not None and result is None, (method, params)
        assert error[0] == "InvalidMessageError", (method, params, error)
        assert needle in error[1], (method, params, error)
    error, status = raw.call(999, "status", {})
    assert error is None and status["pid"] == hd.pid
    raw.send(_frame([9, 1000, "status", {}]))  # unknown message kind: answered, kept open
    reply = raw.read()
    assert reply[1] == 1000 and reply[2][0] == "InvalidMessageError"
    assert raw.call(1001, "status", {})[0] is None
    raw.close()
    still_fine("wrong-params")

    # The same through the real client.
    with pytest.raises(InvalidMessageError, match="priority"):
        client.publish("steady", "k", 1, priority="urgent").get(10)
    with pytest.raises(InvalidMessageError, match="TURBO"):
        client.set_mode("TURBO").get(10)
    with pytest.raises(InvalidMessageError, match="TURBO"):
        client.coordinate("TURBO", {}).get(10)
    with pytest.raises(ModcoordError):
        client.publish("not-mine", "k", 1).get(10)
    still_fine("client")

    # The real client never lost its connection; everything it published arrived.
    assert client.statistics().connection_losses == 0
    sub.wait_events(lambda p: {u[4] for u in p.updates("watcher")} >= set(published),
                    message="the well-behaved client's updates")
    status = hd.cli("status")
    assert status.code == 0 and hd.proc is not None and hd.proc.poll() is None


# -- connection lifecycle --------------------------------------------------------------------


def test_closing_a_connection_unregisters_its_modules(
        hd: DaemonProcess, client: Any, modules: Callable[..., ModuleProcess]) -> None:
    killed = modules(hd.runtime_dir, mod("k1"), mod("k2"), mod("k3", subscribe=["*"]))
    polite = modules(hd.runtime_dir, mod("p1"))
    start_all(killed, polite)

    def count() -> int:
        return int(client.status().get(10)["modules"])

    assert count() == 4
    killed.kill()  # SIGKILL: the socket is closed by the kernel, nothing is said
    wait_for(lambda: count() == 1, 10, message="k1..k3 unregistered")
    result = client.coordinate("HYBRID", {"after": unique("kill")}).get(10)
    assert set(result.results) == {"p1"} and result.errors == {}
    polite.stop()
    wait_for(lambda: count() == 0, 10, message="p1 unregistered")
    # The ids are free again.
    again = modules(hd.runtime_dir, mod("k1"))
    start_all(again)
    assert count() == 1


# -- status and insights ---------------------------------------------------------------------


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


def _check_status(status: dict[str, Any], pid: int) -> None:
    number = (int, float)
    assert status["pid"] == pid
    assert isinstance(status["uptime_s"], number) and status["uptime_s"] >= 0
    assert status["mode"] in MODES
    assert status["is_coordinating"] is True
    assert set(status["actors"]) == set(ACTORS)
    for name, actor in status["actors"].items():
        assert actor["alive"] is True, name
        assert isinstance(actor["restarts"], int) and not isinstance(actor["restarts"], bool)
    assert isinstance(status["modules"], int) and status["modules"] >= 0
    perf = status["performance_metrics"]
    lat = perf["coordination_latency_ms"]
    for q in ("p50", "p95", "p99"):
        assert isinstance(lat[q], number) and lat[q] >= 0
    assert lat["p50"] <= lat["p95"] <= lat["p99"]
    assert isinstance(perf["memory_usage_bytes"], int) and perf["memory_usage_bytes"] > 1 << 20
    assert isinstance(perf["active_subscriptions"], int)
    assert isinstance(perf["cache_hit_rate"], number) and 0 <= perf["cache_hit_rate"] <= 1
    assert isinstance(perf["batch_efficiency"], number) and perf["batch_efficiency"] >= 0
    assert isinstance(status["cache_stats"]["size"], int)
    assert isinstance(status["cache_stats"]["max_size"], int)
    assert status["cache_stats"]["max_size"] == 1000
    assert isinstance(status["batch_queue"]["pending"], int)
    assert status["last_reload_error"] is None or isinstance(status["last_reload_error"], str)


def test_status_json_has_every_field(
        hd: DaemonProcess, client: Any, modules: Callable[..., ModuleProcess]) -> None:
    proc = modules(hd.runtime_dir, mod("st1", subscribe=["st1"]), mod("st2"))
    start_all(proc)
    for i in range(3):  # some coordination latency samples and cache traffic
        client.coordinate("HYBRID", {"status-test": i % 2}).get(10)

    cli = hd.cli("status", "--json")
    assert cli.code == 0, cli.err
    printed = json.loads(cli.out)
    _check_status(printed, hd.pid)
    assert printed["modules"] == 2
    assert printed["last_reload_error"] is None
    assert printed["performance_metrics"]["coordination_latency_ms"]["p99"] > 0

    direct = client.status().get(10)
    _check_status(direct, hd.pid)
    assert printed["ok"] is True and direct["ok"] is True  # the same dict, "ok" included
    assert _shape(direct) == _shape(printed)
    assert direct["modules"] == printed["modules"]

    human = hd.cli("status")
    assert human.code == 0 and str(hd.pid) in human.out and "HYBRID" in human.out


def test_insights_json_shape(hd: DaemonProcess, client: Any) -> None:
    cli = hd.cli("insights", "--json")
    assert cli.code == 0, cli.err
    printed = json.loads(cli.out)
    assert set(printed) >= {"insights", "recommendations"}
    assert isinstance(printed["insights"], list) and printed["insights"]
    assert isinstance(printed["recommendations"], list)
    for insight in printed["insights"]:
        assert {"id", "severity", "observed", "threshold", "window_s", "message",
                "recommendation"} <= set(insight), insight
        assert isinstance(insight["id"], str) and insight["id"]
        assert isinstance(insight["message"], str) and insight["message"]
    direct = client.insights().get(10)
    assert printed["ok"] is True and direct["ok"] is True  # the same dict, "ok" included
    assert set(direct) == set(printed)
    assert sorted(i["id"] for i in direct["insights"]) == sorted(
        i["id"] for i in printed["insights"])


# -- fault injection -------------------------------------------------------------------------


def _restarts(client: Any, actor: str) -> int:
    return int(client.status().get(10)["actors"][actor]["restarts"])


@pytest.mark.parametrize("actor", ACTORS)
def test_crashing_an_actor_loses_no_pending_update(
        actor: str, crashy: DaemonProcess, modules: Callable[..., ModuleProcess]) -> None:
    sub_id, pub_id = f"sub-{actor}", f"pub-{actor}"
    sub = modules(crashy.runtime_dir, mod(sub_id, subscribe=[pub_id]))
    start_all(sub)
    with crashy.connect(timeout=10) as c:
        c.register(type("Pub", (), {
            "module_id": pub_id, "name": pub_id, "supported_modes": set(MODES),
            "subscribe": [], "on_mode_change": lambda self, m, s, x: "ok",
            "on_batch": lambda self, b: None})()).get(10)
        # Updates wait in the batcher in FULLY_AUTO, in the debouncer in HYBRID.
        c.set_mode("FULLY_AUTO" if actor == "batcher" else "HYBRID").get(10)
        base = _restarts(c, actor)
        expected: dict[str, int] = {}

        def publish(tag: str) -> None:
            futures = {f"{tag}-{i}": c.publish(pub_id, f"{tag}-{i}", {"tag": tag, "i": i},
                                               "low" if i % 2 else "high")
                       for i in range(6)}
            expected.update({k: f.get(10) for k, f in futures.items()})

        def pending() -> int:
            if actor == "batcher":
                return int(c.status().get(10)["batch_queue"]["pending"])
            return int(c.debouncer.pending().get(10))

        def make_pending(tag: str) -> int:
            """Publish 6 updates; returns the count pending once they are."""
            target = pending() + 6
            publish(tag)
            if actor == "batcher":  # wait until they left the debouncer for the batch queue
                wait_for(lambda: pending() == target, 5, interval=0.01,
                         message="updates queued in the batcher")
            assert pending() == target
            return target

        def delivered() -> bool:
            return {u[1]: u[4] for u in sub.updates(sub_id)} == expected

        holder = actor in ("debouncer", "batcher")

        # 1. The CLI, a plain exception.
        held = make_pending("cli")
        crashed = crashy.cli("debug", "crash", actor)
        assert crashed.code == 0, crashed.err
        assert actor in crashed.out
        wait_for(lambda: _restarts(c, actor) == base + 1, 10, message="first restart")
        if holder:  # the successor holds the very same pending work, then delivers it
            assert pending() == held
            sub.wait_events(lambda p: delivered(), message="first updates delivered")

        # 2. The client, a BaseException.
        held = make_pending("client")
        c.crash(actor, kind="base_exception").get(10)
        wait_for(lambda: _restarts(c, actor) == base + 2, 10, message="second restart")
        if holder:
            assert pending() == held

        sub.wait_events(lambda p: delivered(), message="every pending update delivered")
        status = c.status().get(10)
        c.set_mode("HYBRID").get(10)
    assert all(a["alive"] for a in status["actors"].values()), status["actors"]
    assert status["is_coordinating"] is True
    assert crashy.proc is not None and crashy.proc.poll() is None


def test_nothing_lost_across_mode_switch_and_optimize(
        crashy: DaemonProcess, modules: Callable[..., ModuleProcess]) -> None:
    sub = modules(crashy.runtime_dir, mod("keeper", subscribe=["source"]))
    start_all(sub)
    with crashy.connect(timeout=10) as c:
        c.set_mode("HYBRID").get(10)  # updates wait 3 s in the debouncer
        c.register(type("Source", (), {
            "module_id": "source", "name": "source", "supported_modes": set(MODES),
            "subscribe": [], "on_mode_change": lambda self, m, s, x: "ok",
            "on_batch": lambda self, b: None})()).get(10)
        expected: dict[str, int] = {}

        def publish(tag: str) -> None:
            futures = {f"{tag}-{i}": c.publish("source", f"{tag}-{i}", tag, "medium")
                       for i in range(5)}
            expected.update({k: f.get(10) for k, f in futures.items()})

        try:
            publish("before-switch")
            assert c.debouncer.pending().get(10) == 5
            switched = c.set_mode("MANUAL").get(10)
            assert switched["previous"] == "HYBRID"
            sub.wait_events(lambda p: {u[1]: u[4] for u in p.updates("keeper")} == expected,
                            message="the updates pending across the switch")
            publish("before-optimize")
            report = c.optimize().get(10)
            assert report["debounces_flushed"] >= 5
            assert c.debouncer.pending().get(10) == 0
            assert c.status().get(10)["batch_queue"]["pending"] == 0
            sub.wait_events(lambda p: {u[1] for u in p.updates("keeper")} >= {
                f"before-optimize-{i}" for i in range(5)}, message="optimize's flush")
            sub.wait_events(lambda p: {u[1]: u[4] for u in p.updates("keeper")} == expected,
                            message="every update")
        finally:
            c.set_mode("HYBRID").get(10)


def test_crash_is_refused_without_fault_injection(hd: DaemonProcess, client: Any) -> None:
    before = client.status().get(10)["actors"]
    with pytest.raises(ModcoordError, match="--allow-fault-injection"):
        client.crash("cache").get(10)
    refused = hd.cli("debug", "crash", "debouncer")
    assert refused.code == 1
    assert "--allow-fault-injection" in refused.err
    after = client.status().get(10)["actors"]

    def steady(actors: dict[str, Any]) -> dict[str, Any]:  # RSS and CPU move on their own
        return {n: {k: v for k, v in a.items() if k not in ("rss_bytes", "cpu_seconds")}
                for n, a in actors.items()}

    assert steady(after) == steady(before)

