"""Delivery limits: what `publish` accepts can be delivered, and output never grows unbounded.

Through the real daemon and real module processes:

- an undeliverable payload (too deep, too large) is refused at ``publish`` and its batch
  mates are delivered;
- large updates reach a subscriber that keeps reading (batches split by frame size, output
  pressure slows publishers instead of cutting the reader);
- a module whose ``on_mode_change`` result exceeds the frame limit answers with an error and
  keeps its connection;
- subscribers that stop reading are cut after the stall timeout, counted and logged, while
  the daemon's memory stays bounded and the reading subscriber gets everything.

Plus unit tests of the wire helpers and of the server's delivery path (real client, fake
coordinator). Every wait is bounded.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import psutil
import pytest
from daemon_harness import DaemonProcess, records, wait_for

from modcoord.actors.errors import InvalidMessageError
from modcoord.actors.update import Batch, Update
from modcoord.supervisor.client import connect
from modcoord.supervisor.daemon.server import Server
from modcoord.supervisor.protocol.paths import socket_path
from modcoord.supervisor.protocol.wire import DEFAULT_MAX_FRAME_BYTES

# The integration tests use only what every version has, so that they can be run against
# an older daemon (they fail there); the unit tests import the new helpers themselves.
MAX_NESTING_DEPTH = 100  # modcoord.supervisor.protocol.limits.MAX_NESTING_DEPTH (checked below)

_SPAWN = multiprocessing.get_context("spawn")
MiB = 1 << 20


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- module processes ------------------------------------------------------------------------


class _Sink:
    """A module in a spawned process; records what it receives (sizes, not payloads)."""

    def __init__(self, module_id: str, subscribe: list[str], result_bytes: int) -> None:
        self.module_id = module_id
        self.name = module_id
        self.supported_modes = {"MANUAL", "HYBRID", "FULLY_AUTO"}
        self.subscribe = subscribe
        self.result_bytes = result_bytes
        self.lock = threading.Lock()
        self.updates: list[tuple[str, str, int, int]] = []  # (source, key, seq, size)
        self.batches: list[tuple[int, int, int]] = []  # (batch_id, updates, payload bytes)
        self.mode_changes = 0

    def on_mode_change(self, mode: str, strategy: str, context: dict[str, Any]) -> Any:
        with self.lock:
            self.mode_changes += 1
        if self.result_bytes:
            return "r" * self.result_bytes
        return {"mode": mode}

    def on_batch(self, batch: Any) -> None:
        size = 0
        with self.lock:
            for u in batch.updates:
                n = len(u.payload) if isinstance(u.payload, (bytes, str)) else 0
                size += n
                self.updates.append((u.module_id, u.key, u.seq, n))
            self.batches.append((batch.batch_id, len(batch.updates), size))


def _sink_main(runtime_dir: str, specs: list[tuple[str, list[str], int]], conn: Any) -> None:
    """Host ``specs`` (module id, subscribe, on_mode_change result size), one client each;
    answer ``report`` and ``exit`` commands."""
    try:
        clients = []
        sinks = []
        for module_id, subscribe, result_bytes in specs:
            client = connect(runtime_dir=runtime_dir, timeout=10, name="delivery-sink")
            sink = _Sink(module_id, subscribe, result_bytes)
            client.register(sink).get(timeout=10)
            clients.append(client)
            sinks.append(sink)
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", os.getpid()))
    while conn.poll(300):
        cmd = conn.recv()
        if cmd == "exit":
            for client in clients:
                client.close()
            conn.send(("ok", None))
            return
        reports = []
        for client, sink in zip(clients, sinks, strict=True):
            with sink.lock:
                reports.append({"updates": list(sink.updates), "batches": list(sink.batches),
                                "mode_changes": sink.mode_changes,
                                "stats": dataclasses.asdict(client.statistics())})
        conn.send(("ok", reports))


class SinkProcess:
    """A spawned process hosting sink modules (see :func:`_sink_main`)."""

    def __init__(self, runtime_dir: Path, *specs: tuple[str, list[str], int]) -> None:
        self.conn, child = _SPAWN.Pipe()
        self.proc = _SPAWN.Process(target=_sink_main, args=(str(runtime_dir), list(specs), child),
                                   daemon=True)
        self.proc.start()

    def _recv(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise AssertionError(f"sink process {self.proc.pid}: no answer in {timeout} s")
        kind, value = self.conn.recv()
        if kind == "error":
            raise AssertionError(f"sink process failed: {value}")
        return value

    def wait_ready(self, timeout: float = 60.0) -> SinkProcess:
        self._recv(timeout)
        return self

    def report(self, timeout: float = 20.0) -> list[dict[str, Any]]:
        self.conn.send("report")
        result: list[dict[str, Any]] = self._recv(timeout)
        return result

    def stop(self) -> None:
        if self.proc.is_alive():
            assert self.proc.pid is not None
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                self.conn.send("exit")
                self._recv(10)
            except (AssertionError, OSError, EOFError):
                pass
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)


@pytest.fixture
def sinks() -> Iterator[Callable[..., SinkProcess]]:
    made: list[SinkProcess] = []

    def start(runtime_dir: Path, *specs: tuple[str, list[str], int]) -> SinkProcess:
        p = SinkProcess(runtime_dir, *specs)
        made.append(p)
        return p

    yield start
    for p in made:
        p.stop()


class Publisher:
    """A module registered by the test process's own client (it only publishes)."""

    def __init__(self, module_id: str) -> None:
        self.module_id = module_id
        self.name = module_id
        self.supported_modes: set[str] = set()
        self.subscribe: list[str] = []

    def on_mode_change(self, mode: str, strategy: str, context: dict[str, Any]) -> Any:
        return None

    def on_batch(self, batch: Any) -> None:
        pass


