"""Tests of the debouncer actor, on a MockClock: nothing sleeps.

The debouncer talks to a fake batcher (actor name ``batcher``, actor_harness.py's
recorder) whose ``Enqueue`` messages the tests read. Synchronisation: after
``clock.advance`` the test asks the debouncer (its inbox is FIFO, so the wake was handled
first), then asks the fake batcher (whatever the debouncer told it arrived before that ask).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from actor_harness import ActorRig

from modcoord.actors import (
    ActorCrashedError,
    Crash,
    DebounceSettings,
    Handover,
    InvalidMessageError,
    Message,
    MockClock,
    MonotonicClock,
    Reconfigure,
    Statistics,
    Update,
)
from modcoord.actors.clock import TimerHandle
from modcoord.actors.debouncer import (
    Cancel,
    DebouncerActor,
    DebouncerHandover,
    DebouncerStatistics,
    Flush,
    Pending,
    PendingEntry,
    Publish,
    PublishMany,
    _Wake,
)
from modcoord.actors.message import from_wire
from modcoord.actors.shared.metrics import MetricsRegistry

DELAY = 300 / 1000.0  # the same float the actor computes from delay_ms
CRITICAL = 50 / 1000.0
MAX_WAIT = 1000 / 1000.0


class LateClock(MockClock):
    """A MockClock whose timers fire ``lag`` seconds after their deadline (a busy scheduler)."""

    def __init__(self, lag: float) -> None:
        super().__init__()
        self.lag = lag

    def call_at(self, deadline: float, callback: Callable[[], None]) -> TimerHandle:
        return super().call_at(deadline + self.lag, callback)


class Rig(ActorRig[Any]):
    """A debouncer plus a fake batcher (recording what it is told) sharing one clock (a
    MockClock unless noted); ``enqueued_event`` is set at each Enqueue the fake receives."""

    def __init__(self, clock: MockClock | MonotonicClock, settings: Any = None,
                 metrics: MetricsRegistry | None = None,
                 enqueued_event: threading.Event | None = None) -> None:
        swap: dict[str, Any] = {} if metrics is None else {"metrics": metrics}
        replies = {} if enqueued_event is None else {
            "batcher": {"Enqueue": lambda message: enqueued_event.set()}}
        super().__init__(clock, "debouncer", DebouncerActor,
                         settings if settings is not None else DebounceSettings(),
                         peers=("batcher",), replies=replies, **swap)
        self.deb = self.handle
        self.bat = self.peers["batcher"]
        self.start()
        self.t0 = clock.monotonic()

    def publish(self, *updates: Update) -> None:
        """Publish and wait until handled, so the actor reads the clock before it moves."""
        self.deb.ask(PublishMany(tuple(updates)))

    def enqueues(self) -> list[Any]:
        """The Enqueue messages the fake batcher received so far, in order."""
        self.sync_peers()
        return self.sent("batcher", "Enqueue")

    def sync(self) -> list[Any]:
        """Wait until both actors handled everything sent so far; return the Enqueues."""
        self.deb.ask(Pending())
        return self.enqueues()

    def delivered(self) -> list[Update]:
        return [u for enq in self.sync() for u in enq.updates]

    def advance(self, seconds: float) -> None:
        """Advance, let the wake run, then fire any timer the wake armed in the past."""
        assert isinstance(self.clock, MockClock)
        self.clock.advance(seconds)
        self.sync()
        self.clock.advance(0)
        self.sync()

    def advance_to(self, t: float) -> None:
        """Advance to exactly ``t`` (``a + (b - a) == b`` for these nearby floats)."""
        self.advance(t - self.clock.monotonic())

    def pending(self) -> int:
        return self.deb.ask(Pending())  # type: ignore[no-any-return]

    def stats(self) -> DebouncerStatistics:
        return self.deb.ask(Statistics())  # type: ignore[no-any-return]


def upd(key: str, payload: Any, priority: str = "medium", module: str = "m",
        seq: int = 0) -> Update:
    return Update(module_id=module, key=key, payload=payload, priority=priority, seq=seq)


@pytest.fixture
def make_rig(clock: MockClock) -> Callable[..., Rig]:
    def make(settings: Any = None, clock_: MockClock | None = None) -> Rig:
        return Rig(clock_ if clock_ is not None else clock, settings)

    return make


# -- latest wins, delays ---------------------------------------------------------------------


def test_rapid_publishes_collapse_to_the_latest(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    for i in range(5):
        rig.publish(upd("doc", {"text": "v" * i}, seq=i))
        rig.advance(0.01)
    rig.advance(1.0)
    got = rig.delivered()
    assert [(u.key, u.payload, u.seq) for u in got] == [("doc", {"text": "vvvv"}, 4)]
    assert len(rig.sync()) == 1
    s = rig.stats()
    assert (s.received, s.emitted, s.collapsed, s.cancelled, s.pending) == (5, 1, 4, 0, 0)


def test_delay_is_honoured(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.publish(upd("k", 1))
    rig.advance_to(rig.t0 + DELAY - 1e-6)
    assert rig.delivered() == []
    assert rig.pending() == 1
    rig.advance_to(rig.t0 + DELAY)
    assert [u.payload for u in rig.delivered()] == [1]
    assert rig.pending() == 0


def test_critical_uses_the_critical_delay(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.publish(upd("alarm", "fire", priority="critical"), upd("k", "slow"))
    rig.advance_to(rig.t0 + CRITICAL - 1e-6)
    assert rig.delivered() == []
    rig.advance_to(rig.t0 + CRITICAL)
    assert [(u.key, u.priority) for u in rig.delivered()] == [("alarm", "critical")]
    rig.advance_to(rig.t0 + DELAY)
    assert [u.key for u in rig.delivered()] == ["alarm", "k"]


def test_critical_pulls_a_pending_normal_deadline_in(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.publish(upd("k", "normal"))
    rig.advance(0.1)
    now = rig.clock.monotonic()
    rig.publish(upd("k", "urgent", priority="critical"))
    rig.advance_to(now + CRITICAL - 1e-6)
    assert rig.delivered() == []
    rig.advance_to(now + CRITICAL)
    got = rig.delivered()
    assert [(u.payload, u.priority) for u in got] == [("urgent", "critical")]


def test_critical_never_pushes_a_deadline_out(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.publish(upd("k", "normal"))
    rig.advance(0.28)  # now + critical delay (0.33) would be later than the 0.30 deadline
    rig.publish(upd("k", "urgent", priority="critical"))
    rig.advance_to(rig.t0 + DELAY - 1e-6)
    assert rig.delivered() == []
    rig.advance_to(rig.t0 + DELAY)
    assert [(u.payload, u.priority) for u in rig.delivered()] == [("urgent", "critical")]


def test_normal_after_pending_critical_keeps_critical_priority(
        make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.publish(upd("k", "first", priority="critical", seq=1))
    rig.advance(0.01)
    now = rig.clock.monotonic()
    rig.publish(upd("k", "second", priority="low", seq=2))
    rig.advance_to(rig.t0 + CRITICAL)  # the first deadline was restarted, not kept
    assert rig.delivered() == []
    rig.advance_to(now + CRITICAL)
    got = rig.delivered()
    assert [(u.payload, u.priority, u.seq) for u in got] == [("second", "critical", 2)]


def test_max_wait_caps_a_continuous_stream(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    step = 0.1
    emissions: list[tuple[int, Any]] = []  # (step index, payload)
    seen = 0
    for i in range(20):  # one publish every 100 ms for 2 s
        rig.publish(upd("stream", i))
        rig.advance(step)  # covers the time after publish i and before publish i + 1
        got = rig.delivered()
        emissions += [(i, u.payload) for u in got[seen:]]
        seen = len(got)
    # Without max_wait nothing would go out before the stream stops; with it, something
    # goes out at least every max_wait, always the latest payload at that moment.
    assert len(emissions) >= 2
    assert all(payload == i for i, payload in emissions)
    steps_per_wait = round(MAX_WAIT / step)
    assert emissions[0][0] >= steps_per_wait - 2  # the stream kept restarting the timer
    marks = [-1] + [i for i, _ in emissions]
    assert all(b - a <= steps_per_wait + 1 for a, b in itertools.pairwise(marks))
    rig.advance(MAX_WAIT)
    assert rig.delivered()[-1].payload == 19
    assert rig.pending() == 0


# -- flush, cancel, pending ------------------------------------------------------------------


def test_flush_by_key_by_module_and_all(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.publish(upd("x", 1, module="a"), upd("y", 2, module="a"), upd("x", 3, module="b"))
    assert rig.deb.ask(Flush("a", "x")) == 1
    assert [(u.module_id, u.key) for u in rig.delivered()] == [("a", "x")]
    assert rig.deb.ask(Flush("a", "x")) == 0
    assert rig.deb.ask(Flush(module_id="a")) == 1
    assert [(u.module_id, u.key) for u in rig.delivered()][1:] == [("a", "y")]
    rig.publish(upd("z", 4, module="c"))
    assert rig.deb.ask(Flush()) == 2
    enqueues = rig.sync()
    assert len(enqueues) == 3  # one Enqueue per flush that delivered something
    assert [(u.module_id, u.key) for u in enqueues[2].updates] == [("b", "x"), ("c", "z")]
    assert rig.pending() == 0
    assert rig.clock.pending_timers() == 0
    assert rig.stats().emitted == 4
    rig.advance(2.0)
    assert len(rig.sync()) == 3  # nothing left to fire


def test_flush_orders_by_deadline_then_arrival(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.publish(upd("n1", 1), upd("c", 2, priority="critical"), upd("n2", 3))
    assert rig.deb.ask(Flush()) == 3
    assert [u.key for u in rig.delivered()] == ["c", "n1", "n2"]


def test_cancel_drops_the_pending_update_and_counts_it(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.publish(upd("keep", 1), upd("drop", 2))
    assert rig.deb.ask(Cancel("m", "drop")) is True
    assert rig.deb.ask(Cancel("m", "drop")) is False
    assert rig.deb.ask(Cancel("other", "keep")) is False
    assert rig.pending() == 1
    rig.advance(1.0)
    assert [u.key for u in rig.delivered()] == ["keep"]
    s = rig.stats()
    assert (s.received, s.emitted, s.cancelled, s.pending) == (2, 1, 1, 0)


def test_cancel_of_the_last_key_disarms_the_timer(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.publish(upd("k", 1))
    assert rig.clock.pending_timers() == 1
    assert rig.deb.ask(Cancel("m", "k")) is True
    assert rig.clock.pending_timers() == 0


def test_pending_counts_keys_and_emptied_keys_are_forgotten(
        make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.publish(upd("a", 1), upd("b", 1), upd("a", 2))
    assert rig.pending() == 2
    rig.advance_to(rig.t0 + DELAY)
    assert rig.pending() == 0
    assert rig.stats().pending == 0
    # A forgotten key starts afresh: its max_wait counts from the new first publish,
    # so the old key's cap (t0 + 1.0) does not apply to a publish at t0 + 0.9.
    rig.advance_to(rig.t0 + 0.9)
    rig.publish(upd("a", 3))
    rig.advance_to(rig.t0 + MAX_WAIT)
    assert [u.payload for u in rig.delivered()] == [2, 1]
    rig.advance_to(rig.t0 + 0.9 + DELAY)
    assert [u.payload for u in rig.delivered()] == [2, 1, 3]


def test_invalid_updates_are_refused_and_nothing_is_accepted(
        make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    with pytest.raises(InvalidMessageError):
        rig.deb.ask(PublishMany((upd("ok", 1), upd("bad", 2, priority="urgent"))))
    with pytest.raises(InvalidMessageError):
        rig.deb.ask(Publish("not an update"))  # type: ignore[arg-type]
    assert rig.pending() == 0
    rig.deb.ask(Publish(upd("ok", 1)))
    assert rig.pending() == 1
    assert rig.stats().received == 1


# -- enabled / reconfigure -------------------------------------------------------------------


def test_disabled_passes_updates_straight_through(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(DebounceSettings(enabled=False))
    rig.publish(upd("k", 1), upd("k", 2), upd("j", 3, priority="critical"))
    enqueues = rig.sync()
    assert len(enqueues) == 1
    assert [u.payload for u in enqueues[0].updates] == [1, 2, 3]
    assert rig.pending() == 0
    assert rig.clock.pending_timers() == 0
    s = rig.stats()
    assert (s.received, s.emitted, s.collapsed) == (3, 3, 0)


def test_reconfigure_keeps_pending_and_never_pushes_out(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.publish(upd("k", 1))
    rig.deb.ask(Reconfigure({"delay_ms": 500.0, "max_wait_ms": 2000.0}))
    assert rig.pending() == 1
    rig.advance_to(rig.t0 + DELAY)  # the scheduled deadline stands
    assert [u.payload for u in rig.delivered()] == [1]
    t1 = rig.clock.monotonic()
    rig.publish(upd("k", 2))  # new publishes use the new delay
    rig.advance_to(t1 + 0.5 - 1e-6)
    assert rig.delivered() == [upd("k", 1)]
    rig.advance_to(t1 + 0.5)
    assert [u.payload for u in rig.delivered()] == [1, 2]


def test_reconfigure_shrinking_the_delay_pulls_deadlines_in(
        make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.publish(upd("k", 1))
    rig.advance(0.05)
    now = rig.clock.monotonic()
    rig.deb.ask(Reconfigure(DebounceSettings(delay_ms=100.0, critical_delay_ms=10.0)))
    rig.advance_to(now + 0.1 - 1e-6)
    assert rig.delivered() == []
    rig.advance_to(now + 0.1)
    assert [u.payload for u in rig.delivered()] == [1]


def test_reconfigure_to_disabled_flushes_pending(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.publish(upd("a", 1), upd("b", 2))
    rig.deb.ask(Reconfigure(DebounceSettings(enabled=False)))
    assert [u.key for u in rig.delivered()] == ["a", "b"]
    assert rig.pending() == 0
    assert rig.clock.pending_timers() == 0
    rig.publish(upd("c", 3))
    assert [u.key for u in rig.delivered()] == ["a", "b", "c"]


# -- lateness, the single timer ------------------------------------------------------------


def test_lateness_statistics_reflect_a_late_wake() -> None:
    clock = LateClock(lag=0.5)  # the timer for t0 + 0.05 fires at t0 + 0.55
    metrics = MetricsRegistry(clock)
    rig = Rig(clock, metrics=metrics)
    rig.publish(upd("n1", 1), upd("c", 2, priority="critical"), upd("n2", 3))
    rig.advance_to(rig.t0 + CRITICAL + 0.5)  # one jump past every deadline
    enqueues = rig.sync()
    assert len(enqueues) == 1  # one Enqueue per wake, by deadline then arrival
    assert [u.key for u in enqueues[0].updates] == ["c", "n1", "n2"]
    s = rig.stats()
    # One timer fire, one sample: how late the most overdue key (critical, due at
    # t0 + 0.05) went out.
    assert s.lateness_max_ms == pytest.approx(500.0)
    assert s.lateness_p50_ms == pytest.approx(500.0)
    shared = metrics.histogram("debounce_lateness").total()
    assert shared.count == 1
    assert shared.max == pytest.approx(500.0)


def test_on_time_wakes_record_zero_lateness(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.publish(upd("k", 1))
    rig.advance_to(rig.t0 + DELAY)
    s = rig.stats()
    assert s.emitted == 1
    assert s.lateness_max_ms == 0.0


def test_one_clock_timer_regardless_of_key_count(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    assert rig.clock.pending_timers() == 0
    rig.publish(*(upd(f"k{i}", i) for i in range(500)))
    rig.sync()
    assert rig.clock.pending_timers() == 1
    rig.advance(0.1)
    rig.publish(*(upd(f"c{i}", i, priority="critical") for i in range(500)))
    rig.sync()
    assert rig.clock.pending_timers() == 1  # re-armed earlier, the old one cancelled
    rig.advance(CRITICAL)
    assert len(rig.delivered()) == 500
    assert rig.clock.pending_timers() == 1
    assert rig.pending() == 500
    rig.advance(1.0)
    assert len(rig.delivered()) == 1000
    assert rig.clock.pending_timers() == 0


# -- lifecycle: stop, handover, crash --------------------------------------------------------


def test_stop_flushes_pending_updates(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.publish(upd("a", 1), upd("b", 2, priority="high"))
    rig.sync()
    rig.ref.stop()
    enqueues = rig.enqueues()
    assert [u.key for u in enqueues[0].updates] == ["a", "b"]
    assert rig.clock.pending_timers() == 0


def test_export_and_restore_keep_pending_work(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.publish(upd("n", "normal"), upd("c", "crit", priority="critical"))
    rig.advance(0.01)
    rig.publish(upd("c", "crit-2", priority="low"))  # collapses; keeps critical priority
    handover = rig.deb.ask(Handover())
    assert isinstance(handover, DebouncerHandover)
    assert [(e.update.key, e.update.payload, e.update.priority) for e in handover.entries] == [
        ("c", "crit-2", "critical"), ("n", "normal", "medium")]
    assert handover.entries[0].first_at == rig.t0
    assert rig.clock.pending_timers() == 0  # the old actor's timer is gone
    assert rig.enqueues() == []  # handed over, not flushed

    successor = DebouncerActor.start(rig.settings, rig.context, takeover=handover)
    rig.deb.install(successor)
    assert rig.pending() == 2
    assert rig.clock.pending_timers() == 1
    rig.advance_to(handover.entries[0].deadline)
    assert [u.payload for u in rig.delivered()] == ["crit-2"]
    # The restored key keeps its first publish time: max_wait still counts from t0.
    for t, payload in ((0.25, "n-2"), (0.5, "n-3"), (0.75, "n-4")):
        rig.advance_to(rig.t0 + t)
        rig.publish(upd("n", payload))
    rig.advance_to(rig.t0 + MAX_WAIT - 1e-6)
    assert [u.payload for u in rig.delivered()] == ["crit-2"]
    rig.advance_to(rig.t0 + MAX_WAIT)
    assert [u.payload for u in rig.delivered()] == ["crit-2", "n-4"]


@pytest.mark.parametrize("kind", ["exception", "base_exception"])
def test_crash_reports_a_handover_with_the_pending_entries(
        make_rig: Callable[..., Rig], kind: str) -> None:
    rig = make_rig()
    rig.publish(upd("a", 1), upd("b", 2, module="other"))
    with pytest.raises(ActorCrashedError):
        rig.deb.ask(Crash(kind))
    assert len(rig.reports) == 1
    report = rig.reports[0]
    assert report.name == "debouncer"
    assert report.fatal is (kind == "base_exception")
    assert isinstance(report.handover, DebouncerHandover)
    assert [(e.update.module_id, e.update.key, e.update.payload)
            for e in report.handover.entries] == [("m", "a", 1), ("other", "b", 2)]
    assert all(e.deadline == rig.t0 + DELAY for e in report.handover.entries)
    assert rig.clock.pending_timers() == 0
    assert rig.enqueues() == []  # a crash hands over; it does not deliver


def test_restore_of_a_past_deadline_emits_at_once_and_counts_lateness(
        clock: MockClock) -> None:
    rig = ActorRig(clock, "debouncer", DebouncerActor, DebounceSettings(), peers=("batcher",))
    now = clock.monotonic()
    handover = DebouncerHandover(entries=(
        PendingEntry(upd("late", 1), first_at=now - 1.0, deadline=now - 0.2),
    ))
    rig.start(handover)
    assert rig.ask(Pending()) == 1  # restored (and the timer armed)
    clock.advance(0)
    assert rig.ask(Pending()) == 0
    rig.sync_peers()
    assert [u.key for e in rig.sent("batcher", "Enqueue") for u in e.updates] == ["late"]
    assert rig.ask(Statistics()).lateness_max_ms == pytest.approx(200.0)


def test_real_clock_fires_the_single_timer() -> None:
    clock = MonotonicClock()
    enqueued = threading.Event()
    try:
        rig = Rig(clock, DebounceSettings(delay_ms=20.0, critical_delay_ms=5.0),
                  enqueued_event=enqueued)
        rig.publish(upd("c", 1, priority="critical"), upd("n", 2))
        assert enqueued.wait(timeout=5.0)
        deadline = time.monotonic() + 5.0
        while len(rig.delivered()) < 2 and time.monotonic() < deadline:
            enqueued.clear()
            enqueued.wait(timeout=0.5)
        assert [u.key for u in rig.delivered()] == ["c", "n"]
        assert rig.pending() == 0
        assert rig.stats().emitted == 2
    finally:
        clock.close()


# -- wire, statistics ------------------------------------------------------------------------


def test_messages_round_trip_through_the_wire() -> None:
    messages: list[Message] = [
        PublishMany((upd("k", {"text": "hi", "n": [1, 2]}, seq=7),
                     upd("j", None, priority="critical", module="x"))),
        Publish(upd("k", b"bytes", priority="low")),
        Flush(), Flush("m"), Flush("m", "k"),
        Cancel("m", "k"),
        Pending(),
        _Wake(42),
    ]
    for message in messages:
        wire = message.to_wire()
        assert from_wire(wire) == message
        packed = msgpack.unpackb(msgpack.packb(wire, use_bin_type=True), raw=False)
        assert from_wire(packed) == message


def test_statistics_are_an_immutable_snapshot(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.publish(upd("a", 1), upd("a", 2), upd("b", 3))
    s = rig.stats()
    with pytest.raises(AttributeError):
        s.received = 0  # type: ignore[misc]
    d = s.as_dict()
    assert d["received"] == 3 and d["collapsed"] == 1 and d["pending"] == 2
    assert set(d) >= {"received", "emitted", "collapsed", "cancelled", "pending",
                      "lateness_p50_ms", "lateness_p99_ms", "lateness_max_ms"}
    rig.publish(upd("c", 4))
    assert rig.stats().received == 4 and s.received == 3


# -- stress ----------------------------------------------------------------------------------


def test_stress_every_key_emitted_once_with_its_latest_payload(
        make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    n_keys, n_updates, per_read = 10_000, 100_000, 1000
    latest: dict[str, int] = {}
    started = time.perf_counter()
    batch: list[Update] = []
    for i in range(n_updates):
        key = f"k{(i * 7919) % n_keys}"
        latest[key] = i
        batch.append(Update("m", key, i, "critical" if i % 97 == 0 else "medium", i))
        if len(batch) == per_read:  # one PublishMany per "socket read"
            rig.publish(*batch)
            batch = []
    rig.sync()
    assert rig.pending() == n_keys
    assert rig.clock.pending_timers() == 1
    rig.advance(MAX_WAIT + 0.5)
    got = rig.delivered()
    elapsed = time.perf_counter() - started
    assert len(got) == n_keys
    assert {u.key: u.payload for u in got} == latest
    s = rig.stats()
    assert (s.received, s.emitted, s.collapsed, s.pending) == (
        n_updates, n_keys, n_updates - n_keys, 0)
    assert rig.clock.pending_timers() == 0
    assert elapsed < 10.0


def test_restarted_timers_are_rescheduled_lazily_and_exactly(
        make_rig: Callable[..., Rig]) -> None:
    """A restart moves the deadline without a heap push; the early heap item re-queues
    the key at its real deadline, which is honoured exactly."""
    rig = make_rig()
    for i in range(50):
        rig.publish(upd("k", i))
        rig.advance(0.002)  # 50 restarts, 2 ms apart: well under max_wait
    last = rig.clock.monotonic() - 0.002
    rig.advance_to(last + DELAY - 0.001)
    assert rig.delivered() == []
    rig.advance_to(last + DELAY)
    assert [u.payload for u in rig.delivered()] == [49]
    assert rig.stats().lateness_max_ms == pytest.approx(0.0, abs=1e-6)


class StuckClock(MockClock):
    """A MockClock whose timers never fire: as if the actor's wake were stuck behind work."""

    def call_at(self, deadline: float, callback: Callable[[], None]) -> TimerHandle:
        return TimerHandle(deadline, callback)


def test_a_long_publish_batch_fires_passed_deadlines_inline() -> None:
    clock = StuckClock()
    rig = Rig(clock)
    rig.publish(upd("early", 1))
    clock.advance(DELAY + 0.01)  # its deadline passed; the (stuck) timer did not fire
    assert rig.delivered() == []
    rig.publish(*(upd(f"k{i}", i) for i in range(600)))
    keys = [u.key for u in rig.delivered()]
    assert keys == ["early"]  # emitted while working through the batch, not after it
    assert rig.pending() == 600
