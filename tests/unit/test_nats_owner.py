"""The NATS owner without a server: its last-seen table is bounded by the partitions' ack
floors, and updates a batch processor removes are acknowledged (not held forever).

The owner runs its real actor system (in-process debouncer, batcher and the example
``drop_odd`` batch processor); JetStream is faked: stream messages record their
acknowledgements, the delivery requests record what they carried, and ``consumer_info``
answers the ack floor the test sets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from daemon_harness import copy_configs, edited_yaml

from modcoord.supervisor.daemon.config import load_config_dir
from modcoord.supervisor.daemon.nats.last_seen import LastSeen
from modcoord.supervisor.daemon.nats.names import (
    Delivery,
    StoredUpdate,
    UpdateMessage,
    consumer_name,
)
from modcoord.supervisor.daemon.nats.owner import Owner

pytest.importorskip("modcoord_example_plugins")


# -- LastSeen ----------------------------------------------------------------------------

def test_last_seen_drops_older_updates_of_a_key_and_keeps_the_newest() -> None:
    seen = LastSeen()
    assert seen.take(0, ("m", "a"), 5)
    assert seen.take(0, ("m", "a"), 5)  # the same message again: not older
    assert not seen.take(0, ("m", "a"), 4)  # an older redelivery: stale
    assert seen.take(0, ("m", "a"), 9)
    assert not seen.take(0, ("m", "a"), 5)
    assert len(seen) == 1


def test_last_seen_forgets_exactly_the_keys_at_or_below_the_ack_floor() -> None:
    seen = LastSeen()
    for i, seq in enumerate((3, 4, 7, 10)):
        seen.take(1, ("m", f"k{i}"), seq)
    seen.take(2, ("m", "other"), 1)
    assert seen.forget_through(1, 7) == 3  # k0..k2 (3, 4, 7): at or below the floor
    assert len(seen) == 2 and seen.forgotten == 3
    assert not seen.take(1, ("m", "k3"), 8)  # k3 (10) is above the floor: still known
    assert seen.forget_through(1, 10) == 1
    assert seen.partitions() == [2]  # an emptied partition's table goes
    assert seen.forget_through(2, 0) == 0  # nothing at or below floor 0


def test_last_seen_stops_at_the_first_key_above_the_floor() -> None:
    # A redelivery (older seq) taken after newer keys sits behind them: it is kept until
    # the floor passes the ones in front (conservative: never forgets above the floor).
    seen = LastSeen()
    seen.take(0, ("m", "new"), 20)
    seen.take(0, ("m", "redelivered"), 5)
    assert seen.forget_through(0, 10) == 0
    assert seen.forget_through(0, 20) == 2


def test_last_seen_beyond_its_limit_evicts_the_oldest_and_counts_it() -> None:
    seen = LastSeen(limit=3)
    for i in range(5):
        assert seen.take(0, ("m", f"k{i}"), i + 1)
    assert len(seen) == 3 and seen.evicted == 2
    assert seen.take(0, ("m", "k0"), 0)  # forgotten: no longer judged stale
    assert seen.take(1, ("m", "alone"), 1)  # a partition's only key is not the one to go
    assert not seen.take(1, ("m", "alone"), 0)
    assert len(seen) == 3 and seen.evicted == 4
    with pytest.raises(ValueError, match="at least 1"):
        LastSeen(limit=0)


# -- the owner with fakes ----------------------------------------------------------------

@dataclass
class _Meta:
    sequence: Any
    num_delivered: int = 1


@dataclass(eq=False)
class FakeMsg:
    """A stream message: records its acknowledgement."""

    data: bytes
    metadata: _Meta
    acked: int = 0
    progress: int = 0

    async def ack(self) -> None:
        self.acked += 1

    async def in_progress(self) -> None:
        self.progress += 1


def _message(seq: int, *values: tuple[str, int], priority: str = "medium") -> FakeMsg:
    updates = tuple(StoredUpdate("pub", key, value, priority, i, time.time())
                    for i, (key, value) in enumerate(values))
    return FakeMsg(msgspec.msgpack.encode(UpdateMessage("agent", updates)),
                   _Meta(SimpleNamespace(stream=seq)))


@dataclass
class FakeNats:
    """The data connection (delivery requests) and JetStream (``consumer_info``)."""

    delivered: list[Delivery] = field(default_factory=list)
    floors: dict[str, int] = field(default_factory=dict)
    info_fails: bool = False
    members: tuple[str, ...] = ("me",)  # the live members the owner sees
    dead: set[str] = field(default_factory=set)  # members whose agent never answers
    by_member: dict[str, list[int]] = field(default_factory=dict)  # batch ids taken

    async def request(self, subject: str, data: bytes, timeout: float) -> Any:
        member = subject.rsplit(".", 1)[1]
        if member in self.dead:
            raise TimeoutError("no answer")
        delivery = msgspec.msgpack.decode(data, type=Delivery)
        self.by_member.setdefault(member, []).append(delivery.batch_id)
        if member == "me":
            self.delivered.append(delivery)
        return SimpleNamespace(data=b"")

    async def consumer_info(self, stream: str, name: str) -> Any:
        if self.info_fails:
            raise TimeoutError("no answer")
        return SimpleNamespace(ack_floor=SimpleNamespace(stream_seq=self.floors.get(name, 0)))


@pytest.fixture
def owner_env(tmp_path: Path) -> Iterator[tuple[Owner, FakeNats, asyncio.AbstractEventLoop]]:
    configs = copy_configs(tmp_path / "configs")
    hybrid = configs / "hybrid.yaml"
    hybrid.write_text(edited_yaml(hybrid, {
        "debounce": {"delay_ms": 10, "critical_delay_ms": 5, "max_wait_ms": 50},
        "batch": {"window_ms": 10, "max_size": 50},
        "plugins": {"batch_processors": ["priority", "example_drop_odd"]}}))
    loop = asyncio.new_event_loop()
    fake = FakeNats()
    owner = Owner(load_config_dir(configs), mode="HYBRID", instance_id="me", loop=loop,
                  jetstream=lambda: fake,  # type: ignore[arg-type,return-value]
                  client=lambda: fake,  # type: ignore[arg-type,return-value]
                  members=lambda: fake.members, owned=lambda p: True, replicas=1,
                  ack_wait_s=30.0, delivery_timeout_s=1.0)
    owner.start()
    try:
        yield owner, fake, loop
    finally:
        loop.run_until_complete(owner.close())
        owner.stop_core()
        loop.close()


def _until(loop: asyncio.AbstractEventLoop, done: Callable[[], bool], what: str,
           timeout: float = 10.0) -> None:
    async def wait() -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for: {what}"
            await asyncio.sleep(0.01)

    loop.run_until_complete(wait())


def _run(loop: asyncio.AbstractEventLoop, call: Callable[[], Awaitable[Any]]) -> Any:
    return loop.run_until_complete(call())


@pytest.mark.timeout(30)
def test_updates_a_batch_processor_removes_are_acknowledged_counted_and_not_delivered(
        owner_env: tuple[Owner, FakeNats, asyncio.AbstractEventLoop]) -> None:
    owner, fake, loop = owner_env
    mixed = _message(1, ("a", 2), ("b", 3))  # b is odd: the processor removes it
    removed_only = _message(2, ("c", 5))  # every update removed: no batch at all
    kept_only = _message(3, ("d", 4))
    for msg in (mixed, removed_only, kept_only):
        owner._take(0, msg)  # type: ignore[arg-type]
    _until(loop, lambda: mixed.acked == removed_only.acked == kept_only.acked == 1,
           "every message acknowledged once")
    delivered = {u.key for d in fake.delivered for u in d.updates}
    assert delivered == {"a", "d"}
    stats = owner.statistics()
    assert stats["processor_removed"] == 2
    assert stats["held_messages"] == 0 and stats["acked"] == 3


@pytest.mark.timeout(30)
def test_the_owner_forgets_keys_below_the_ack_floor_and_counts_a_failed_read(
        owner_env: tuple[Owner, FakeNats, asyncio.AbstractEventLoop]) -> None:
    owner, fake, loop = owner_env
    msgs = [_message(seq, (f"k{seq}", 2)) for seq in range(1, 6)]
    for msg in msgs:
        owner._take(3, msg)  # type: ignore[arg-type]
    _until(loop, lambda: all(m.acked for m in msgs), "every message acknowledged")
    assert owner.statistics()["seen_keys"] == 5
    fake.info_fails = True
    assert _run(loop, owner.trim_seen_once) == 0
    assert owner.statistics()["seen_trim_errors"] == 1
    assert owner.statistics()["seen_keys"] == 5  # nothing forgotten without the floor
    fake.info_fails = False
    fake.floors[consumer_name(3)] = 3  # the server has removed messages 1..3
    assert _run(loop, owner.trim_seen_once) == 3
    assert owner.statistics()["seen_keys"] == 2
    fake.floors[consumer_name(3)] = 5
    assert _run(loop, owner.trim_seen_once) == 2
    stats = owner.statistics()
    assert stats["seen_keys"] == 0 and stats["seen_forgotten"] == 5
    assert stats["stale"] == 0


@pytest.mark.timeout(30)
def test_a_message_with_an_unknown_priority_is_acknowledged_as_malformed_not_held(
        owner_env: tuple[Owner, FakeNats, asyncio.AbstractEventLoop]) -> None:
    owner, fake, loop = owner_env
    bad = _message(1, ("a", 2), priority="urgent")  # the debouncer refuses the priority
    good = _message(2, ("b", 2))
    owner._take(0, bad)  # type: ignore[arg-type]
    owner._take(0, good)  # type: ignore[arg-type]
    _until(loop, lambda: bad.acked == good.acked == 1, "both messages acknowledged")
    stats = owner.statistics()
    assert stats["malformed"] == 1 and stats["held_messages"] == 0
    assert {u.key for d in fake.delivered for u in d.updates} == {"b"}


@pytest.mark.timeout(30)
def test_a_member_whose_agent_does_not_answer_stalls_only_its_own_deliveries(
        owner_env: tuple[Owner, FakeNats, asyncio.AbstractEventLoop]) -> None:
    """A dead daemon still counted live (its heartbeat not yet timed out): the other
    members get every batch, in order, meanwhile; nothing is acknowledged until the dead
    one leaves the live members (every member took every batch, or is gone); then all
    is, and a member that joins later starts at the oldest batch not yet settled."""
    owner, fake, loop = owner_env
    fake.members, fake.dead = ("me", "other", "dead"), {"dead"}
    msgs = [_message(seq, (f"k{seq}", 2)) for seq in range(1, 9)]
    for msg in msgs[:4]:
        owner._take(0, msg)  # type: ignore[arg-type]
    _until(loop, lambda: len({u.key for d in fake.delivered for u in d.updates}) == 4,
           "the live members got the first four updates")
    for msg in msgs[4:]:
        owner._take(0, msg)  # type: ignore[arg-type]
    _until(loop, lambda: len({u.key for d in fake.delivered for u in d.updates}) == 8,
           "the live members got all eight meanwhile")
    assert fake.by_member["other"] == fake.by_member["me"]  # the same batches, in order
    assert fake.by_member["me"] == sorted(fake.by_member["me"])
    assert not any(m.acked for m in msgs)  # the dead member has taken none of them
    stats = owner.statistics()
    assert stats["delivery_retries"] >= 1 and stats["lanes"] == 1  # the dead one's
    assert stats["outbox_batches"] == len(fake.by_member["me"])
    fake.members = ("me", "other", "late")  # dead's heartbeat timed out; late joined
    _until(loop, lambda: all(m.acked == 1 for m in msgs), "all acknowledged")
    assert fake.by_member["late"] == fake.by_member["me"]  # it started at the oldest
    stats = owner.statistics()
    assert stats["outbox_batches"] == 0 and stats["lanes"] == 0
    assert stats["batches_delivered"] == len(fake.by_member["me"])


class _FakeSub:
    """A pull subscription: ``fetch`` answers from a list of scripted outcomes and
    records what it was asked for."""

    def __init__(self, *outcomes: list[str] | type[BaseException]) -> None:
        self.outcomes = list(outcomes)
        self.asked: list[tuple[int, float]] = []

    async def fetch(self, batch: int, timeout: float) -> list[str]:
        self.asked.append((batch, timeout))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, type):
            raise outcome("nothing")
        return outcome


@pytest.mark.timeout(10)
def test_a_pull_waits_for_one_message_then_takes_what_is_there_without_waiting(
        owner_env: tuple[Owner, FakeNats, asyncio.AbstractEventLoop]) -> None:
    """A trickle must not wait for a full batch: the lingering pull asks for one message,
    the pull after it for the rest with a short bound."""
    from modcoord.supervisor.daemon.nats.owner import (
        DRAIN_TIMEOUT_S,
        FETCH_BATCH,
        FETCH_TIMEOUT_S,
    )

    owner, _fake, loop = owner_env
    busy = _FakeSub(["m1"], ["m2", "m3"])
    assert list(map(str, loop.run_until_complete(owner._pull(busy)))) == ["m1", "m2", "m3"]
    assert busy.asked == [(1, FETCH_TIMEOUT_S), (FETCH_BATCH - 1, DRAIN_TIMEOUT_S)]
    trickle = _FakeSub(["m1"], TimeoutError)  # nothing more right now
    assert list(map(str, loop.run_until_complete(owner._pull(trickle)))) == ["m1"]
    idle = _FakeSub(TimeoutError)  # nothing within the timeout: no second pull
    assert not loop.run_until_complete(owner._pull(idle))
    assert idle.asked == [(1, FETCH_TIMEOUT_S)]
    assert DRAIN_TIMEOUT_S < FETCH_TIMEOUT_S / 10