# -- unit: the wire helpers ------------------------------------------------------------------


def test_check_payload_accepts_what_fits_and_names_each_limit() -> None:
    from modcoord.supervisor.protocol import limits
    from modcoord.supervisor.protocol.wire import DELIVERY_ENVELOPE_BYTES, check_payload

    assert limits.MAX_NESTING_DEPTH == MAX_NESTING_DEPTH
    check_payload("m", "k", {"text": "hi", "n": [1, 2.5, None, True, b"x"]})
    check_payload("m", "k", nested(MAX_NESTING_DEPTH))
    with pytest.raises(InvalidMessageError, match=f"deeper than {MAX_NESTING_DEPTH} levels"):
        check_payload("m", "k", nested(MAX_NESTING_DEPTH + 1))
    with pytest.raises(InvalidMessageError, match=f"deeper than {MAX_NESTING_DEPTH} levels"):
        check_payload("m", "k", {"a": [1, "s", nested(2000)]})
    with pytest.raises(InvalidMessageError, match="cannot be encoded"):
        check_payload("m", "k", {"a": {1, 2}})  # a set (an in-process publisher)
    with pytest.raises(InvalidMessageError, match="cannot be encoded"):
        check_payload("m", "k", [1 << 70])
    room = DEFAULT_MAX_FRAME_BYTES - DELIVERY_ENVELOPE_BYTES - 100
    check_payload("m", "k", b"x" * (room - 100))
    with pytest.raises(InvalidMessageError, match=r"does not fit one delivery frame.*"
                                                  r"daemon\.max_frame_bytes 1048576"):
        check_payload("m", "k", b"x" * (DEFAULT_MAX_FRAME_BYTES - 100))
    with pytest.raises(InvalidMessageError, match=r"raise daemon\.max_frame_bytes"):
        check_payload("m", "k", "y" * 2000, max_frame_bytes=2048)


