"""Tests of the memory manager: activity table, sweeps, pressure cleanup, strategies."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from actor_harness import ActorRig, Sync, actor_logs

from modcoord.actors import memory as memory_mod
from modcoord.actors._base import (
    Crash,
    Handover,
    Reconfigure,
    Statistics,
)
from modcoord.actors.clock import MockClock
from modcoord.actors.errors import ActorCrashedError, InvalidMessageError
from modcoord.actors.memory import (
    CleanupReport,
    ForceCleanup,
    Forget,
    MemoryHandover,
    MemoryManagerActor,
    MemoryStatistics,
    Reactivate,
    Touch,
    Track,
)
from modcoord.actors.settings import MemorySettings
from modcoord.actors.shared import (
    ConnectionStates,
    NotifySwept,
    no_connection_states,
    no_swept_notice,
)
from modcoord.actors.shared.activity import ActivityTable

MB = 1024 * 1024


class Harness(ActorRig[MockClock]):
    """The memory manager, started, beside fake ``cache``, ``batcher`` and ``monitor`` peers
    (those in ``install_peers``; the others get a handle that only buffers). Unless
    ``rss_reader`` is given, resident memory reads ``level[0]`` bytes."""

    def __init__(self, clock: MockClock, settings: MemorySettings,
                 replies: dict[str, dict[str, Any]] | None,
                 rss_reader: Callable[[], int] | None, install_peers: tuple[str, ...],
                 connection_states: ConnectionStates, notify_swept: NotifySwept,
                 release_buffers: Callable[[], None]) -> None:
        self.level = [20 * MB]
        super().__init__(
            clock, "memory", MemoryManagerActor, settings, peers=install_peers,
            others=("cache", "batcher", "monitor"), replies=replies,
            rss_reader=rss_reader if rss_reader is not None else lambda: self.level[0],
            connection_states=connection_states, notify_swept=notify_swept,
            release_buffers=release_buffers)
        self.activity: ActivityTable = self.context.shared.activity
        self.start()

    def sync(self) -> MemoryStatistics:
        """Wait until memory and then every fake peer handled what was sent so far."""
        stats: MemoryStatistics = self.ask(Statistics())
        self.sync_peers()
        return stats

    def advance(self, seconds: float) -> MemoryStatistics:
        self.clock.advance(seconds)
        return self.sync()

    def run(self, seconds: int) -> MemoryStatistics:
        """Advance one second at a time, letting each tick be handled before the next."""
        stats = self.sync()
        for _ in range(seconds):
            stats = self.advance(1)
        return stats


def _settings(**over: Any) -> MemorySettings:
    base: dict[str, Any] = dict(
        strategy="conservative", cleanup_interval_ms=1000.0, inactive_after_ms=5000.0,
        max_rss_mb=100.0, check_interval_ms=3_600_000.0,
    )
    base.update(over)
    return MemorySettings(**base)


@pytest.fixture
def start(clock: MockClock) -> Callable[..., Harness]:
    def _start(settings: MemorySettings | None = None,
               replies: dict[str, dict[str, Any]] | None = None,
               rss_reader: Callable[[], int] | None = None,
               install_peers: tuple[str, ...] = ("cache", "batcher", "monitor"),
               connection_states: ConnectionStates = no_connection_states,
               notify_swept: NotifySwept = no_swept_notice,
               release_buffers: Callable[[], None] = lambda: None) -> Harness:
        return Harness(clock, settings or _settings(), replies, rss_reader, install_peers,
                       connection_states, notify_swept, release_buffers)

    return _start


@pytest.fixture
def memory_logs() -> Iterator[list[Any]]:
    yield from actor_logs("memory")


# -- ActivityTable -------------------------------------------------------------------------


def test_activity_table_touch_last_seen_and_inactive(clock: MockClock) -> None:
    table = ActivityTable(clock)
    assert table.touch("b") is False
    clock.advance(2)
    assert table.touch("a") is False
    assert table.last_seen("b") == 1000.0
    assert table.last_seen("a") == 1002.0
    assert table.last_seen("zzz") is None
    assert table.inactive_since(1001.0) == ["b"]
    assert table.inactive_since(1003.0) == ["a", "b"]
    assert table.inactive_since(1000.0) == []


def test_activity_table_swept_module_reports_reactivation_once(clock: MockClock) -> None:
    table = ActivityTable(clock)
    table.touch("a")
    clock.advance(10)
    assert table.mark_swept("a", cutoff=1005.0) is True
    assert table.mark_swept("a", cutoff=1005.0) is False  # already swept
    assert table.is_swept("a")
    assert table.inactive_since(1005.0) == []
    assert table.inactive_since(1005.0, include_swept=True) == ["a"]
    assert table.touch("a") is True
    assert table.touch("a") is False
    assert not table.is_swept("a")
    stats = table.statistics()
    assert (stats.modules, stats.swept, stats.sweeps, stats.reactivations) == (1, 0, 1, 1)
    assert stats.as_dict()["reactivations"] == 1


def test_activity_table_refuses_to_sweep_recent_or_unknown(clock: MockClock) -> None:
    table = ActivityTable(clock)
    table.touch("a")
    clock.advance(10)
    table.touch("a")  # active after the cutoff
    assert table.mark_swept("a", cutoff=1005.0) is False
    assert table.mark_swept("ghost", cutoff=1005.0) is False
    assert table.mark_swept("ghost") is True  # unconditional (restoring a handover)
    assert table.swept() == frozenset({"ghost"})


def test_activity_table_forget(clock: MockClock) -> None:
    table = ActivityTable(clock)
    table.touch("a")
    table.mark_swept("a")
    table.forget("a")
    table.forget("a")  # idempotent
    assert table.last_seen("a") is None
    assert not table.is_swept("a")
    assert table.statistics().modules == 0


def test_activity_table_concurrent_touch_never_leaves_an_active_module_swept(
        clock: MockClock) -> None:
    table = ActivityTable(clock)
    table.touch("a")
    clock.advance(10)
    stop = threading.Event()
    reactivations = []

    def toucher() -> None:
        while not stop.is_set():
            if table.touch("a"):
                reactivations.append(1)

    thread = threading.Thread(target=toucher)
    thread.start()
    try:
        marked = sum(table.mark_swept("a", cutoff=1005.0) for _ in range(2000))
    finally:
        stop.set()
        thread.join(timeout=5)
    # The toucher keeps "a" fresh, so it is never marked; or a mark was consumed by a touch.
    assert marked == len(reactivations)
    assert table.touch("a") is False


# -- sweeps and reactivation ---------------------------------------------------------------


def test_inactive_module_is_swept_at_cleanup_tick_after_inactive_after(
        start: Callable[..., Harness], memory_logs: list[Any]) -> None:
    h = start()
    h.handle.ask(Track("a", ("*",)))
    h.handle.ask(Track("b", ("a",)))
    for _ in range(5):  # ticks at +1 .. +5 s: "a" is not yet inactive for > 5 s
        h.activity.touch("b")
        h.advance(1)
        assert h.sent("batcher", "Unsubscribe") == []
    h.activity.touch("b")
    stats = h.advance(1)  # +6 s
    unsubscribed = h.sent("batcher", "Unsubscribe")
    assert [m.module_id for m in unsubscribed] == ["a"]
    assert stats.modules_tracked == 2  # the module stays registered
    assert stats.modules_swept == 1
    assert stats.modules_inactive == 1
    assert stats.cleanup_count("interval") == 6
    assert len(h.sent("cache", "Purge")) == 6
    assert h.activity.is_swept("a")
    swept_logs = [r for r in memory_logs if r["extra"].get("module") == "a"]
    assert swept_logs and "subscriptions removed" in swept_logs[0]["message"]
    assert any(r["message"] == "cleanup done" and r["extra"].get("reason") == "interval"
               for r in memory_logs)
    # A later tick does not unsubscribe it again.
    h.activity.touch("b")
    h.advance(1)
    assert len(h.sent("batcher", "Unsubscribe")) == 1


def test_reactivation_subscribes_again_with_the_remembered_sources(
        start: Callable[..., Harness], memory_logs: list[Any]) -> None:
    h = start()
    h.handle.ask(Track("a", ("x", "y")))
    h.run(6)
    assert len(h.sent("batcher", "Unsubscribe")) == 1
    assert h.activity.touch("a") is True  # the façade's hot path says: reactivate
    h.handle.tell(Reactivate("a"))
    stats = h.sync()
    subscribed = h.sent("batcher", "Subscribe")
    assert [(m.module_id, tuple(m.sources)) for m in subscribed] == [("a", ("x", "y"))]
    assert stats.modules_swept == 0
    assert stats.reactivations_total == 1
    assert any("active again" in r["message"] and r["extra"].get("module") == "a"
               for r in memory_logs)
    # A duplicate notice does nothing.
    h.handle.ask(Reactivate("a"))
    h.sync()
    assert len(h.sent("batcher", "Subscribe")) == 1


def test_touch_message_reactivates_a_swept_module(start: Callable[..., Harness]) -> None:
    h = start()
    h.handle.ask(Track("a", ("*",)))
    assert h.run(6).modules_swept == 1
    h.handle.tell(Touch("a"))
    stats = h.sync()
    assert [m.module_id for m in h.sent("batcher", "Subscribe")] == ["a"]
    assert stats.modules_swept == 0
    assert h.activity.is_swept("a") is False


class Connections:
    """What the coordinator tells the memory manager about module connections."""

    def __init__(self, **live: bool) -> None:
        self.live = dict(live)
        self.asked: list[float] = []
        self.told: list[tuple[str, dict[str, Any]]] = []

    def states(self, stall_s: float) -> dict[str, bool]:
        self.asked.append(stall_s)
        return dict(self.live)

    def notify(self, module_id: str, notice: dict[str, Any]) -> None:
        self.told.append((module_id, notice))

    def hooks(self) -> dict[str, Any]:
        """The keyword arguments that make a harness ask and tell this fake."""
        return {"connection_states": self.states, "notify_swept": self.notify}


def test_a_module_whose_connection_is_live_is_never_swept(
        start: Callable[..., Harness]) -> None:
    conns = Connections(listener=True)
    h = start(**conns.hooks())
    h.handle.ask(Track("listener", ("src",)))
    h.handle.ask(Track("idle", ("src",)))  # in-process: no connection state
    stats = h.run(20)  # four times inactive_after_ms (5 s)
    assert [m.module_id for m in h.sent("batcher", "Unsubscribe")] == ["idle"]
    assert not h.activity.is_swept("listener") and stats.modules_swept == 1
    last = h.activity.last_seen("listener")
    assert last is not None and h.clock.monotonic() - last <= 1.0  # touched every sweep
    assert conns.asked and set(conns.asked) == {5.0}  # stall_s = inactive_after_ms
    assert [m for m, _ in conns.told] == ["idle"]


def test_a_stalled_connection_is_swept_told_and_reactivated_when_it_reads_again(
        start: Callable[..., Harness], memory_logs: list[Any]) -> None:
    conns = Connections(listener=True)
    h = start(**conns.hooks())
    h.handle.ask(Track("listener", ("src",)))
    h.run(10)
    assert h.sent("batcher", "Unsubscribe") == []
    conns.live["listener"] = False  # its output stopped draining
    h.run(4)
    assert h.sent("batcher", "Unsubscribe") == []  # last touched under 5 s ago
    stats = h.run(2)
    assert [m.module_id for m in h.sent("batcher", "Unsubscribe")] == ["listener"]
    assert stats.modules_swept == 1 and stats.sweeps_total == 1
    ((module_id, notice),) = conns.told
    assert module_id == "listener" and "connection" in notice["reason"]
    assert notice["inactive_after_ms"] == 5000.0 and notice["idle_s"] > 5.0
    swept = [r for r in memory_logs if "subscriptions removed" in r["message"]]
    assert len(swept) == 1 and "connection" in swept[0]["extra"]["reason"]
    assert swept[0]["extra"]["module"] == "listener"
    h.run(3)  # still stalled: swept once, told once
    assert len(h.sent("batcher", "Unsubscribe")) == 1 and len(conns.told) == 1
    conns.live["listener"] = True  # it reads again
    stats = h.run(1)
    assert [(m.module_id, tuple(m.sources)) for m in h.sent("batcher", "Subscribe")] == [
        ("listener", ("src",))]
    assert stats.modules_swept == 0 and stats.reactivations_total == 1
    assert any("reads again" in r["extra"].get("why", "") for r in memory_logs)


def test_registering_a_swept_module_again_restores_and_counts_it(
        start: Callable[..., Harness], memory_logs: list[Any]) -> None:
    conns = Connections(listener=False)
    h = start(**conns.hooks())
    h.handle.ask(Track("listener", ("src",)))
    assert h.run(6).modules_swept == 1
    h.handle.ask(Track("listener", ("src",)))  # what the told client does
    stats = h.sync()
    assert stats.modules_swept == 0 and stats.reactivations_total == 1
    assert not h.activity.is_swept("listener")
    assert any("registered again" in r["message"] for r in memory_logs)


def test_failing_connection_states_sweep_as_before(start: Callable[..., Harness],
                                                   memory_logs: list[Any]) -> None:
    def broken(stall_s: float) -> dict[str, bool]:
        raise RuntimeError("coordinator gone")

    h = start(connection_states=broken)
    h.handle.ask(Track("a", ("*",)))
    assert h.run(6).modules_swept == 1
    assert any("connection states unavailable" in r["message"] for r in memory_logs)


def test_forgotten_and_untracked_modules_are_not_swept(start: Callable[..., Harness]) -> None:
    h = start()
    h.handle.ask(Track("a", ("*",)))
    h.handle.ask(Forget("a"))
    h.activity.touch("ghost")  # activity without a registration
    assert h.activity.last_seen("a") is None
    stats = h.run(6)
    assert h.sent("batcher", "Unsubscribe") == []
    assert stats.modules_tracked == 0
    assert h.activity.last_seen("ghost") is None  # dropped by the sweep


def test_invalid_module_id_is_refused_and_the_actor_carries_on(
        start: Callable[..., Harness]) -> None:
    h = start()
    with pytest.raises(InvalidMessageError):
        h.handle.ask(Track("", ("*",)))
    with pytest.raises(InvalidMessageError):
        h.handle.ask(Track("a", ("*", 3)))  # type: ignore[arg-type]
    assert h.handle.ask(Statistics()).modules_tracked == 0


def test_interval_cleanup_tells_and_does_not_wait_for_an_unresponsive_cache(
        start: Callable[..., Harness]) -> None:
    h = start(install_peers=("batcher", "monitor"))  # the cache handle only buffers
    h.clock.advance(1)
    stats = h.handle.ask(Statistics(), timeout=0.4)  # a blocking purge would time this out
    assert stats.cleanup_count("interval") == 1
    assert h.context.handles["cache"].buffered() == 1


# -- memory pressure -----------------------------------------------------------------------


def test_pressure_cleanup_fires_once_with_hysteresis(start: Callable[..., Harness],
                                                     memory_logs: list[Any]) -> None:
    h = start(_settings(cleanup_interval_ms=86_400_000.0, check_interval_ms=100.0))

    def check(mb: float) -> MemoryStatistics:
        h.level[0] = int(mb * MB)
        return h.advance(0.1)

    assert check(50).cleanup_count("pressure") == 0
    stats = check(120)
    assert stats.cleanup_count("pressure") == 1
    assert stats.pressure_armed is False
    assert stats.rss_bytes == 120 * MB
    assert check(130).cleanup_count("pressure") == 1  # still above: not again
    assert check(95).cleanup_count("pressure") == 1   # below the limit, above 90%
    assert check(120).cleanup_count("pressure") == 1  # so not re-armed
    stats = check(85)                                 # below 90%: re-armed
    assert stats.pressure_armed is True
    assert stats.cleanup_count("pressure") == 1
    assert check(101).cleanup_count("pressure") == 2
    assert stats.max_rss_bytes == 100 * MB
    assert sum("memory pressure" in r["message"] for r in memory_logs) == 2


@pytest.mark.parametrize(
    ("strategy", "cache_ops", "trims", "gc_calls"),
    [
        ("conservative", ["Purge"], 0, 0),
        ("balanced", ["Purge", "Shrink"], 1, 1),
        ("aggressive", ["Purge", "Clear"], 1, 1),
    ],
)
def test_strategies_differ_in_what_a_pressure_cleanup_does(
        start: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch, strategy: str,
        cache_ops: list[str], trims: int, gc_calls: int) -> None:
    calls: list[int] = []

    class FakeGc:
        @staticmethod
        def collect() -> int:
            calls.append(1)
            return 3

    monkeypatch.setattr(memory_mod, "gc", FakeGc)
    h = start(_settings(strategy=strategy, cleanup_interval_ms=86_400_000.0,
                        check_interval_ms=100.0))
    h.level[0] = 150 * MB
    stats = h.advance(0.1)
    assert stats.cleanup_count("pressure") == 1
    assert h.names("cache") == cache_ops
    assert h.names("monitor") == ["Trim"] * trims
    assert len(calls) == gc_calls
    if strategy == "balanced":
        assert h.sent("cache", "Shrink")[0].fraction == 0.5


def test_forced_cleanup_report(start: Callable[..., Harness],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory_mod, "gc", type("G", (), {"collect": staticmethod(lambda: 11)}))
    h = start(_settings(strategy="balanced"),
              replies={"cache": {"Purge": 4, "Shrink": 7}})
    h.handle.ask(Track("idle", ("*",)))
    h.run(5)  # ticks at +1..+5 s sweep nothing yet (inactive for > 5 s is needed)
    h.advance(0.5)  # past inactive_after, but before the next tick
    h.level[0] = 42 * MB
    report: CleanupReport = h.handle.ask(ForceCleanup())
    assert report.reason == "forced"
    assert report.strategy == "balanced"
    assert report.expired_purged == 4
    assert report.cache_shrunk == 7
    assert report.modules_swept == 1
    assert report.swept == ("idle",)
    assert report.gc_collected == 11
    assert report.rss_before == report.rss_after == 42 * MB
    assert report.actions[:6] == ("purge", "sweep", "shrink", "trim", "buffers", "gc")
    assert report.actions[6:] in ((), ("malloc_trim",))  # glibc only
    as_dict = report.as_dict()
    assert as_dict["actions"] == list(report.actions)
    assert as_dict["expired_purged"] == 4
    stats = h.sync()
    assert stats.cleanup_count("forced") == 1
    assert stats.as_dict()["cleanups"] == {"interval": 5, "pressure": 0, "forced": 1}
    with pytest.raises(AttributeError):
        report.reason = "x"  # type: ignore[misc]


def test_a_full_cleanup_has_the_connections_give_back_buffers_and_survives_a_failing_hook(
        start: Callable[..., Harness], memory_logs: list[Any]) -> None:
    calls: list[str] = []

    def release() -> None:
        calls.append("release")
        if len(calls) == 2:
            raise OSError("server gone")

    h = start(_settings(strategy="balanced"), replies={"cache": {"Purge": 0, "Shrink": 0}},
              release_buffers=release)
    h.run(3)  # interval cleanups: purge and sweep only
    assert calls == []
    first: CleanupReport = h.handle.ask(ForceCleanup())
    assert calls == ["release"] and "buffers" in first.actions
    second: CleanupReport = h.handle.ask(ForceCleanup())  # the hook raises: logged, goes on
    assert calls == ["release", "release"]
    assert "buffers" not in second.actions and "gc" in second.actions
    assert any("buffers not released" in r["message"] for r in memory_logs)


def test_forced_cleanup_counts_zero_when_the_cache_does_not_answer(
        start: Callable[..., Harness]) -> None:
    h = start(install_peers=("batcher", "monitor"))
    report: CleanupReport = h.handle.ask(ForceCleanup(), timeout=3)
    assert report.expired_purged == 0
    assert report.gc_collected is None  # conservative: no gc
    assert report.actions == ("purge", "sweep")


def test_failing_rss_reader_skips_the_check(start: Callable[..., Harness],
                                            memory_logs: list[Any]) -> None:
    def broken() -> int:
        raise OSError("no /proc")

    h = start(_settings(check_interval_ms=100.0), rss_reader=broken)
    h.advance(0.1)
    stats = h.advance(0.1)
    assert h.ref.is_alive()
    assert stats.rss_bytes == 0
    assert stats.cleanup_count("pressure") == 0
    assert sum("cannot read resident memory" in r["message"] for r in memory_logs) == 1


def test_default_rss_reader_uses_psutil(clock: MockClock) -> None:
    rig = ActorRig(clock, "memory", MemoryManagerActor, _settings())
    ref = rig.start()
    try:
        stats = rig.ask(Statistics())
        assert stats.rss_bytes > 1 * MB
        assert isinstance(rig.context.shared.activity, ActivityTable)  # a default context's
    finally:
        ref.stop()


# -- reconfigure, handover, crash ----------------------------------------------------------


def test_reconfigure_strategy_live(start: Callable[..., Harness]) -> None:
    h = start(_settings(strategy="conservative", cleanup_interval_ms=86_400_000.0))
    h.handle.ask(ForceCleanup())
    assert h.names("cache") == ["Purge"]
    h.handle.ask(Reconfigure(_settings(strategy="aggressive",
                                       cleanup_interval_ms=86_400_000.0)))
    h.handle.ask(ForceCleanup())
    h.sync()
    assert h.names("cache") == ["Purge", "Purge", "Clear"]
    assert h.names("monitor") == ["Trim"]
    assert h.handle.ask(Statistics()).strategy == "aggressive"


def test_reconfigure_rearms_the_cleanup_timer(start: Callable[..., Harness]) -> None:
    h = start(_settings(cleanup_interval_ms=10_000.0))
    h.handle.ask(Reconfigure(_settings(cleanup_interval_ms=2000.0).model_dump()))
    for _ in range(5):
        h.advance(2)
    # Ticks at +2, +4, +6, +8, +10 s; the replaced 10 s timer did not add one.
    assert len(h.sent("cache", "Purge")) == 5
    assert h.sync().cleanup_count("interval") == 5


def test_handover_and_restore(start: Callable[..., Harness]) -> None:
    h = start(_settings(check_interval_ms=100.0, cleanup_interval_ms=86_400_000.0))
    h.handle.ask(Track("a", ("x",)))
    h.handle.ask(Track("b", ("*",)))
    h.level[0] = 200 * MB
    h.advance(0.1)  # pressure cleanup: disarmed
    h.clock.advance(6)
    h.activity.touch("b")
    h.handle.ask(ForceCleanup())  # sweeps "a"
    before = h.sync()
    pending = h.handle.ask(Handover())
    assert isinstance(pending, MemoryHandover)
    assert pending.modules == (("a", ("x",)), ("b", ("*",)))
    assert pending.swept == ("a",)
    assert pending.pressure_armed is False
    assert not h.ref.is_alive()

    for source in (pending, pending.as_dict()):
        h.handle.suspend()
        successor = MemoryManagerActor.start(
            _settings(check_interval_ms=100.0, cleanup_interval_ms=86_400_000.0), h.context,
            source)
        h.handle.install(successor)
        after = h.handle.ask(Statistics())
        assert after.modules_tracked == before.modules_tracked == 2
        assert after.modules_swept == before.modules_swept == 1
        assert after.pressure_armed is False
        assert after.cleanups == before.cleanups
        assert h.handle.ask(Handover()) is not None  # stop it for the next round

    h.handle.suspend()
    successor = MemoryManagerActor.start(
        _settings(check_interval_ms=100.0, cleanup_interval_ms=86_400_000.0), h.context,
        pending)
    h.handle.install(successor)
    h.level[0] = 250 * MB
    assert h.advance(0.1).cleanup_count("pressure") == 1  # still disarmed: no new cleanup
    h.handle.ask(Reactivate("a"))
    h.sync()
    assert [(m.module_id, tuple(m.sources)) for m in h.sent("batcher", "Subscribe")] == [
        ("a", ("x",))
    ]


def test_restore_ignores_garbage(start: Callable[..., Harness]) -> None:
    h = start()
    for junk in ({"modules": 5}, "junk"):
        ref = MemoryManagerActor.start(_settings(), h.context, junk)
        stats: MemoryStatistics = ref.ask(Statistics(), block=True)
        assert stats.modules_tracked == 0
        assert stats.pressure_armed is True
        ref.stop()


@pytest.mark.parametrize(("kind", "fatal"), [("exception", False), ("base_exception", True)])
def test_crash_is_reported_with_handover(start: Callable[..., Harness], kind: str,
                                         fatal: bool) -> None:
    h = start()
    h.handle.ask(Track("a", ("*",)))
    with pytest.raises(ActorCrashedError):
        h.handle.ask(Crash(kind))
    assert len(h.reports) == 1
    report = h.reports[0]
    assert report.name == "memory"
    assert report.fatal is fatal
    assert isinstance(report.handover, MemoryHandover)
    assert report.handover.modules == (("a", ("*",)),)
    assert h.peers["batcher"].is_alive()  # the others carry on
    # A timer firing after the crash is harmless.
    h.clock.advance(2)
    assert h.peers["cache"].ask(Sync()) is None


def test_stop_cancels_timers(start: Callable[..., Harness], clock: MockClock) -> None:
    h = start(_settings(check_interval_ms=100.0))
    h.sync()
    assert clock.pending_timers() == 2
    h.ref.stop()
    assert clock.pending_timers() == 0


def test_statistics_snapshot_is_frozen(start: Callable[..., Harness]) -> None:
    stats = start().sync()
    with pytest.raises(AttributeError):
        stats.rss_bytes = 1  # type: ignore[misc]
    assert stats.as_dict()["strategy"] == "conservative"
