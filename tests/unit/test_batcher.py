"""Tests of the batcher: windows, sizes, ordering, subscriptions, admission, restarts."""

from __future__ import annotations

import random
import threading
from typing import Any

import msgpack
import pytest
from actor_harness import WAIT_S, ActorRig

from modcoord.actors import (
    ActorCrashedError,
    Batch,
    BatchSettings,
    Crash,
    Handover,
    MockClock,
    Reconfigure,
    Statistics,
    Update,
)
from modcoord.actors.batcher import (
    BatcherActor,
    BatcherHandover,
    BatcherStatistics,
    Enqueue,
    FlushBatches,
    QueueDepth,
    Subscribe,
    Unsubscribe,
    order_updates,
)
from modcoord.actors.message import from_wire
from modcoord.actors.shared.admission import QueueGauge
from modcoord.actors.shared.metrics import MetricsRegistry
from modcoord.actors.update import PRIORITIES

WINDOW_MS = 125.0  # 0.125 s is exact in binary, so deadlines compare exactly
TINY = 2.0**-20


class Sink:
    """A delivery sink that records ``(subscriber, batch)``; optionally fails for some."""

    def __init__(self, failing: tuple[str, ...] = ()) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[str, Batch]] = []
        self.failing = failing

    def __call__(self, subscriber: str, batch: Batch) -> None:
        with self.lock:
            self.items.append((subscriber, batch))
        if subscriber in self.failing:
            raise RuntimeError(f"{subscriber} is broken")

    def batches(self, subscriber: str = "all") -> list[Batch]:
        with self.lock:
            return [b for s, b in self.items if s == subscriber]


class Seq:
    def __init__(self, clock: MockClock) -> None:
        self.clock = clock
        self.n = 0

    def __call__(self, module: str, key: str = "k", priority: str = "medium",
                 payload: Any = None) -> Update:
        self.n += 1
        return Update(module, f"{key}{self.n}", payload if payload is not None else self.n,
                      priority, self.n, self.clock.monotonic())


def batch_settings(**kw: Any) -> BatchSettings:
    kw.setdefault("window_ms", WINDOW_MS)
    return BatchSettings(**kw)


class Rig(ActorRig[MockClock]):
    """The batcher on the test's clock, delivering to :attr:`sink`; subscribes ``all`` to
    everything unless told not to."""

    def __init__(self, clock: MockClock, settings: BatchSettings | None = None,
                 sink: Sink | None = None, gauge: QueueGauge | None = None,
                 metrics: MetricsRegistry | None = None, subscribe_all: bool = True) -> None:
        self.sink = sink or Sink()
        swap: dict[str, Any] = {"queue_gauge": gauge, "metrics": metrics}
        super().__init__(clock, "batcher", BatcherActor, settings or batch_settings(),
                         deliver=self.sink, **{k: v for k, v in swap.items() if v is not None})
        self.start()
        self.up = Seq(clock)
        if subscribe_all:
            self.tell(Subscribe("all", ("*",)))

    def enqueue(self, *updates: Update) -> int:
        """Enqueue and wait until handled; return the queue depth then."""
        self.tell(Enqueue(tuple(updates)))
        return int(self.ask(QueueDepth()))

    def advance(self, seconds: float) -> int:
        """Advance the clock, let the actor handle any tick, return the queue depth."""
        self.clock.advance(seconds)
        return int(self.ask(QueueDepth()))

    def stats(self) -> BatcherStatistics:
        result = self.ask(Statistics())
        assert isinstance(result, BatcherStatistics)
        return result


def seqs(batch: Batch) -> list[int]:
    return [u.seq for u in batch.updates]


# -- window and size -----------------------------------------------------------------------


def test_window_flush_at_exactly_window_ms_not_before(clock: MockClock) -> None:
    rig = Rig(clock)
    updates = [rig.up("a") for _ in range(3)]
    assert rig.enqueue(*updates) == 3
    assert rig.advance(0.125 - TINY) == 3
    assert rig.sink.batches() == []
    assert rig.advance(TINY) == 0
    [batch] = rig.sink.batches()
    assert batch.reason == "window" and batch.updates == tuple(updates)