def test_every_payload_check_passes_is_deliverable_in_one_frame() -> None:
    """What check_payload accepts, encode_batch delivers whole, for the longest names."""
    from modcoord.supervisor.protocol.wire import check_payload, encode_batch

    sub = "\U0010ffff" * 200
    key = "\U0010ffff" * 1024
    for payload in (b"x" * 1_040_000, "é" * 200_000, nested(MAX_NESTING_DEPTH)):
        try:
            check_payload("p" * 200, key, payload)
        except InvalidMessageError:
            continue
        out = encode_batch(sub, (1 << 64) - 1, "unbatched",
                           [Update("p" * 200, key, payload, "critical", (1 << 64) - 1)])
        assert out.failed == [] and len(out.frames) == 1
        assert len(out.frames[0][0]) - 4 <= DEFAULT_MAX_FRAME_BYTES


def test_encode_batch_splits_by_size_and_leaves_out_only_the_bad_update() -> None:
    from modcoord.supervisor.protocol.wire import encode_batch

    ups = [Update("a", f"k{i}", b"x" * 300_000, "medium", i) for i in range(7)]
    ups.insert(3, Update("b", "bad", object(), "high", 99))
    out = encode_batch("sub", 7, "size", ups, max_frame_bytes=1 << 20)
    assert [(u.key, why.split(":")[0]) for u, why in out.failed] == [("bad", "cannot be encoded")]
    seqs: list[int] = []
    for frame, n in out.frames:
        assert len(frame) - 4 <= 1 << 20
        kind, event, params = msgpack.unpackb(frame[4:], raw=False)
        assert (kind, event, params["batch_id"], params["module_id"]) == (2, "batch", 7, "sub")
        assert len(params["updates"]) == n
        seqs += [u[4] for u in params["updates"]]
    assert seqs == list(range(7)) and len(out.frames) == 3  # 3 + 3 + 1, in order
    small = encode_batch("sub", 1, "window", ups[:2])
    assert len(small.frames) == 1 and small.failed == []


# -- unit: the server's delivery path (real client, fake coordinator) -------------------------


class _Endpoints:
    """The least of a coordinator: keeps endpoints so the test can deliver."""

    def __init__(self) -> None:
        self.endpoints: dict[str, Any] = {}

    def register(self, info: Any, endpoint: Any) -> dict[str, Any]:
        self.endpoints[info.module_id] = endpoint
        return {"module_id": info.module_id, "mode": "HYBRID", "strategy": "balanced"}

    def unregister(self, module_id: str, endpoint: Any = None) -> bool:
        return self.endpoints.pop(module_id, None) is not None

    def publish_many(self, items: Any) -> list[Any]:
        return list(range(1, len(items) + 1))

    def coordinate(self, mode: str, context: Any, reply: Any, caller: Any = ()) -> None:
        reply({"mode": mode, "strategy": "balanced", "results": {}, "errors": {}}, None)

    def call(self, method: str, params: Any) -> Any:
        return {}

    def status_brief(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "mode": "HYBRID"}


class _Recorder(Publisher):
    def __init__(self, module_id: str) -> None:
        super().__init__(module_id)
        self.subscribe = ["*"]
        self.cond = threading.Condition()
        self.batches: list[Any] = []

    def on_batch(self, batch: Any) -> None:
        with self.cond:
            self.batches.append(batch)
            self.cond.notify_all()


