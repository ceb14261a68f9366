"""Tests of the monitor: insight rules, hysteresis, logging, periodic evaluation, handover."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from actor_harness import ActorRig, actor_logs

from modcoord.actors._base import (
    ActorHandle,
    Crash,
    Handover,
    Reconfigure,
    Statistics,
)
from modcoord.actors.clock import MockClock
from modcoord.actors.errors import ActorCrashedError, InvalidMessageError
from modcoord.actors.monitor import (
    Evaluate,
    ForgetModule,
    Insights,
    Latencies,
    ModuleMetrics,
    ModuleReport,
    MonitorActor,
    MonitorHandover,
    MonitorStatistics,
    Restarted,
    Trim,
    build_snapshot,
)
from modcoord.actors.rules import (
    CacheHitRateRule,
    CoordinationLatencyRule,
    LatencyWindow,
    rule_snapshot,
)
from modcoord.actors.settings import ModeSettings, MonitorSettings
from modcoord.actors.shared import Shared
from modcoord.actors.shared.metrics import MetricsRegistry

MB = 1024 * 1024
INSIGHT_KEYS = {"id", "severity", "observed", "threshold", "window_s", "message",
                "recommendation"}
COORDINATION_MESSAGE = (
    "High coordination latency detected - consider optimizing module communication"
)
CACHE_MESSAGE = "Low cache hit rate - consider adjusting cache TTL or strategy"



@dataclass(frozen=True)
class FakeBatcherStats:
    """Shaped like the batcher's statistics: a frozen dataclass with as_dict()."""

    queue_depth: int
    rejected: int
    max_queue: int = 1000

    def as_dict(self) -> dict[str, Any]:
        return {"queue_depth": self.queue_depth, "rejected": self.rejected,
                "max_queue": self.max_queue}


def healthy(**sections: Any) -> dict[str, Any]:
    """A snapshot where nothing is wrong; ``sections`` replace whole sections."""
    snapshot: dict[str, Any] = {
        "cache": {"hits": 90, "misses": 10, "hit_rate": 0.9, "size": 5, "max_size": 1000},
        "batcher": {"queue_depth": 0, "rejected": 0, "max_queue": 1000},
        "memory": {"rss_bytes": 20 * MB, "max_rss_bytes": 100 * MB},
        "debouncer": {"received": 0},
        "restarts": {},
    }
    snapshot.update(sections)
    return snapshot


def feed(metrics: MetricsRegistry, name: str, ms: float, n: int = 25) -> None:
    for _ in range(n):
        metrics.record(name, ms / 1000.0)