def test_window_starts_at_the_first_queued_update(clock: MockClock) -> None:
    rig = Rig(clock)
    first = rig.up("a")
    rig.enqueue(first)
    rig.advance(0.0625)
    second = rig.up("a")
    assert rig.enqueue(second) == 2
    assert rig.advance(0.0625) == 0  # 125 ms after the first, not after the second
    [batch] = rig.sink.batches()
    assert seqs(batch) == [first.seq, second.seq]
    third = rig.up("a")
    rig.enqueue(third)  # a new window opens
    assert rig.advance(0.125 - TINY) == 1
    assert rig.advance(TINY) == 0
    assert [seqs(b) for b in rig.sink.batches()] == [[1, 2], [3]]


def test_max_size_flushes_at_once(clock: MockClock) -> None:
    rig = Rig(clock, batch_settings(max_size=4))
    assert rig.enqueue(*[rig.up("a") for _ in range(3)]) == 3
    assert rig.sink.batches() == []
    assert rig.enqueue(rig.up("a")) == 0
    [batch] = rig.sink.batches()
    assert batch.reason == "size" and seqs(batch) == [1, 2, 3, 4]


def test_oversized_enqueue_goes_out_in_chunks_and_the_rest_waits(clock: MockClock) -> None:
    rig = Rig(clock, batch_settings(max_size=4))
    rig.enqueue(rig.up("a"))
    clock.advance(0.0625)
    assert rig.enqueue(*[rig.up("a") for _ in range(9)]) == 2
    assert [(b.reason, seqs(b)) for b in rig.sink.batches()] == [
        ("size", [1, 2, 3, 4]), ("size", [5, 6, 7, 8])
    ]
    # the leftovers arrived now, so their window runs from now
    assert rig.advance(0.0625) == 2
    assert rig.advance(0.0625) == 0
    assert [(b.reason, seqs(b)) for b in rig.sink.batches()][-1] == ("window", [9, 10])


# -- ordering ------------------------------------------------------------------------------


def test_batch_is_ordered_by_priority(clock: MockClock) -> None:
    rig = Rig(clock)
    low, med, high = rig.up("a", priority="low"), rig.up("a"), rig.up("a", priority="high")
    rig.enqueue(low, med, high)
    rig.advance(0.125)
    [batch] = rig.sink.batches()
    assert [u.priority for u in batch.updates] == ["high", "medium", "low"]


def test_within_a_priority_updates_are_grouped_by_module_then_seq(clock: MockClock) -> None:
    rig = Rig(clock)
    m1a, m2a, m1b, m2b = rig.up("m1"), rig.up("m2"), rig.up("m1"), rig.up("m2")
    h3 = rig.up("m3", priority="high")
    m3c, m1c = rig.up("m3"), rig.up("m1")
    # arrival order at the batcher scrambled on purpose: seq decides
    rig.enqueue(m1c, m2b, h3, m3c, m1b, m2a, m1a)
    rig.advance(0.125)
    [batch] = rig.sink.batches()
    assert batch.updates == (h3, m1a, m1b, m1c, m2a, m2b, m3c)
    assert list(batch.by_module) == ["m3", "m1", "m2"]


def _reference_order(updates: list[Update]) -> list[Update]:
    out: list[Update] = []
    for priority in PRIORITIES:
        at = sorted((u for u in updates if u.priority == priority), key=lambda u: u.seq)
        modules: list[str] = []
        for u in at:
            if u.module_id not in modules:
                modules.append(u.module_id)
        for m in modules:
            out.extend(u for u in at if u.module_id == m)
    return out


def test_order_updates_matches_a_reference_on_random_input() -> None:
    rng = random.Random(1234)
    for _ in range(50):
        updates = [
            Update(rng.choice("abcde"), "k", None, rng.choice(PRIORITIES), seq, 0.0)
            for seq in rng.sample(range(1000), rng.randint(0, 60))
        ]
        assert order_updates(updates) == _reference_order(updates)


# -- critical bypass -----------------------------------------------------------------------