def test_an_unencodable_update_is_left_out_and_counted_the_rest_delivered(
        tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    coord = _Endpoints()
    logged: list[str] = []
    from loguru import logger
    sink_id = logger.add(lambda m: logged.append(str(m)), level="ERROR")
    try:
        with Server(coord, socket_path(run)) as srv, connect(run, timeout=5) as client:
            rec = _Recorder("rec")
            client.register(rec).get()
            good = [Update("a", f"k{i}", i, "medium", i) for i in range(3)]
            bad = Update("b", "bad", object(), "medium", 42)
            coord.endpoints["rec"].deliver("rec", Batch(5, (good[0], bad, *good[1:]), "window"))
            with rec.cond:
                assert rec.cond.wait_for(lambda: rec.batches, 5)
            (batch,) = rec.batches
            assert batch.batch_id == 5 and [u.seq for u in batch.updates] == [0, 1, 2]
            wait_for(lambda: srv.statistics().undeliverable_updates == 1, 5,
                     message="the bad update to be counted")
    finally:
        logger.remove(sink_id)
    assert any("cannot be delivered" in line and "seq 42" in line for line in logged)


def test_a_subscriber_that_reads_slowly_is_paced_not_cut(tmp_path: Path) -> None:
    """Output pressure pauses the publishers; a reader that keeps reading, though it
    takes longer in all than the stall timeout, gets everything (held deliveries
    included), in order, and is never disconnected."""
    from server_harness import RawClient

    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    coord = _Endpoints()
    with Server(coord, socket_path(run), max_buffer_bytes=MiB, output_stall_s=1.0) as srv, \
            connect(run, timeout=5) as client:
        raw = RawClient(srv.socket_path)
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        raw.send([0, 1, "register", {"module_id": "rec", "subscribe": ["*"]}])
        raw.recv_response(1)
        client.register(Publisher("pub")).get()
        client.publish("pub", "k", 1).get()  # a publisher, as far as the server knows
        for i in range(40):  # 40 × 256 KiB = 10 MiB, far above the 1 MiB mark
            coord.endpoints["rec"].deliver(
                "rec", Batch(i, (Update("pub", f"k{i}", b"p" * (256 << 10), "low", i),)))
        wait_for(lambda: srv.statistics().output_pressure, 5, message="output pressure")
        late = client.publish("pub", "k", 2)  # held back by the pause, not refused
        started = time.monotonic()
        got: list[int] = []
        pace = threading.Event()
        while len(got) < 40:
            pace.wait(0.025)  # the reader is slow: 128 KiB per 25 ms
            chunk = raw.sock.recv(128 << 10)
            assert chunk, "the reader was disconnected"
            raw.inbox.extend(raw.decoder.feed(chunk))
            while raw.inbox:
                msg = raw.inbox.pop(0)
                if msg[0] == 2:
                    got.append(msg[2]["batch_id"])
        assert time.monotonic() - started > 1.0  # longer than the stall timeout in all
        assert got == list(range(40))
        assert late.get(timeout=10) >= 1
        stats = srv.statistics()
        assert stats.stalled_disconnects == 0 and stats.undelivered_updates == 0
        assert stats.output_pauses >= 1 and stats.backpressure_throttled >= 1
        wait_for(lambda: not srv.statistics().output_pressure, 5, message="pressure off")
        raw.close()


# -- integration -------------------------------------------------------------------------------


@pytest.mark.integration
def test_undeliverable_payloads_are_refused_at_publish_and_spare_their_batch_mates(
        daemon_factory: Callable[..., DaemonProcess],
        sinks: Callable[..., SinkProcess]) -> None:
    d = daemon_factory()
    sink = sinks(d.runtime_dir, ("sink", ["*"], 0)).wait_ready()
    with d.connect(timeout=10) as client:
        client.register(Publisher("honest")).get(10)
        client.register(Publisher("careless")).get(10)
        futures = [
            client.publish("honest", "h1", {"n": 1}),
            client.publish("careless", "deep", nested(1000)),
            client.publish("honest", "h2", {"n": 2}),
            client.publish("careless", "huge", b"z" * (DEFAULT_MAX_FRAME_BYTES - 400)),
            client.publish("honest", "h3", {"n": 3}),
        ]
        seqs = [futures[i].get(10) for i in (0, 2, 4)]
        with pytest.raises(InvalidMessageError, match="nested deeper than 100 levels"):
            futures[1].get(10)
        with pytest.raises(InvalidMessageError,
                           match=r"does not fit one delivery frame.*max_frame_bytes 1048576"):
            futures[3].get(10)

        def got() -> Any:
            updates = sink.report()[0]["updates"]
            return sorted(u[2] for u in updates if u[0] == "honest") == sorted(seqs) and updates

        updates = wait_for(got, 20, message="the honest updates")
        assert {u[1] for u in updates} == {"h1", "h2", "h3"}  # nothing of the careless one
        status = client.status().get(10)
        assert status["server"]["undeliverable_updates"] == 0
        assert status["server"]["invalid_messages"] >= 2


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_large_updates_all_reach_a_subscriber_that_reads(
        daemon_factory: Callable[..., DaemonProcess],
        sinks: Callable[..., SinkProcess]) -> None:
    """120 accepted updates of ~1 MiB (120 MiB, above the 64 MiB the old per-connection cap
    allowed): every one is delivered, in frames within the frame limit, and the reader is
    never cut."""
    d = daemon_factory()
    sink = sinks(d.runtime_dir, ("reader", ["big"], 0)).wait_ready()
    size = 1_000_000
    with d.connect(timeout=30) as client:
        client.register(Publisher("big")).get(10)
        futures = [client.publish("big", f"k{i}", bytes([i % 256]) * size) for i in range(120)]
        seqs = [f.get(60) for f in futures]

        def all_delivered() -> Any:
            report = sink.report(60)[0]
            return len({u[2] for u in report["updates"]}) == 120 and report

        report = wait_for(all_delivered, 180, interval=0.5, message="120 large updates")
        assert sorted(u[2] for u in report["updates"]) == sorted(seqs)
        assert all(u[3] == size for u in report["updates"])
        # Each frame carries at most the frame limit: one ~1 MiB update per delivery.
        assert max(b[2] for b in report["batches"]) <= DEFAULT_MAX_FRAME_BYTES
        assert report["stats"]["connection_losses"] == 0
        server = client.status().get(10)["server"]
        assert server["stalled_disconnects"] == 0 and server["undelivered_updates"] == 0
        assert server["split_batches"] >= 1


@pytest.mark.integration
def test_a_too_large_mode_change_result_is_an_error_and_the_connection_stays(
        daemon_factory: Callable[..., DaemonProcess],
        sinks: Callable[..., SinkProcess]) -> None:
    d = daemon_factory()
    sink = sinks(d.runtime_dir, ("bloated", ["src"], 2 * MiB), ("fine", ["src"], 0)).wait_ready()
    with d.connect(timeout=10) as client:
        client.register(Publisher("src")).get(10)
        before = [client.publish("src", f"b{i}", i) for i in range(20)]
        result = client.coordinate("HYBRID", {"probe": unique("big")}).get(10)
        during = [client.publish("src", f"d{i}", i) for i in range(20)]
        seqs = [f.get(10) for f in before + during]
        error = result.errors.get("bloated", "")
        assert "result too large" in error and "> limit 1048576" in error, result.errors
        assert "bloated" not in result.results and result.results["fine"] == {"mode": "HYBRID"}

        def delivered() -> Any:
            reports = sink.report()
            return all(sorted(u[2] for u in r["updates"]) == sorted(seqs) for r in reports) \
                and reports

        reports = wait_for(delivered, 20, message="every update to both modules")
        assert reports[0]["stats"]["connection_losses"] == 0
        assert reports[0]["stats"]["reconnects"] == 0
        status = client.status().get(10)
        assert status["modules"] == 3
        assert status["server"]["framing_errors"] == 0


def _rss_sampler(pid: int, stop: threading.Event, peak: list[int]) -> None:
    proc = psutil.Process(pid)
    while not stop.wait(0.05):
        try:
            peak[0] = max(peak[0], proc.memory_info().rss)
        except psutil.Error:
            return


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_stalled_subscribers_are_cut_counted_and_memory_stays_bounded(
        daemon_factory: Callable[..., DaemonProcess],
        sinks: Callable[..., SinkProcess]) -> None:
    """8 subscribers whose process stops (SIGSTOP): each is disconnected after the stall
    timeout with a logged reason, what it missed is counted, the daemon's RSS stays far
    below 8 × the data published, and the one subscriber that reads gets everything."""
    d = daemon_factory(start=False)
    d.edit_config("daemon", {"output": {"max_connection_bytes": 4 * MiB,
                                        "max_total_bytes": 16 * MiB, "stall_timeout_s": 1.0}})
    d.start()
    stalled = sinks(d.runtime_dir, *[(f"stalled{i}", ["pub"], 0) for i in range(8)]).wait_ready()
    reader = sinks(d.runtime_dir, ("reader", ["pub"], 0)).wait_ready()
    base_rss = psutil.Process(d.pid).memory_info().rss
    assert stalled.proc.pid is not None
    os.kill(stalled.proc.pid, signal.SIGSTOP)
    peak = [base_rss]
    stop = threading.Event()
    sampler = threading.Thread(target=_rss_sampler, args=(d.pid, stop, peak), daemon=True)
    sampler.start()
    n, size = 240, 256 << 10  # 60 MiB for each of the 9 subscribers
    try:
        with d.connect(timeout=30) as client:
            client.register(Publisher("pub")).get(10)
            seqs = []
            for start in range(0, n, 40):
                futures = [client.publish("pub", f"k{i}", bytes([i % 256]) * size)
                           for i in range(start, start + 40)]
                seqs += [f.get(60) for f in futures]

            def all_read() -> bool:
                return len({u[2] for u in reader.report(30)[0]["updates"]}) == n

            wait_for(all_read, 120, interval=0.5, message="the reader to get every update")
            server = wait_for(lambda: (s := client.status().get(10)["server"])
                              ["stalled_disconnects"] == 8 and s, 30,
                              message="8 stalled disconnects")
    finally:
        stop.set()
        sampler.join(5)
    assert server["undelivered_updates"] > 0
    report = reader.report()[0]
    assert sorted(u[2] for u in report["updates"]) == sorted(seqs)
    assert report["stats"]["connection_losses"] == 0
    logged = records(d)
    cut = [r for r in logged if "not reading" in r.get("message", "")
           and r.get("level") == "WARNING" and "disconnecting" in r["message"]]
    assert len(cut) == 8
    assert any("not delivered" in r.get("message", "") for r in logged)
    # 8 stalled copies of 60 MiB would be 480 MiB; the output budget keeps it near 16 MiB
    # of encoded output plus the accepted payloads themselves (shared by every subscriber).
    grown = (peak[0] - base_rss) / MiB
    assert grown < 200, f"daemon RSS grew by {grown:.0f} MiB"


def test_a_frame_nested_beyond_msgpack_limits_is_refused_naming_the_nesting_limit() -> None:
    import struct

    from modcoord.supervisor.protocol.wire import FrameDecoder, split_inbound

    body = (b"\x94\x00\x01\xa7publish\x83\xa9module_id\xa1m\xa3key\xa1k\xa7payload"
            + b"\x91" * 3000 + b"\x00")
    (msg,) = FrameDecoder().feed(struct.pack(">I", len(body)) + body)
    with pytest.raises(InvalidMessageError, match=f"at most {MAX_NESTING_DEPTH} levels"):
        split_inbound(msg)


def test_the_client_refuses_params_msgpack_cannot_nest_naming_the_limit(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    with Server(_Endpoints(), socket_path(run)), connect(run, timeout=5) as client:
        client.register(Publisher("pub")).get()
        with pytest.raises(InvalidMessageError, match=f"at most {MAX_NESTING_DEPTH} levels"):
            client.publish("pub", "k", nested(3000)).get()
        assert client.publish("pub", "k", 1).get() >= 1  # the connection is fine