class Harness(ActorRig[MockClock]):
    """The monitor, started, on its own :attr:`metrics` (a 60 s window), beside the fake
    ``peers`` (no other actor has a handle)."""

    def __init__(self, clock: MockClock, settings: MonitorSettings,
                 replies: dict[str, dict[str, Any]] | None, peers: tuple[str, ...]) -> None:
        self.metrics = MetricsRegistry(clock, 60.0)
        super().__init__(clock, "monitor", MonitorActor, settings, peers=peers,
                         replies=replies, metrics=self.metrics)
        self.start()

    def evaluate(self, snapshot: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.handle.ask(Evaluate(snapshot))
        return result

    def stats(self) -> MonitorStatistics:
        stats: MonitorStatistics = self.handle.ask(Statistics())
        return stats

    def healthy_metrics(self) -> None:
        feed(self.metrics, "coordination", 10)
        feed(self.metrics, "debounce_lateness", 1)


def _settings(**over: Any) -> MonitorSettings:
    base: dict[str, Any] = dict(evaluate_interval_ms=3_600_000.0)
    base.update(over)
    return MonitorSettings(**base)


@pytest.fixture
def start(clock: MockClock) -> Callable[..., Harness]:
    def _start(settings: MonitorSettings | None = None,
               replies: dict[str, dict[str, Any]] | None = None,
               peers: tuple[str, ...] = ()) -> Harness:
        return Harness(clock, settings or _settings(), replies, peers)

    return _start


@pytest.fixture
def records() -> Iterator[list[Any]]:
    yield from actor_logs("monitor")


def fired_logs(records: list[Any], insight: str) -> list[Any]:
    return [r for r in records
            if r["extra"].get("insight") == insight and r["extra"].get("event") == "fired"]


def ids(result: dict[str, Any]) -> list[str]:
    return [i["id"] for i in result["insights"]]


def only(result: dict[str, Any], insight: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [i for i in result["insights"] if i["id"] == insight]
    assert len(found) == 1, result
    return found[0]


# -- all clear and not enough data -------------------------------------------------------


def test_all_clear_when_nothing_is_wrong(start: Callable[..., Harness]) -> None:
    h = start()
    h.healthy_metrics()
    result = h.evaluate(healthy())
    assert result["status"] == "ok"
    assert result["recommendations"] == []
    assert len(result["insights"]) == 1
    insight = result["insights"][0]
    assert set(insight) == INSIGHT_KEYS
    assert insight["id"] == "all_clear"
    assert insight["severity"] == "info"
    assert insight["message"] == "No issues detected"
    assert h.stats().last_status == "ok"


def test_not_enough_data_says_so_instead_of_judging(start: Callable[..., Harness]) -> None:
    h = start()
    feed(h.metrics, "coordination", 500, n=3)  # would breach, but too few samples
    result = h.evaluate(healthy(cache={"hits": 0, "misses": 5}))
    assert result["status"] == "not_enough_data"
    assert ids(result) == ["not_enough_data"]
    insight = result["insights"][0]
    assert set(insight) == INSIGHT_KEYS
    assert insight["severity"] == "info"
    assert insight["message"].startswith("Not enough data yet: ")
    assert "coordination latency (3 of 20 samples)" in insight["message"]
    assert "cache lookups (5 of 20 samples)" in insight["message"]
    assert "debounce timer lateness (0 of 20 samples)" in insight["message"]
    assert insight["observed"] == 0
    assert insight["threshold"] == 20
    assert result["recommendations"] == []
    assert h.stats().active == ()


def test_missing_sections_are_reported_as_unavailable(start: Callable[..., Harness]) -> None:
    h = start()
    h.healthy_metrics()
    result = h.evaluate({})
    assert result["status"] == "not_enough_data"
    message = only(result, "not_enough_data")["message"]
    for what in ("cache statistics unavailable", "batcher statistics unavailable",
                 "memory statistics unavailable", "restart counts unavailable"):
        assert what in message
    assert "coordination latency" not in message  # that one had its samples


def test_issues_take_precedence_over_missing_data(start: Callable[..., Harness]) -> None:
    h = start()
    result = h.evaluate({"memory": {"rss_bytes": 99 * MB, "max_rss_bytes": 100 * MB}})
    assert result["status"] == "issues"
    assert ids(result) == ["memory_near_limit"]


def test_disabled_cache_is_not_judged(start: Callable[..., Harness]) -> None:
    h = start()
    h.healthy_metrics()
    result = h.evaluate(healthy(cache={"enabled": False, "hits": 0, "misses": 500}))
    assert result["status"] == "ok"


def test_snapshot_must_be_a_mapping(start: Callable[..., Harness]) -> None:
    h = start()
    with pytest.raises(InvalidMessageError):
        h.evaluate([1, 2])  # type: ignore[arg-type]
    assert h.ref.is_alive()


# -- the rules, above and below their thresholds ------------------------------------------


@pytest.mark.parametrize(("ms", "fires"), [(150.0, True), (90.0, False)])
def test_high_coordination_latency(start: Callable[..., Harness], ms: float,
                                   fires: bool) -> None:
    h = start()
    feed(h.metrics, "coordination", ms)
    feed(h.metrics, "debounce_lateness", 1)
    result = h.evaluate(healthy())
    if not fires:
        assert result["status"] == "ok"
        return
    assert result["status"] == "issues"
    insight = only(result, "high_coordination_latency")
    assert set(insight) == INSIGHT_KEYS
    assert insight["message"] == COORDINATION_MESSAGE
    assert insight["severity"] == "warning"
    assert insight["observed"] == pytest.approx(150.0)
    assert insight["threshold"] == 100.0
    assert insight["window_s"] == 60.0
    assert "cache.ttl_ms" in insight["recommendation"]
    assert "debounce.delay_ms" in insight["recommendation"]
    assert result["recommendations"] == [insight["recommendation"]]


@pytest.mark.parametrize(("hits", "misses", "fires"), [(10, 90, True), (60, 40, False)])
def test_low_cache_hit_rate(start: Callable[..., Harness], hits: int, misses: int,
                            fires: bool) -> None:
    h = start()
    h.healthy_metrics()
    result = h.evaluate(healthy(cache={"hits": hits, "misses": misses}))
    if not fires:
        assert result["status"] == "ok"
        return
    insight = only(result, "low_cache_hit_rate")
    assert set(insight) == INSIGHT_KEYS
    assert insight["message"] == CACHE_MESSAGE
    assert insight["observed"] == pytest.approx(0.1)
    assert insight["threshold"] == 0.5
    assert "cache.ttl_ms" in insight["recommendation"]


def test_cache_hit_rate_is_judged_over_the_window(start: Callable[..., Harness],
                                                  clock: MockClock) -> None:
    h = start()
    h.healthy_metrics()
    assert "low_cache_hit_rate" in ids(h.evaluate(healthy(cache={"hits": 10, "misses": 90})))
    clock.advance(61)
    h.healthy_metrics()
    # Since start: 100 / 200 = 0.5 (not recovered past 0.55); within the last window:
    # 90 / 100 = 0.9 (recovered).
    result = h.evaluate(healthy(cache={"hits": 100, "misses": 100}))
    assert result["status"] == "ok"


@pytest.mark.parametrize(("depth", "fires"), [(850, True), (800, True), (500, False)])
def test_queue_near_full(start: Callable[..., Harness], depth: int, fires: bool) -> None:
    h = start()
    h.healthy_metrics()
    result = h.evaluate(healthy(batcher={"queue_depth": depth, "rejected": 0,
                                         "max_queue": 1000}))
    if not fires:
        assert result["status"] == "ok"
        return
    insight = only(result, "queue_near_full")
    assert insight["observed"] == pytest.approx(depth / 1000)
    assert insight["threshold"] == 0.8
    assert insight["severity"] == "warning"
    assert "batch.max_queue" in insight["recommendation"]
    assert "batch.window_ms" in insight["recommendation"]


def test_queue_rejections_fire_until_none_are_new(start: Callable[..., Harness]) -> None:
    h = start()
    h.healthy_metrics()
    assert h.evaluate(healthy())["status"] == "ok"
    result = h.evaluate(healthy(batcher={"queue_depth": 0, "rejected": 3, "max_queue": 1000}))
    assert only(result, "queue_near_full")["severity"] == "critical"
    result = h.evaluate(healthy(batcher={"queue_depth": 0, "rejected": 3, "max_queue": 1000}))
    assert result["status"] == "ok"


@pytest.mark.parametrize(("restarts", "fires"), [(3, True), (2, False)])
def test_restart_churn(start: Callable[..., Harness], restarts: int, fires: bool) -> None:
    h = start()
    h.healthy_metrics()
    result = h.evaluate(healthy(restarts={"batcher": restarts, "cache": 1}))
    if not fires:
        assert result["status"] == "ok"
        return
    insight = only(result, "restart_churn")
    assert insight["observed"] == 3
    assert insight["threshold"] == 3
    assert insight["severity"] == "critical"
    assert "batcher (3)" in insight["recommendation"]
    assert "cache (1)" not in insight["recommendation"]
    assert "monitor.restart_churn_max" in insight["recommendation"]


@pytest.mark.parametrize(("rss_mb", "severity"), [(95, "warning"), (100, "critical"),
                                                  (89, None)])
def test_memory_near_limit(start: Callable[..., Harness], rss_mb: int,
                           severity: str | None) -> None:
    h = start()
    h.healthy_metrics()
    result = h.evaluate(healthy(memory={"rss_bytes": rss_mb * MB, "max_rss_bytes": 100 * MB}))
    if severity is None:
        assert result["status"] == "ok"
        return
    insight = only(result, "memory_near_limit")
    assert insight["severity"] == severity
    assert insight["observed"] == pytest.approx(rss_mb)
    assert insight["threshold"] == pytest.approx(90.0)
    assert "memory.max_rss_mb" in insight["recommendation"]
    assert "memory.strategy to balanced or aggressive" in insight["recommendation"]
    aggressive = only(h.evaluate(healthy(memory={
        "rss_bytes": rss_mb * MB, "max_rss_bytes": 100 * MB, "strategy": "aggressive"})),
        "memory_near_limit")
    assert "already aggressive" in aggressive["recommendation"]
    assert "memory.max_rss_mb" in aggressive["recommendation"]


@pytest.mark.parametrize(("ms", "n", "outcome"),
                         [(30.0, 25, "issues"), (5.0, 25, "ok"), (30.0, 3, "not_enough_data")])
def test_late_debounce_timers(start: Callable[..., Harness], ms: float, n: int,
                              outcome: str) -> None:
    h = start()
    feed(h.metrics, "coordination", 10)
    feed(h.metrics, "debounce_lateness", ms, n=n)
    result = h.evaluate(healthy())
    assert result["status"] == outcome
    if outcome == "issues":
        insight = only(result, "late_debounce_timers")
        assert insight["observed"] == pytest.approx(30.0)
        assert insight["threshold"] == 20.0
        assert "debounce.delay_ms" in insight["recommendation"]
    if outcome == "not_enough_data":
        assert "debounce timer lateness (3 of 20 samples)" in only(
            result, "not_enough_data")["message"]


def test_several_insights_sorted_by_severity_with_unique_recommendations(
        start: Callable[..., Harness]) -> None:
    h = start()
    feed(h.metrics, "coordination", 300)
    feed(h.metrics, "debounce_lateness", 1)
    result = h.evaluate(healthy(restarts={"memory": 5}, cache={"hits": 1, "misses": 99}))
    assert result["status"] == "issues"
    assert ids(result)[0] == "restart_churn"  # critical first
    assert set(ids(result)) == {"restart_churn", "high_coordination_latency",
                                "low_cache_hit_rate"}
    for insight in result["insights"]:
        assert set(insight) == INSIGHT_KEYS
    assert len(result["recommendations"]) == 3 == len(set(result["recommendations"]))


# -- no flapping ---------------------------------------------------------------------------


def test_no_flapping_and_quiet_logging(start: Callable[..., Harness], clock: MockClock,
                                       records: list[Any]) -> None:
    h = start()
    h.healthy_metrics()

    def at(mb: float) -> dict[str, Any]:
        return h.evaluate(healthy(memory={"rss_bytes": int(mb * MB),
                                          "max_rss_bytes": 100 * MB}))

    def logged() -> int:
        return len(fired_logs(records, "memory_near_limit"))

    assert "memory_near_limit" in ids(at(91))        # fires (threshold 90 MB)
    assert logged() == 1
    assert "memory_near_limit" in ids(at(89))        # below, but within the 10% margin
    assert "memory_near_limit" in ids(at(91))        # no toggle, no new log
    assert "memory_near_limit" in ids(at(82))
    assert logged() == 1
    assert h.stats().insights_fired == (("memory_near_limit", 1),)
    assert at(80)["status"] == "ok"                  # recovered past the margin (< 81)
    assert h.stats().active == ()
    assert "memory_near_limit" in ids(at(91))        # fires again ...
    assert logged() == 1                             # ... but within the quiet period
    assert dict(h.stats().insights_fired)["memory_near_limit"] == 2
    at(113)                                          # 24% worse than logged 91: quiet
    assert logged() == 1
    at(114)                                          # >= 25% worse: logged again
    assert logged() == 2
    at(120)                                          # vs 114: not 25% worse
    assert logged() == 2
    clock.advance(301)                               # the quiet period has passed
    at(120)
    assert logged() == 3
    record = fired_logs(records, "memory_near_limit")[-1]
    assert record["extra"]["severity"] == "critical"
    assert record["level"].name == "ERROR"
    assert record["message"] == "insight fired"
    assert "Memory usage near its limit" in record["extra"]["summary"]
    cleared = [r for r in records if r["extra"].get("event") == "cleared"]
    assert len(cleared) == 1


def test_lower_is_worse_rule_hysteresis(start: Callable[..., Harness]) -> None:
    h = start(_settings(window_s=1.0))
    h.healthy_metrics()
    total = [0, 0]

    def rate(hits: int, misses: int) -> dict[str, Any]:
        h.clock.advance(2)  # each evaluation's window covers only its own lookups
        h.healthy_metrics()
        total[0] += hits
        total[1] += misses
        return h.evaluate(healthy(cache={"hits": total[0], "misses": total[1]}))

    assert "low_cache_hit_rate" in ids(rate(40, 60))    # 0.40 < 0.5: fires
    assert "low_cache_hit_rate" in ids(rate(52, 48))    # 0.52: within the margin
    assert "low_cache_hit_rate" in ids(rate(45, 55))
    assert rate(60, 40)["status"] == "ok"               # 0.60 > 0.55: clears
    assert dict(h.stats().insights_fired)["low_cache_hit_rate"] == 1


def test_missing_data_neither_clears_nor_refires(start: Callable[..., Harness],
                                                 records: list[Any]) -> None:
    h = start()
    h.healthy_metrics()
    over = healthy(memory={"rss_bytes": 95 * MB, "max_rss_bytes": 100 * MB})
    h.evaluate(over)
    gap = healthy()
    del gap["memory"]
    assert h.evaluate(gap)["status"] == "not_enough_data"
    assert h.stats().active == ("memory_near_limit",)
    h.evaluate(over)
    assert dict(h.stats().insights_fired)["memory_near_limit"] == 1


# -- periodic evaluation -------------------------------------------------------------------


def counting_cache(hits: int, misses: int) -> Callable[[Any], dict[str, Any]]:
    """A cache whose cumulative counters grow by ``hits``/``misses`` per Statistics."""
    total = [0, 0]

    def reply(message: Any) -> dict[str, Any]:
        total[0] += hits
        total[1] += misses
        return {"hits": total[0], "misses": total[1], "size": 3, "max_size": 1000}

    return reply


def _peer_replies() -> dict[str, dict[str, Any]]:
    return {
        "cache": {"Statistics": counting_cache(5, 95)},
        "batcher": {"Statistics": FakeBatcherStats(queue_depth=10, rejected=0)},
        "memory": {"Statistics": {"rss_bytes": 95 * MB, "max_rss_bytes": 100 * MB}},
        "debouncer": {"Statistics": {"received": 7}},
    }


def test_periodic_tick_gathers_peer_statistics_and_logs_new_insights(
        start: Callable[..., Harness], clock: MockClock, records: list[Any]) -> None:
    h = start(_settings(evaluate_interval_ms=1000.0), replies=_peer_replies(),
              peers=("cache", "batcher", "memory", "debouncer"))
    h.healthy_metrics()
    clock.advance(0.5)
    assert h.stats().evaluations == 0
    clock.advance(0.5)
    stats = h.stats()
    assert stats.evaluations == 1
    for peer in ("cache", "batcher", "memory", "debouncer"):
        assert [type(m).__name__ for m in h.received[peer]] == ["Statistics"]
    assert stats.active == ("low_cache_hit_rate", "memory_near_limit")
    assert len(fired_logs(records, "low_cache_hit_rate")) == 1
    assert fired_logs(records, "memory_near_limit")[0]["extra"]["severity"] == "warning"
    clock.advance(1)  # the timer was re-armed; the same insights are not logged again
    stats = h.stats()
    assert stats.evaluations == 2
    assert len(fired_logs(records, "low_cache_hit_rate")) == 1
    # On request, the same gathering:
    result = h.handle.ask(Insights())
    assert set(ids(result)) == {"low_cache_hit_rate", "memory_near_limit"}


def test_gather_skips_peers_that_fail(start: Callable[..., Harness]) -> None:
    def refuse(message: Any) -> Any:
        raise InvalidMessageError("no statistics today")

    replies = _peer_replies()
    replies["memory"] = {"Statistics": refuse}
    h = start(replies=replies, peers=("cache", "batcher", "memory"))
    closed = ActorHandle("debouncer")
    closed.close()
    h.context.handles["debouncer"] = closed  # type: ignore[index]
    h.healthy_metrics()
    result = h.handle.ask(Insights())
    assert ids(result) == ["low_cache_hit_rate"]  # memory section missing: not judged
    assert h.peers["memory"].is_alive()


def test_build_snapshot_is_tolerant() -> None:
    @dataclass(frozen=True)
    class Plain:
        rss_bytes: int
        max_rss_bytes: int

    snapshot = build_snapshot(
        {"batcher": {"queue_depth": 3, "rejected": 0}, "memory": Plain(1, 2),
         "cache": FakeBatcherStats(1, 2), "debouncer": object()},
        {"cache": 2}, max_queue=500,
    )
    assert snapshot["batcher"] == {"queue_depth": 3, "rejected": 0, "max_queue": 500}
    assert snapshot["memory"] == {"rss_bytes": 1, "max_rss_bytes": 2}
    assert snapshot["cache"]["queue_depth"] == 1
    assert "debouncer" not in snapshot
    assert snapshot["restarts"] == {"cache": 2}
    kept = build_snapshot({"batcher": {"max_queue": 9}}, {}, max_queue=500)
    assert kept["batcher"]["max_queue"] == 9


def test_restarted_messages_count_within_the_window(start: Callable[..., Harness],
                                                     clock: MockClock) -> None:
    h = start(replies=_peer_replies() | {"cache": {"Statistics": counting_cache(90, 10)},
                                         "memory": {"Statistics": {
                                             "rss_bytes": MB, "max_rss_bytes": 100 * MB}}},
              peers=("cache", "batcher", "memory", "debouncer"))
    h.healthy_metrics()
    for _ in range(3):
        h.handle.tell(Restarted("batcher"))
    result = h.handle.ask(Insights())
    assert ids(result) == ["restart_churn"]
    assert only(result, "restart_churn")["observed"] == 3
    clock.advance(61)
    h.healthy_metrics()
    assert h.handle.ask(Insights())["status"] == "ok"


# -- latencies, module metrics, trim -------------------------------------------------------


def test_latencies_module_metrics_and_trim(start: Callable[..., Harness]) -> None:
    h = start()
    feed(h.metrics, "coordination", 2.5)
    h.handle.tell(ModuleMetrics("editor", {"coordination_latency": 50}))
    h.handle.tell(ModuleMetrics("viewer", {"frames": 3}))
    h.handle.tell(ForgetModule("viewer"))
    latencies = h.handle.ask(Latencies())
    coordination = latencies["coordination"]
    assert set(coordination) == {"recent", "total"}
    assert set(coordination["recent"]) == {"count", "p50", "p95", "p99", "max", "mean"}
    assert coordination["recent"]["count"] == 25
    assert coordination["recent"]["p99"] == pytest.approx(2.5)
    assert coordination["total"]["count"] == 25
    assert h.handle.ask(ModuleReport()) == {"editor": {"coordination_latency": 50}}
    assert h.stats().modules_reporting == 1

    h.handle.ask(Trim())
    latencies = h.handle.ask(Latencies())
    assert latencies["coordination"]["recent"]["count"] == 0
    assert latencies["coordination"]["total"]["count"] == 25
    assert h.handle.ask(ModuleReport()) == {}
    assert h.stats().trims == 1


def test_module_metrics_must_be_a_mapping(start: Callable[..., Harness]) -> None:
    h = start()
    with pytest.raises(InvalidMessageError):
        h.handle.ask(ModuleMetrics("editor", [1]))  # type: ignore[arg-type]
    assert h.handle.ask(ModuleReport()) == {}


def test_a_default_context_sizes_its_registry_by_the_monitor_window(clock: MockClock) -> None:
    settings = ModeSettings(monitor=_settings(window_s=30.0))
    rig = ActorRig(clock, "monitor", MonitorActor, settings.monitor,
                   shared=Shared.create(clock, settings))
    ref = rig.start()
    try:
        assert isinstance(rig.context.shared.metrics, MetricsRegistry)
        assert rig.context.shared.metrics.window_s == 30.0
        assert rig.ask(Insights())["status"] == "not_enough_data"
    finally:
        ref.stop()


# -- reconfigure, handover, crash ----------------------------------------------------------


def test_reconfigure_thresholds_and_interval_live(start: Callable[..., Harness],
                                                  clock: MockClock) -> None:
    h = start()
    feed(h.metrics, "coordination", 150)
    feed(h.metrics, "debounce_lateness", 1)
    assert "high_coordination_latency" in ids(h.evaluate(healthy()))
    h.handle.ask(Reconfigure(_settings(coordination_latency_ms=500.0,
                                       evaluate_interval_ms=1000.0)))
    assert h.evaluate(healthy())["status"] == "ok"  # 150 < 450: recovered
    before = h.stats().evaluations
    clock.advance(1)
    assert h.stats().evaluations == before + 1  # the new interval's timer


def test_handover_keeps_rule_state(start: Callable[..., Harness],
                                   records: list[Any]) -> None:
    h = start()
    h.healthy_metrics()
    over = healthy(memory={"rss_bytes": 95 * MB, "max_rss_bytes": 100 * MB})
    h.evaluate(over)
    h.handle.ask(ModuleMetrics("editor", {"x": 1}))
    pending = h.handle.ask(Handover())
    assert isinstance(pending, MonitorHandover)
    assert pending.active == ("memory_near_limit",)
    assert [r for r, _, _ in pending.last_logged] == ["memory_near_limit"]

    h.handle.suspend()
    successor = MonitorActor.start(_settings(), h.context, pending)
    h.handle.install(successor)
    result = h.evaluate(over)
    assert ids(result) == ["memory_near_limit"]
    assert len(fired_logs(records, "memory_near_limit")) == 1  # not re-logged
    stats = h.stats()
    assert stats.insights_fired == (("memory_near_limit", 1),)  # not newly fired
    assert stats.evaluations == 2
    assert h.handle.ask(ModuleReport()) == {"editor": {"x": 1}}


@pytest.mark.parametrize(("kind", "fatal"), [("exception", False), ("base_exception", True)])
def test_crash_is_reported_with_handover(start: Callable[..., Harness], kind: str,
                                         fatal: bool) -> None:
    h = start(peers=("cache",))
    h.evaluate(healthy(restarts={"cache": 4}))
    with pytest.raises(ActorCrashedError):
        h.handle.ask(Crash(kind))
    assert len(h.reports) == 1
    report = h.reports[0]
    assert report.name == "monitor"
    assert report.fatal is fatal
    assert isinstance(report.handover, MonitorHandover)
    assert report.handover.active == ("restart_churn",)
    assert h.peers["cache"].is_alive()


def test_stop_cancels_the_timer(start: Callable[..., Harness], clock: MockClock) -> None:
    h = start()
    h.stats()
    assert clock.pending_timers() == 1
    h.ref.stop()
    assert clock.pending_timers() == 0


# -- the rules, as pure functions ------------------------------------------------------------


def test_cache_rule_judges_the_typed_view_alone() -> None:
    settings = _settings(min_samples=10, cache_hit_rate_min=0.5)
    rule = CacheHitRateRule()
    low = rule.read(rule_snapshot({"cache": {"enabled": True}}, {}, 60.0, (2, 18)), settings)
    assert low is not None and low.breached and low.observed == 0.1 and low.samples == 20
    high = rule.read(rule_snapshot({"cache": {}}, {}, 60.0, (18, 2)), settings)
    assert high is not None and not high.breached and high.recovered
    off = rule_snapshot({"cache": {"enabled": False}}, {}, 60.0, (0, 50))
    assert rule.read(off, settings) is None  # a disabled cache is not judged
    missing = rule.read(rule_snapshot({}, {}, 60.0), settings)
    assert missing is not None and missing.lacking == "cache statistics unavailable"


def test_latency_rule_reads_only_the_latency_windows(clock: MockClock) -> None:
    metrics = MetricsRegistry(clock, 60.0)
    metrics.record_many("coordination", [0.3] * 25)  # 300 ms, p95 well above 100 ms
    window = LatencyWindow(metrics.histogram("coordination").recent(), 60.0)
    settings = _settings(min_samples=20, coordination_latency_ms=100.0)
    reading = CoordinationLatencyRule().read(
        rule_snapshot({}, {"coordination": window}, 60.0), settings)
    assert reading is not None and reading.breached and reading.samples == 25
    assert reading.observed is not None and reading.observed > 100.0
    few = CoordinationLatencyRule().read(rule_snapshot({}, {}, 42.0), settings)
    assert few is not None and few.lacking == "coordination latency (0 of 20 samples)"
    assert few.window_s == 42.0


def test_rule_snapshot_drops_odd_values() -> None:
    snap = rule_snapshot({"batcher": {"queue_depth": True, "max_queue": 10},
                          "memory": "nonsense",
                          "restarts": {"cache": 2, "batcher": "x", "memory": False}},
                         {}, 60.0, new_rejections=3)
    assert snap.queue is not None and snap.queue.depth is None
    assert snap.queue.max_queue == 10.0 and snap.queue.new_rejections == 3
    assert snap.memory is None and snap.cache is None
    assert snap.restarts == {"cache": 2}
