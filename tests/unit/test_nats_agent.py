"""The NATS engine's pieces that need no server: the ``engine`` config key, the deferred
publish answer (:class:`Accepted`) and the agent's publish path against a fake JetStream
(folding per key, one message in flight per partition, retries with the same
``Nats-Msg-Id``, the bounded buffer refusing with a clear error)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest

from modcoord.actors.errors import ConfigError, ModcoordError, QueueFullError
from modcoord.supervisor.daemon.config import DaemonSettings, _validate
from modcoord.supervisor.daemon.engine import Accepted

pytest.importorskip("nats")

from modcoord.supervisor.daemon.nats.agent import Agent
from modcoord.supervisor.daemon.nats.names import UpdateMessage


def _engine(**values: Any) -> Any:
    return _validate(DaemonSettings, {"engine": values}, Path("daemon.yaml")).engine


def test_engine_defaults_to_local() -> None:
    assert _validate(DaemonSettings, {}, Path("daemon.yaml")).engine.kind == "local"


@pytest.mark.parametrize(("values", "key", "words"), [
    ({"kind": "nats"}, "engine", "needs servers"),
    ({"kind": "nats", "servers": ["http://h:1"]}, "engine.servers", "not a NATS URL"),
    ({"kind": "raft"}, "engine.kind", "'local' or 'nats'"),
    ({"kind": "nats", "servers": ["nats://h:1"], "tls": {"cert": "c"}}, "engine.tls",
     "cert and key go together"),
    ({"kind": "nats", "servers": ["nats://h:1"], "instance_id": "a b"}, "engine.instance_id",
     "letters, digits"),
    ({"kind": "nats", "servers": ["nats://h:1"], "max_buffered": 0}, "engine.max_buffered",
     "greater than or equal to 1"),
])
def test_bad_engine_values_name_the_key(values: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        _engine(**values)
    assert f"daemon.yaml: {key}:" in str(info.value)
    assert words in str(info.value)


def test_accepted_settles_once_and_late_callbacks_run_at_once() -> None:
    seen: list[Any] = []
    accepted = Accepted()
    accepted.on_settled(seen.append)
    assert accepted.result is None and seen == []
    accepted.settle(7)
    accepted.settle(8)  # ignored
    accepted.on_settled(seen.append)
    assert seen == [7, 7]


class _Ack:
    def __init__(self, seq: int) -> None:
        self.seq = seq


class FakeJetStream:
    """Records publishes; fails the first ``fail`` ones; holds each until released."""

    def __init__(self, fail: int = 0, hold: bool = False) -> None:
        self.calls: list[tuple[str, bytes, str]] = []
        self.fail = fail
        self.hold = asyncio.Event() if hold else None
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}
        self.stored: list[int] = []

    async def publish(self, subject: str, data: bytes, timeout: float,
                      headers: dict[str, str]) -> _Ack:
        self.calls.append((subject, data, headers["Nats-Msg-Id"]))
        self.in_flight[subject] = self.in_flight.get(subject, 0) + 1
        self.max_in_flight[subject] = max(self.max_in_flight.get(subject, 0),
                                          self.in_flight[subject])
        try:
            if self.hold is not None:
                await self.hold.wait()
            if self.fail:
                self.fail -= 1
                raise TimeoutError("nats: timeout")
            self.stored.append(len(self.calls))
            return _Ack(len(self.stored))
        finally:
            self.in_flight[subject] -= 1


class _Intake:
    """The local intake's checks (only registered modules)."""

    def __init__(self, modules: set[str]) -> None:
        self.modules = modules

    def check(self, items: Any) -> tuple[list[Any], list[int], list[Any], list[Any]]:
        from modcoord.supervisor.protocol.delivery import encode_payload

        items = list(items)
        out: list[Any] = [None if i[0] in self.modules else ModcoordError("unknown")
                          for i in items]
        valid = [n for n, o in enumerate(out) if o is None]
        # the intake's encodings, which the agent splices into its stream messages
        return out, valid, items, [encode_payload(*items[n][:3]) for n in valid]


@pytest.fixture
def loop() -> Any:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def _agent(loop: Any, js: FakeJetStream, *, max_buffered: int = 1000,
           partitions: int = 1) -> Agent:
    return Agent(instance_id="a", partitions=partitions, flush_s=0.01,
                 max_buffered=max_buffered, intake=_Intake({"m"}),  # type: ignore[arg-type]
                 loop=loop, jetstream=lambda: js)  # type: ignore[arg-type,return-value]


def _settled(results: list[Any], timeout: float = 5.0) -> list[Any]:
    done = threading.Event()
    left = [len(results)]
    lock = threading.Lock()

    def one(_: Any) -> None:
        with lock:
            left[0] -= 1
            if not left[0]:
                done.set()

    for r in results:
        r.on_settled(one)
    assert done.wait(timeout), "publishes not answered"
    return [r.result for r in results]


def test_updates_fold_per_key_and_every_publisher_gets_the_ack(loop: Any) -> None:
    js = FakeJetStream()
    agent = _agent(loop, js)
    results = agent.publish_many([("m", f"k{i % 3}", i, "medium") for i in range(30)])
    assert all(isinstance(r, Accepted) for r in results)
    seqs = _settled(list(results))
    assert all(isinstance(s, int) for s in seqs)
    decoded = [msgspec.msgpack.decode(data, type=UpdateMessage) for _, data, _ in js.calls]
    stored = [u for m in decoded for u in m.updates]
    assert {(u.key, u.payload) for u in stored} >= {("k0", 27), ("k1", 28), ("k2", 29)}
    assert len(stored) < 30  # folded
    stats = agent.statistics()
    assert stats.acked == 30 and stats.buffered == 0 and stats.folded == 30 - len(stored)


def test_a_failed_publish_is_retried_with_the_same_message_id(loop: Any) -> None:
    js = FakeJetStream(fail=2)
    agent = _agent(loop, js)
    (result,) = agent.publish_many([("m", "k", 1, "high")])
    assert _settled([result]) == [1]
    ids = [msg_id for _, _, msg_id in js.calls]
    assert len(ids) == 3 and len(set(ids)) == 1
    assert agent.statistics().retries == 2


def test_one_message_in_flight_per_partition_and_a_full_buffer_refuses(loop: Any) -> None:
    js = FakeJetStream(hold=True)
    agent = _agent(loop, js, max_buffered=5)
    first = agent.publish_many([("m", f"k{i}", i, "low") for i in range(3)])
    later = agent.publish_many([("m", f"j{i}", i, "low") for i in range(4)])
    refused = later[2:]
    assert all(isinstance(r, QueueFullError) for r in refused)
    assert "engine.max_buffered" in str(refused[0]) and "5 updates" in str(refused[0])
    assert agent.statistics().refused == 2 and agent.buffered == 5
    loop.call_soon_threadsafe(js.hold.set)  # type: ignore[union-attr]
    _settled([*first, *later[:2]])
    assert max(js.max_in_flight.values()) == 1
    assert agent.buffered == 0
    (again,) = agent.publish_many([("m", "k0", 9, "low")])
    assert isinstance(again, Accepted)  # room again
    _settled([again])


def test_an_unknown_module_is_refused_by_the_local_checks(loop: Any) -> None:
    agent = _agent(loop, FakeJetStream())
    (result,) = agent.publish_many([("nobody", "k", 1, "low")])
    assert isinstance(result, ModcoordError)