def test_critical_updates_bypass_the_queue(clock: MockClock) -> None:
    rig = Rig(clock)
    normal = rig.up("a")
    rig.enqueue(normal)
    c1, c2 = rig.up("b", priority="critical"), rig.up("a", priority="critical")
    assert rig.enqueue(c2, rig.up("a"), c1) == 2  # the medium one joins the queue
    [critical] = rig.sink.batches()
    assert critical.reason == "critical" and critical.updates == (c1, c2)
    rig.advance(0.125)
    window = rig.sink.batches()[-1]
    assert window.reason == "window" and seqs(window) == [1, 4]
    assert critical.batch_id < window.batch_id


# -- subscriptions -------------------------------------------------------------------------


def test_each_subscriber_gets_one_filtered_delivery_per_batch(clock: MockClock) -> None:
    rig = Rig(clock)
    rig.tell(Subscribe("only_a", ("a",)))
    rig.tell(Subscribe("ab", ("b", "a")))
    rig.tell(Subscribe("nobody", ("zzz",)))
    a1, b1, c1 = rig.up("a"), rig.up("b"), rig.up("c")
    b2, a2 = rig.up("b", priority="high"), rig.up("a")
    rig.enqueue(a1, b1, c1, b2, a2)
    rig.advance(0.125)
    [full] = rig.sink.batches("all")
    assert full.updates == (b2, a1, a2, b1, c1)
    [only_a] = rig.sink.batches("only_a")
    assert only_a.updates == (a1, a2)
    [ab] = rig.sink.batches("ab")
    assert ab.updates == (b2, a1, a2, b1)  # still in batch order
    assert rig.sink.batches("nobody") == []
    assert full.batch_id == only_a.batch_id == ab.batch_id
    assert rig.stats().deliveries == 3


def test_unsubscribe_and_resubscribe(clock: MockClock) -> None:
    rig = Rig(clock)
    rig.tell(Subscribe("x", ("a",)))
    assert rig.ask(Unsubscribe("x")) is True
    assert rig.ask(Unsubscribe("x")) is False
    rig.enqueue(rig.up("a"))
    rig.advance(0.125)
    assert rig.sink.batches("x") == []
    rig.tell(Subscribe("x", ("b",)))
    rig.tell(Subscribe("x", ("a",)))  # replaces the previous subscription
    rig.enqueue(rig.up("a"), rig.up("b"))
    rig.advance(0.125)
    [batch] = rig.sink.batches("x")
    assert [u.module_id for u in batch.updates] == ["a"]
    assert rig.stats().subscribers == 2


def test_batch_ids_increase(clock: MockClock) -> None:
    rig = Rig(clock, batch_settings(max_size=2))
    rig.enqueue(*[rig.up("a") for _ in range(6)])
    rig.enqueue(rig.up("a", priority="critical"))
    ids = [b.batch_id for b in rig.sink.batches()]
    assert len(ids) == 4 and ids == sorted(ids) and len(set(ids)) == 4


# -- disabled ------------------------------------------------------------------------------


def test_disabled_delivers_each_update_on_its_own(clock: MockClock) -> None:
    rig = Rig(clock, batch_settings(enabled=False))
    u1, u2, u3 = rig.up("a"), rig.up("b", priority="low"), rig.up("a", priority="critical")
    assert rig.enqueue(u1, u2, u3) == 0
    batches = rig.sink.batches()
    assert [b.updates for b in batches] == [(u3,), (u1,), (u2,)]
    assert {b.reason for b in batches} == {"unbatched"}
    stats = rig.stats()
    assert (stats.batches, stats.updates, stats.mean_size) == (3, 3, 1.0)


# -- admission and the queue bound ---------------------------------------------------------


def test_queue_gauge_admission_and_rejection() -> None:
    gauge = QueueGauge(max_queue=3)
    assert gauge.admit() and gauge.admit(2)
    gauge.set_depth(3)
    assert gauge.admit() is False
    gauge.set_depth(2)
    assert gauge.admit(2) is False  # 2 + 2 > 3
    assert gauge.admit(1) is True
    gauge.sent(1)  # one update on its way to the batcher counts too
    assert gauge.admit(1) is False
    gauge.received(5)  # never below zero
    stats = gauge.statistics()
    assert (stats.depth, stats.in_transit, stats.admitted, stats.rejected) == (2, 0, 4, 4)
    assert gauge.rejected == 4  # counted in updates: 1 + 2 + 1
    gauge.max_queue = 10  # the façade assigns it on a mode switch
    assert gauge.admit(8) and gauge.statistics().max_queue == 10


