"""Insight rules about the cluster (the NATS engine): pure functions of the snapshot's
:class:`~modcoord.actors.shared.cluster.ClusterView`, run by the monitor after the rules
of :mod:`modcoord.actors.rules` (:data:`CLUSTER_RULES`).

Each returns ``None`` when the snapshot has no cluster (the local engine), so they neither
fire nor say "not enough data" there. The limits they compare against are the named
constants below, or the monitor settings they share with the local rules
(``queue_near_full_fraction`` for the agent's buffer).
"""

from __future__ import annotations

import dataclasses

from modcoord.actors.rules import InsightRule, Reading, RuleSnapshot
from modcoord.actors.settings import MonitorSettings

__all__ = [
    "CLUSTER_RULES",
    "LAG_GROWTH_MIN",
    "AgentBufferRule",
    "NatsDisconnectedRule",
    "PartitionLagGrowingRule",
    "PartitionsUnownedRule",
]

LAG_GROWTH_MIN = 100
"""``partition_lag_growing`` fires once an owned partition's lag (stream messages not yet
acknowledged) grew by this many within ``monitor.window_s``: the owner falls behind."""


class NatsDisconnectedRule(InsightRule):
    """One of this daemon's NATS connections (data, control) is down."""

    id = "nats_disconnected"
    severity = "critical"
    message = ("This daemon lost its NATS connection - publishes are buffered, then "
               "refused, and its partitions lapse")
    recommendation = (
        "Check that the servers in engine.servers run and are reachable from this host; "
        "publishes are held up to engine.max_buffered and the connection is retried "
        "without limit"
    )
    inclusive = True

    def read(self, snapshot: RuleSnapshot, settings: MonitorSettings) -> Reading | None:
        cluster = snapshot.cluster
        if cluster is None:
            return None
        down = cluster.snapshot.disconnected
        reading = self.compare(float(len(down)), 1.0, 0.0)
        if reading.breached:
            reading = dataclasses.replace(
                reading, recommendation=f"Down: {', '.join(down)}. {self.recommendation}")
        return reading


class AgentBufferRule(InsightRule):
    """The agent's buffer (accepted, not yet acknowledged by JetStream) at
    ``queue_near_full_fraction`` of ``engine.max_buffered``; critical once it refused."""

    id = "engine_buffer_near_full"
    severity = "warning"
    message = ("The NATS agent's buffer is near full - JetStream acknowledges publishes "
               "slower than they arrive")
    recommendation = (
        "Check the NATS connection and the servers' health (nats-server /healthz); raise "
        "engine.max_buffered to ride out longer outages, or publish less often"
    )
    inclusive = True

    def read(self, snapshot: RuleSnapshot, settings: MonitorSettings) -> Reading | None:
        cluster = snapshot.cluster
        if cluster is None:
            return None
        fraction = settings.queue_near_full_fraction
        window = settings.evaluate_interval_ms / 1000.0
        s = cluster.snapshot
        if s.max_buffered <= 0:
            return self.lacking(fraction, "engine buffer limit unavailable", window)
        reading = self.compare(round(s.buffered / s.max_buffered, 4), fraction, window)
        if cluster.new_refusals > 0:
            reading = dataclasses.replace(
                reading, breached=True, recovered=False, severity="critical",
                recommendation=f"{cluster.new_refusals} publishes refused (QueueFullError) "
                f"since the last evaluation. {self.recommendation}")
        return reading


class PartitionsUnownedRule(InsightRule):
    """Partitions no instance holds: their updates wait in the stream until one takes them
    (normally within the lease time, 9 s, after an owner dies)."""

    id = "partitions_unowned"
    severity = "warning"
    message = "Some partitions have no owner - their updates wait in the stream"
    recommendation = (
        "Wait one lease time (9 s) for a live daemon to take them over; if they stay "
        "unowned, check that the daemons run and are connected (modcoord status: engine)"
    )
    inclusive = True

    def read(self, snapshot: RuleSnapshot, settings: MonitorSettings) -> Reading | None:
        cluster = snapshot.cluster
        if cluster is None:
            return None
        unowned = cluster.snapshot.unowned
        reading = self.compare(float(len(unowned)), 1.0, 0.0)
        if reading.breached:
            shown = ", ".join(str(p) for p in unowned[:16])
            more = f" and {len(unowned) - 16} more" if len(unowned) > 16 else ""
            reading = dataclasses.replace(
                reading,
                recommendation=f"Unowned: partitions {shown}{more}. {self.recommendation}")
        return reading


class PartitionLagGrowingRule(InsightRule):
    """An owned partition's lag grew by :data:`LAG_GROWTH_MIN` messages or more within
    the window: this daemon does not keep up with it."""

    id = "partition_lag_growing"
    severity = "warning"
    message = "A partition's lag keeps growing - its owner does not keep up"
    recommendation = (
        "Start another daemon (partitions spread over every live daemon), raise "
        "batch.max_size so each delivery carries more, or find the slow subscribers "
        "(engine.delivery_timeout_s bounds each delivery)"
    )
    inclusive = True

    def read(self, snapshot: RuleSnapshot, settings: MonitorSettings) -> Reading | None:
        cluster = snapshot.cluster
        if cluster is None:
            return None
        threshold = float(LAG_GROWTH_MIN)
        if cluster.snapshot.lag_error is not None:
            return self.lacking(threshold, f"partition lag unavailable "
                                f"({cluster.snapshot.lag_error})", cluster.window_s)
        if not cluster.snapshot.owned:
            return None  # owns nothing: no lag of its own to judge
        growth = dict(cluster.lag_growth)
        worst = max(growth.values(), default=0)
        reading = self.compare(float(worst), threshold, cluster.window_s)
        if reading.breached:
            lag = dict(cluster.snapshot.lag)
            growing = sorted((g, p) for p, g in growth.items() if g >= threshold)[::-1]
            said = ", ".join(f"partition {p} +{g} (lag {lag.get(p, 0)})"
                             for g, p in growing[:8])
            reading = dataclasses.replace(
                reading, recommendation=f"Growing: {said}. {self.recommendation}")
        return reading


CLUSTER_RULES: tuple[InsightRule, ...] = (
    NatsDisconnectedRule(),
    AgentBufferRule(),
    PartitionsUnownedRule(),
    PartitionLagGrowingRule(),
)
"""The cluster rules, in the order the monitor runs them (after the local ones)."""
