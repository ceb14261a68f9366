"""Insight rules: pure functions of a typed statistics snapshot and the monitor's settings.

Each rule (:data:`RULES`) gives an id, a severity, a message and a recommendation naming the
config key to change, and judges a :class:`RuleSnapshot` — typed views of the cache,
batch queue, memory, restarts and latency windows — against :class:`MonitorSettings`,
returning a :class:`Reading`: the observed value, the threshold, whether it is breached
or has recovered past the threshold by :data:`HYSTERESIS`, or why it could not judge
(``lacking``). A rule reads nothing else and changes nothing: the monitor actor
(:mod:`modcoord.actors.monitor`) gathers the statistics, builds the snapshot
(:func:`rule_snapshot`), keeps each rule's state (active, last logged) and turns readings
into insights (:func:`insight`). The snapshot's types live in
:mod:`modcoord.actors.rule_snapshot`; this module is the public face of both (a rule
plugin imports every name from here).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from modcoord.actors.histogram import HistogramSnapshot
from modcoord.actors.rule_snapshot import (
    AdaptiveView,
    CacheView,
    LatencyWindow,
    MemoryView,
    QueueView,
    RuleSnapshot,
    number,
    rule_snapshot,
)
from modcoord.actors.settings import MonitorSettings

__all__ = [
    "HYSTERESIS",
    "RULES",
    "SEVERITIES",
    "WORSENING",
    "AdaptationRule",
    "AdaptiveBoundRule",
    "AdaptiveView",
    "CacheHitRateRule",
    "CacheView",
    "CoordinationLatencyRule",
    "DebounceLatenessRule",
    "InsightRule",
    "LatencyWindow",
    "MemoryNearLimitRule",
    "MemoryView",
    "QueueNearFullRule",
    "QueueView",
    "Reading",
    "ResourcePressureRule",
    "RestartChurnRule",
    "RuleSnapshot",
    "insight",
    "number",
    "rule_snapshot",
]

HYSTERESIS = 0.10
"""A fired rule clears only once its value is this fraction past the threshold."""
WORSENING = 0.25
"""An active rule is logged again within the quiet period if it worsened this much."""
SEVERITIES: tuple[str, ...] = ("critical", "warning", "info")
"""Severities, most severe first."""
_MB = 1024.0 * 1024.0


# -- rules ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """One rule's verdict on one snapshot.

    Attributes:
        observed: the value compared, or ``None`` when the rule could not judge.
        threshold: the value it is compared against.
        breached: the rule would fire now.
        recovered: an active rule clears now (past the threshold by the margin).
        window_s: the window the value covers.
        lacking: why the rule could not judge (``"coordination latency (3 of 20
            samples)"``), when ``observed`` is ``None``.
        samples: samples available, for rules that need them.
        severity: overrides the rule's default severity.
        recommendation: overrides the rule's default recommendation.
    """

    observed: float | None
    threshold: float
    breached: bool = False
    recovered: bool = True
    window_s: float = 0.0
    lacking: str | None = None
    samples: int | None = None
    severity: str | None = None
    recommendation: str | None = None


class InsightRule:
    """Base of an insight rule: constants, and the threshold comparison with hysteresis.

    Subclasses set the class attributes and implement :meth:`read`, a pure function of
    the snapshot and the settings, which returns ``None`` when the rule does not apply at
    all (for example the cache is disabled).
    """

    id: ClassVar[str]
    severity: ClassVar[str] = "warning"
    message: ClassVar[str]
    recommendation: ClassVar[str]
    higher_is_worse: ClassVar[bool] = True
    inclusive: ClassVar[bool] = False
    """Whether a value equal to the threshold breaches it."""

    histograms: ClassVar[tuple[str, ...]] = ()
    """The latency histograms the rule reads (the monitor snapshots only those)."""

    def read(self, snapshot: RuleSnapshot, settings: MonitorSettings) -> Reading | None:
        """Judge ``snapshot``. Raises nothing for missing or odd data: it reports
        ``lacking``."""
        raise NotImplementedError

    def compare(self, observed: float, threshold: float, window_s: float,
                samples: int | None = None, **extra: Any) -> Reading:
        """Return the reading of ``observed`` against ``threshold`` (with the margin)."""
        if self.higher_is_worse:
            breached = observed >= threshold if self.inclusive else observed > threshold
            recovered = observed < threshold * (1.0 - HYSTERESIS)
        else:
            breached = observed <= threshold if self.inclusive else observed < threshold
            recovered = observed > threshold * (1.0 + HYSTERESIS)
        return Reading(observed=observed, threshold=threshold, breached=breached,
                       recovered=recovered, window_s=window_s, samples=samples, **extra)

    def worsened(self, observed: float, last: float) -> bool:
        """Whether ``observed`` is at least :data:`WORSENING` worse than ``last``."""
        if self.higher_is_worse:
            return observed >= last * (1.0 + WORSENING) if last > 0 else observed > 0
        return last > 0 and observed <= last * (1.0 - WORSENING)

    @staticmethod
    def lacking(threshold: float, what: str, window_s: float = 0.0,
                samples: int | None = None) -> Reading:
        return Reading(observed=None, threshold=threshold, window_s=window_s,
                       lacking=what, samples=samples)


class _HistogramRule(InsightRule):
    """A percentile of a recent histogram window above a threshold (needs samples)."""

    histogram: ClassVar[str]
    label: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.histograms = (cls.histogram,)

    def threshold_ms(self, settings: MonitorSettings) -> float:
        raise NotImplementedError

    def percentile(self, summary: HistogramSnapshot) -> float:
        """The percentile compared (milliseconds)."""
        raise NotImplementedError

    def read(self, snapshot: RuleSnapshot, settings: MonitorSettings) -> Reading | None:
        threshold = self.threshold_ms(settings)
        latency = snapshot.latencies.get(self.histogram)
        window = latency.window_s if latency is not None else snapshot.latency_window_s
        samples = latency.summary.count if latency is not None else 0
        needed = settings.min_samples
        if latency is None or samples < needed:
            return self.lacking(threshold, f"{self.label} ({samples} of {needed} samples)",
                                window, samples)
        observed = float(self.percentile(latency.summary))
        return self.compare(round(observed, 3), threshold, window, samples)


class CoordinationLatencyRule(_HistogramRule):
    """p95 coordination latency over the recent window above ``coordination_latency_ms``."""

    id = "high_coordination_latency"
    severity = "warning"
    message = "High coordination latency detected - consider optimizing module communication"
    recommendation = (
        "Raise cache.ttl_ms so more coordinations are answered from the cache, or raise "
        "debounce.delay_ms so modules are asked less often; check for modules whose "
        "on_mode_change is slow"
    )
    histogram = "coordination"
    label = "coordination latency"

    def threshold_ms(self, settings: MonitorSettings) -> float:
        return settings.coordination_latency_ms

    def percentile(self, summary: HistogramSnapshot) -> float:
        return summary.p95


class DebounceLatenessRule(_HistogramRule):
    """p99 debounce timer lateness over the recent window above ``debounce_lateness_ms``."""

    id = "late_debounce_timers"
    severity = "warning"
    message = "Debounce timers are firing late - the daemon is overloaded or starved of CPU"
    recommendation = (
        "Raise debounce.delay_ms (fewer timers fire) or batch.window_ms (fewer deliveries), "
        "or reduce the publish rate; CPU-bound work on the host delays every timer"
    )
    histogram = "debounce_lateness"
    label = "debounce timer lateness"

    def threshold_ms(self, settings: MonitorSettings) -> float:
        return settings.debounce_lateness_ms

    def percentile(self, summary: HistogramSnapshot) -> float:
        return summary.p99


class CacheHitRateRule(InsightRule):
    """Cache hit rate over the window below ``cache_hit_rate_min`` (needs lookups)."""

    id = "low_cache_hit_rate"
    severity = "warning"
    message = "Low cache hit rate - consider adjusting cache TTL or strategy"
    recommendation = (
        "Raise cache.ttl_ms so results live until they are reused, or cache.max_entries "
        "so they are not evicted first"
    )
    higher_is_worse = False

    def read(self, snapshot: RuleSnapshot, settings: MonitorSettings) -> Reading | None:
        threshold = settings.cache_hit_rate_min
        window = settings.window_s
        cache = snapshot.cache
        if cache is None:
            return self.lacking(threshold, "cache statistics unavailable", window)
        if not cache.enabled:
            return None  # cache.enabled: false — nothing to judge
        if cache.lookups is None:
            return self.lacking(threshold, "cache hit and miss counts unavailable", window)
        hits, misses = cache.lookups
        lookups = hits + misses
        needed = settings.min_samples
        if lookups < needed:
            return self.lacking(threshold, f"cache lookups ({lookups} of {needed} samples)",
                                window, lookups)
        return self.compare(round(hits / lookups, 4), threshold, window, lookups)


class QueueNearFullRule(InsightRule):
    """Batch queue depth at ``queue_near_full_fraction`` of ``max_queue``, or rejections."""

    id = "queue_near_full"
    severity = "warning"
    message = "Batch queue near full - publishers are being slowed or rejected"
    recommendation = (
        "Raise batch.max_queue, or lower batch.window_ms so queued updates go out sooner"
    )
    inclusive = True

    def read(self, snapshot: RuleSnapshot, settings: MonitorSettings) -> Reading | None:
        fraction = settings.queue_near_full_fraction
        window = settings.evaluate_interval_ms / 1000.0
        queue = snapshot.queue
        if queue is None:
            return self.lacking(fraction, "batcher statistics unavailable", window)
        depth = queue.depth
        max_queue = queue.max_queue
        rejected = queue.new_rejections
        if depth is None or not max_queue:
            if rejected > 0:
                return Reading(observed=1.0, threshold=fraction, breached=True,
                               recovered=False, window_s=window, severity="critical")
            return self.lacking(fraction, "batch queue depth or limit unavailable", window)
        reading = self.compare(round(depth / max_queue, 4), fraction, window)
        if rejected > 0:
            return dataclasses.replace(reading, breached=True, recovered=False,
                                       severity="critical")
        return reading


class RestartChurnRule(InsightRule):
    """Some actor restarted ``restart_churn_max`` times or more within the window."""

    id = "restart_churn"
    severity = "critical"
    message = "Actor restart churn detected - an actor keeps failing and restarting"
    recommendation = (
        "Find the failing actor's errors with `modcoord logs --level ERROR`; if the "
        "restarts are expected, raise monitor.restart_churn_max"
    )
    inclusive = True

    def read(self, snapshot: RuleSnapshot, settings: MonitorSettings) -> Reading | None:
        threshold = float(settings.restart_churn_max)
        window = settings.window_s
        counts = snapshot.restarts
        if counts is None:
            return self.lacking(threshold, "restart counts unavailable", window)
        worst = max(counts.values(), default=0)
        reading = self.compare(float(worst), threshold, window)
        if reading.breached:
            churning = ", ".join(f"{a} ({n})" for a, n in sorted(counts.items())
                                 if n >= threshold)
            reading = dataclasses.replace(
                reading, recommendation=f"Restarting: {churning}. {self.recommendation}"
            )
        return reading


class MemoryNearLimitRule(InsightRule):
    """Resident memory at ``memory_near_limit_fraction`` of ``memory.max_rss_mb`` (MB)."""

    id = "memory_near_limit"
    severity = "warning"
    message = "Memory usage near its limit - cleanup may not be keeping up"
    recommendation = (
        "Raise memory.max_rss_mb, or set memory.strategy to balanced or aggressive so "
        "pressure cleanups reclaim more"
    )
    inclusive = True

    def read(self, snapshot: RuleSnapshot, settings: MonitorSettings) -> Reading | None:
        fraction = settings.memory_near_limit_fraction
        memory = snapshot.memory
        rss = memory.rss_bytes if memory is not None else None
        limit = memory.max_rss_bytes if memory is not None else None
        if memory is None or rss is None or not limit:
            return self.lacking(fraction, "memory statistics unavailable")
        reading = self.compare(round(rss / _MB, 2), round(fraction * limit / _MB, 2), 0.0)
        if rss >= limit:
            reading = dataclasses.replace(reading, severity="critical")
        if memory.strategy == "aggressive":
            reading = dataclasses.replace(
                reading, recommendation="Raise memory.max_rss_mb (memory.strategy is already "
                "aggressive), or reduce cache.max_entries"
            )
        return reading


class AdaptationRule(InsightRule):
    """An adapted parameter differs from its configured value by more than
    ``adaptive_change_fraction`` (explains what adapted and why)."""

    id = "adaptive_tuning"
    severity = "info"
    message = "Adaptive tuning moved parameters away from their configured values"
    recommendation = (
        "Nothing to do; to freeze every parameter at its configured value set "
        "adaptive.enabled: false in the mode file"
    )

    def read(self, snapshot: RuleSnapshot, settings: MonitorSettings) -> Reading | None:
        view = snapshot.adaptive
        if view is None:
            return None  # nothing adapts (MANUAL, or adaptive.enabled: false)
        threshold = settings.adaptive_change_fraction
        changes = []
        for name, p in sorted(view.parameters.items()):
            values = p.numeric
            if values is not None and values[0] > 0:
                configured, effective = values
                changes.append((abs(effective - configured) / configured, name,
                                configured, effective, p.reason))
        if not changes:
            return self.lacking(threshold, "no adapted parameters reported")
        worst = max(c[0] for c in changes)
        reading = self.compare(round(worst, 4), threshold, 0.0)
        if reading.breached:
            said = "; ".join(f"{n} {c:g} -> {e:g} ({r})" for d, n, c, e, r in changes
                             if d > threshold)
            reading = dataclasses.replace(
                reading, recommendation=f"{said}. {self.recommendation}")
        return reading


_BOUND_NAMES = {"debounce.delay_ms": "debounce delay", "batch.window_ms": "batch window"}


class AdaptiveBoundRule(InsightRule):
    """An adapted value is held at a bound (``adaptive_pinned_min`` or more of them): the
    bound, not the activity, decides it; the recommendation names the key to move."""

    id = "adaptive_bound_pinned"
    severity = "warning"
    message = "An adaptive bound holds a parameter back from the value activity calls for"
    recommendation = "Widen the bound named, or leave it if the bound is deliberate"
    inclusive = True

    def read(self, snapshot: RuleSnapshot, settings: MonitorSettings) -> Reading | None:
        view = snapshot.adaptive
        if view is None:
            return None
        threshold = float(settings.adaptive_pinned_min)
        reading = self.compare(float(len(view.pinned)), threshold, 0.0)
        if reading.breached:
            said = "; ".join(
                f"{_BOUND_NAMES.get(p, p)} pinned at {bound.rsplit('.', 1)[-1]} for "
                f"{subject}: {'lower' if bound.endswith('min_ms') else 'raise'} {bound}"
                for p, subject, bound in view.pinned[:10])
            # Held at a maximum, bursts go out uncollapsed (or batches small): a warning;
            # held at a minimum, the value is a little longer than needed: information.
            at_max = any(not bound.endswith("min_ms") for _, _, bound in view.pinned)
            reading = dataclasses.replace(reading, recommendation=said,
                                          severity="warning" if at_max else "info")
        return reading


class ResourcePressureRule(InsightRule):
    """Resource pressure holds (``adaptive.resources``): the memory strategy is escalated
    and the cache capped, or delays and windows are widened for CPU. The observed value
    is the memory level (0-2) plus 1 while widened; any of it fires."""

    id = "resource_pressure"
    severity = "warning"
    message = "The daemon sheds work under resource pressure"
    recommendation = (
        "Raise memory.max_rss_mb or lower cache.max_entries; give the daemon more CPU or "
        "publish less often"
    )
    inclusive = True

    def read(self, snapshot: RuleSnapshot, settings: MonitorSettings) -> Reading | None:
        view = snapshot.resources
        if view is None:
            return None  # not watched (MANUAL, adaptive.enabled or resources.enabled false)
        observed = float(view.memory_level + (1 if view.widening else 0))
        reading = self.compare(observed, 1.0, 0.0)
        if not reading.breached:
            return reading
        said = []
        strategy, cap = view.strategy, view.cache_cap
        if view.memory_level and strategy is not None and cap is not None:
            said.append(f"memory pressure ({view.memory_reason}): strategy escalated to "
                        f"{strategy.effective}, cache capped at {cap.effective} of "
                        f"{cap.configured} entries: raise memory.max_rss_mb or lower "
                        "cache.max_entries")
        widen = view.widen
        if view.widening and widen is not None:
            said.append(f"CPU pressure ({view.cpu_reason}): debounce delays and batch "
                        f"windows widened x{widen.effective}: give the daemon more CPU, "
                        "publish less often, or raise adaptive.resources.cpu_enter_fraction")
        return dataclasses.replace(reading, recommendation="; ".join(said) or None)


RULES: tuple[InsightRule, ...] = (
    CoordinationLatencyRule(),
    CacheHitRateRule(),
    QueueNearFullRule(),
    RestartChurnRule(),
    MemoryNearLimitRule(),
    DebounceLatenessRule(),
    AdaptationRule(),
    AdaptiveBoundRule(),
    ResourcePressureRule(),
)
"""The rules every evaluation runs, in this order."""


def insight(rule: InsightRule, reading: Reading) -> dict[str, Any]:
    """The insight an active rule reports for ``reading`` (the ``insights`` reply's items)."""
    return {
        "id": rule.id,
        "severity": reading.severity or rule.severity,
        "observed": reading.observed,
        "threshold": reading.threshold,
        "window_s": reading.window_s,
        "message": rule.message,
        "recommendation": reading.recommendation or rule.recommendation,
    }