def test_batcher_keeps_the_gauge_current_and_reports_rejections(clock: MockClock) -> None:
    gauge = QueueGauge()
    rig = Rig(clock, batch_settings(max_size=10, max_queue=12), gauge=gauge)
    assert gauge.max_queue == 12
    gauge.sent(4)
    rig.enqueue(*[rig.up("a") for _ in range(4)])
    assert (gauge.depth, gauge.statistics().in_transit) == (4, 0)
    gauge.set_depth(12)  # as if full
    assert gauge.admit() is False
    rig.advance(0.125)
    assert gauge.depth == 0
    assert rig.stats().rejected == 1
    rig.ask(Reconfigure({"window_ms": WINDOW_MS, "max_size": 10, "max_queue": 20}))
    assert gauge.max_queue == 20


def test_enqueue_above_max_queue_is_never_dropped(clock: MockClock) -> None:
    gauge = QueueGauge()
    rig = Rig(clock, batch_settings(max_size=5, max_queue=5), gauge=gauge)
    burst = [rig.up(m) for m in "abcabcabcabca"]  # 13 > max_queue
    assert rig.enqueue(*burst) == 3
    assert rig.ask(FlushBatches()) == 3
    delivered = [u for b in rig.sink.batches() for u in b.updates]
    assert sorted(u.seq for u in delivered) == [u.seq for u in burst]
    assert rig.stats().updates == 13


# -- failures and lifecycle ----------------------------------------------------------------


def test_sink_exception_is_contained(clock: MockClock) -> None:
    sink = Sink(failing=("bad",))
    rig = Rig(clock, sink=sink)
    rig.tell(Subscribe("bad", ("*",)))
    rig.tell(Subscribe("good", ("*",)))
    rig.enqueue(rig.up("a"))
    rig.advance(0.125)
    rig.enqueue(rig.up("a", priority="critical"))
    assert len(sink.batches("good")) == 2 and len(sink.batches("all")) == 2
    stats = rig.stats()
    assert (stats.delivery_errors, stats.deliveries) == (2, 6)
    assert rig.handle.is_alive() and rig.reports == []


def test_stop_flushes_the_queue(clock: MockClock) -> None:
    rig = Rig(clock)
    updates = [rig.up("a"), rig.up("b", priority="high")]
    rig.enqueue(*updates)
    rig.ref.stop(timeout=WAIT_S)
    [batch] = rig.sink.batches()
    assert batch.reason == "flush" and batch.updates == (updates[1], updates[0])


def test_flush_batches_returns_the_count(clock: MockClock) -> None:
    rig = Rig(clock)
    rig.enqueue(rig.up("a"), rig.up("a"))
    assert rig.ask(FlushBatches()) == 2
    assert rig.ask(FlushBatches()) == 0
    assert rig.advance(0.125) == 0  # the cancelled window delivers nothing more
    assert len(rig.sink.batches()) == 1


def test_export_and_restore(clock: MockClock) -> None:
    rig = Rig(clock)
    rig.tell(Subscribe("x", ("b",)))
    rig.enqueue(rig.up("a", priority="critical"))  # batch 1
    queued = (rig.up("a"), rig.up("b"))
    rig.enqueue(*queued)
    handover = rig.ask(Handover())
    assert isinstance(handover, BatcherHandover)
    assert handover.queued == queued and handover.next_batch_id == 2
    assert dict(handover.subscriptions) == {"all": ("*",), "x": ("b",)}
    clock.advance(0.0625)
    rig.ref = rig.start(handover)
    assert rig.ask(QueueDepth()) == 2
    assert rig.advance(0.0625) == 2  # the predecessor's tick is ignored; a new window runs
    assert rig.advance(0.0625) == 0
    [restored] = [b for b in rig.sink.batches() if b.reason == "window"]
    assert restored.updates == queued and restored.batch_id == 2
    assert [b.updates for b in rig.sink.batches("x")] == [(queued[1],)]


