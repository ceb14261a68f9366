"""The cluster insight rules (:mod:`modcoord.actors.rules_cluster`) as pure functions of
a typed snapshot, and through the monitor actor reading a fake cluster probe on the fake
clock (lag growth over the window, refusals since the last evaluation)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from actor_harness import ActorRig

from modcoord.actors.clock import MockClock
from modcoord.actors.monitor import Evaluate, MonitorActor
from modcoord.actors.rules import RuleSnapshot
from modcoord.actors.rules_cluster import (
    LAG_GROWTH_MIN,
    AgentBufferRule,
    NatsDisconnectedRule,
    PartitionLagGrowingRule,
    PartitionsUnownedRule,
)
from modcoord.actors.settings import MonitorSettings
from modcoord.actors.shared.cluster import ClusterProbe, ClusterSnapshot, ClusterView
from modcoord.actors.shared.metrics import MetricsRegistry

SETTINGS = MonitorSettings(evaluate_interval_ms=3_600_000.0)


def snap(**over: Any) -> ClusterSnapshot:
    base = ClusterSnapshot(disconnected=(), instances=2, partitions=8, owned=4, unowned=(),
                           buffered=0, max_buffered=1000, refused=0,
                           lag=((0, 0), (2, 0), (4, 0), (6, 0)))
    return dataclasses.replace(base, **over)


def rule_input(view: ClusterView | None) -> RuleSnapshot:
    return RuleSnapshot(latencies={}, latency_window_s=60.0, cluster=view)


RULES = (NatsDisconnectedRule(), AgentBufferRule(), PartitionsUnownedRule(),
         PartitionLagGrowingRule())


def test_without_a_cluster_no_cluster_rule_applies() -> None:
    for rule in RULES:
        assert rule.read(rule_input(None), SETTINGS) is None


def test_a_healthy_cluster_breaches_nothing() -> None:
    view = ClusterView(snap(), lag_growth=((0, 3),), window_s=60.0)
    for rule in RULES:
        reading = rule.read(rule_input(view), SETTINGS)
        assert reading is not None and not reading.breached, rule.id


def test_a_lost_connection_is_critical_and_named() -> None:
    reading = NatsDisconnectedRule().read(
        rule_input(ClusterView(snap(disconnected=("data",)))), SETTINGS)
    assert reading is not None and reading.breached and reading.observed == 1.0
    assert reading.recommendation is not None and "Down: data" in reading.recommendation
    assert NatsDisconnectedRule.severity == "critical"


@pytest.mark.parametrize(("buffered", "fires"), [(799, False), (800, True), (1000, True)])
def test_the_agent_buffer_near_full(buffered: int, fires: bool) -> None:
    reading = AgentBufferRule().read(rule_input(ClusterView(snap(buffered=buffered))),
                                     SETTINGS)
    assert reading is not None and reading.breached is fires
    assert reading.threshold == SETTINGS.queue_near_full_fraction


def test_refusals_are_critical_even_with_an_empty_buffer() -> None:
    reading = AgentBufferRule().read(rule_input(ClusterView(snap(), new_refusals=5)),
                                     SETTINGS)
    assert reading is not None and reading.breached and not reading.recovered
    assert reading.severity == "critical"
    assert reading.recommendation is not None and "5 publishes refused" in \
        reading.recommendation


def test_unowned_partitions_are_listed() -> None:
    reading = PartitionsUnownedRule().read(rule_input(ClusterView(snap(unowned=(3, 5)))),
                                           SETTINGS)
    assert reading is not None and reading.breached and reading.observed == 2.0
    assert reading.recommendation is not None and "partitions 3, 5" in \
        reading.recommendation


def test_lag_growth_fires_at_the_limit_and_names_the_partition() -> None:
    below = ClusterView(snap(), lag_growth=((2, LAG_GROWTH_MIN - 1),), window_s=30.0)
    at = ClusterView(snap(lag=((2, 150),)), lag_growth=((0, 1), (2, LAG_GROWTH_MIN)),
                     window_s=30.0)
    r_below = PartitionLagGrowingRule().read(rule_input(below), SETTINGS)
    r_at = PartitionLagGrowingRule().read(rule_input(at), SETTINGS)
    assert r_below is not None and not r_below.breached
    assert r_at is not None and r_at.breached and r_at.window_s == 30.0
    assert r_at.recommendation is not None and \
        f"partition 2 +{LAG_GROWTH_MIN} (lag 150)" in r_at.recommendation


def test_an_unreadable_lag_is_not_judged_and_owning_nothing_does_not_apply() -> None:
    rule = PartitionLagGrowingRule()
    lacking = rule.read(rule_input(ClusterView(snap(lag=(), lag_error="TimeoutError"))),
                        SETTINGS)
    assert lacking is not None and lacking.observed is None
    assert lacking.lacking is not None and "TimeoutError" in lacking.lacking
    assert rule.read(rule_input(ClusterView(snap(owned=0, lag=()))), SETTINGS) is None


# -- through the monitor -----------------------------------------------------------------


class Monitor(ActorRig[MockClock]):
    def __init__(self, clock: MockClock, probe: ClusterProbe) -> None:
        super().__init__(clock, "monitor", MonitorActor, SETTINGS, peers=(), replies=None,
                         metrics=MetricsRegistry(clock, 60.0), cluster=probe)
        self.start()

    def evaluate(self) -> dict[str, Any]:
        result: dict[str, Any] = self.handle.ask(Evaluate({}))
        return result


def ids(result: dict[str, Any]) -> set[str]:
    return {i["id"] for i in result["insights"]}


def test_the_monitor_judges_lag_growth_over_its_window(clock: MockClock) -> None:
    probe = ClusterProbe()
    current = {"lag": 0}
    probe.source = lambda: snap(lag=((0, current["lag"]), (2, 0)))
    m = Monitor(clock, probe)
    assert "partition_lag_growing" not in ids(m.evaluate())
    for _ in range(4):  # grows by 40 every 10 s: 120 within the 60 s window
        clock.advance(10.0)
        current["lag"] += 40
        result = m.evaluate()
    assert "partition_lag_growing" in ids(result)
    found = next(i for i in result["insights"] if i["id"] == "partition_lag_growing")
    assert found["observed"] == 160.0 and found["window_s"] == 40.0
    # Steady from now on: once the window holds no growth, the insight clears.
    for _ in range(8):
        clock.advance(10.0)
        result = m.evaluate()
    assert "partition_lag_growing" not in ids(result)


def test_the_monitor_counts_refusals_since_its_last_look(clock: MockClock) -> None:
    probe = ClusterProbe()
    refused = {"n": 0}
    probe.source = lambda: snap(refused=refused["n"])
    m = Monitor(clock, probe)
    assert "engine_buffer_near_full" not in ids(m.evaluate())
    refused["n"] = 7
    result = m.evaluate()
    found = next(i for i in result["insights"] if i["id"] == "engine_buffer_near_full")
    assert found["severity"] == "critical" and "7 publishes refused" in \
        found["recommendation"]
    assert "engine_buffer_near_full" not in ids(m.evaluate())  # none new: clears


def test_a_failing_probe_leaves_the_cluster_out(clock: MockClock) -> None:
    probe = ClusterProbe()

    def broken() -> ClusterSnapshot:
        raise RuntimeError("NATS loop gone")

    probe.source = broken
    m = Monitor(clock, probe)
    result = m.evaluate()
    assert not ids(result) & {r.id for r in RULES}
