"""Delivery limits: what `publish` accepts can be delivered, and output never grows unbounded.

The wire helpers, and the server's delivery path (a real client, a fake coordinator): an
unencodable update is left out and counted, a slow reader is paced and not cut, payloads
msgpack cannot nest are refused naming the limit. Through the real daemon and real module
processes: ``integration/test_delivery_limits_daemon.py``. Every wait is bounded.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from daemon_harness import wait_for
from server_harness import Publisher, nested

from modcoord.actors.errors import InvalidMessageError
from modcoord.actors.update import Batch, Update
from modcoord.supervisor.client import connect
from modcoord.supervisor.daemon.server import Server
from modcoord.supervisor.protocol.paths import socket_path
from modcoord.supervisor.protocol.wire import DEFAULT_MAX_FRAME_BYTES

# The daemon's tests (integration/test_delivery_limits_daemon.py) use only what every version
# has, so that they can be run against an older daemon (they fail there); these tests import
# the new helpers themselves.
MAX_NESTING_DEPTH = 100  # modcoord.supervisor.protocol.limits.MAX_NESTING_DEPTH (checked below)
MiB = 1 << 20


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
    logged: list[dict[str, Any]] = []
    from loguru import logger
    sink_id = logger.add(lambda m: logged.append(dict(m.record)), level="ERROR")
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
    assert any("cannot be delivered" in r["message"] and r["extra"]["first_seq"] == 42
               and r["extra"]["left_out"] == 1 for r in logged)


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