def test_crash_hands_the_queue_to_a_successor(clock: MockClock) -> None:
    rig = Rig(clock)
    queued = (rig.up("a"), rig.up("b"), rig.up("a", priority="low"))
    rig.enqueue(*queued)
    with pytest.raises(ActorCrashedError):
        rig.ask(Crash())
    [report] = rig.reports
    assert report.name == "batcher" and not report.fatal
    assert isinstance(report.handover, BatcherHandover)
    assert report.handover.queued == queued
    later = rig.up("c")
    rig.tell(Enqueue((later,)))  # buffered by the handle while the batcher is down
    rig.ref = rig.start(report.handover)
    assert rig.ask(QueueDepth()) == 4
    rig.advance(0.125)
    [batch] = rig.sink.batches()
    assert batch.updates == (queued[0], queued[1], later, queued[2])


def test_reconfigure_keeps_the_queue_and_applies_live(clock: MockClock) -> None:
    rig = Rig(clock, batch_settings(max_size=10))
    rig.enqueue(*[rig.up("a") for _ in range(3)])
    rig.ask(Reconfigure(batch_settings(max_size=10, window_ms=250.0)))
    assert rig.advance(0.125) == 3  # the open window was re-armed at 250 ms
    assert rig.advance(0.125) == 0
    rig.enqueue(*[rig.up("a") for _ in range(3)])
    rig.ask(Reconfigure(batch_settings(max_size=2, window_ms=250.0)))
    assert rig.ask(QueueDepth()) == 1  # one chunk of 2 went out at once
    assert rig.sink.batches()[-1].reason == "size"
    rig.ask(Reconfigure(batch_settings(enabled=False)))
    assert rig.ask(QueueDepth()) == 0
    assert rig.sink.batches()[-1].reason == "flush"
    assert sum(len(b) for b in rig.sink.batches()) == 6


def test_shorter_window_that_already_passed_flushes_now(clock: MockClock) -> None:
    rig = Rig(clock, batch_settings(window_ms=500.0))
    rig.enqueue(rig.up("a"))
    clock.advance(0.25)
    rig.ask(Reconfigure(batch_settings(window_ms=WINDOW_MS)))
    assert rig.ask(QueueDepth()) == 0
    assert rig.sink.batches()[0].reason == "window"


# -- measurements --------------------------------------------------------------------------


def test_publish_to_delivery_is_recorded_once_per_update(clock: MockClock) -> None:
    metrics = MetricsRegistry(clock)
    rig = Rig(clock, metrics=metrics)
    rig.tell(Subscribe("other", ("*",)))
    rig.enqueue(rig.up("a"), rig.up("b"))
    clock.advance(0.0625)
    rig.enqueue(rig.up("a", priority="critical"))
    rig.advance(0.0625)
    snap = metrics.histogram("publish_to_delivery").total()
    assert snap.count == 3
    assert snap.max == pytest.approx(125.0)


def test_statistics(clock: MockClock) -> None:
    rig = Rig(clock, batch_settings(max_size=3))
    rig.enqueue(*[rig.up("a") for _ in range(7)])
    stats = rig.stats()
    assert (stats.batches, stats.updates, stats.queue_depth) == (2, 6, 1)
    assert stats.mean_size == 3.0 and stats.efficiency > 0
    assert stats.as_dict()["queue_depth"] == 1
    with pytest.raises(AttributeError):
        stats.batches = 0  # type: ignore[misc]


# -- wire ----------------------------------------------------------------------------------


def test_messages_round_trip_over_the_wire(clock: MockClock) -> None:
    up = Seq(clock)
    messages = [
        Enqueue((up("a", payload={"text": "hi"}), up("b", priority="critical"))),
        Subscribe("editor", ("a", "b")),
        Unsubscribe("editor"),
        FlushBatches(),
        QueueDepth(),
    ]
    for message in messages:
        packed = msgpack.packb(message.to_wire())
        assert from_wire(msgpack.unpackb(packed)) == message


def test_a_module_that_subscribes_to_nothing_is_not_an_active_subscription(
        clock: MockClock) -> None:
    rig = Rig(clock)
    before = rig.stats().subscribers
    rig.tell(Subscribe("publisher-only", ()))
    assert rig.stats().subscribers == before
    rig.tell(Subscribe("reader", ("a",)))
    assert rig.stats().subscribers == before + 1
