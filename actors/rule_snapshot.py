"""The typed statistics snapshot the insight rules judge (:class:`RuleSnapshot`), and how
the monitor builds it from the actors' statistics (:func:`rule_snapshot`).

Every view is a frozen dataclass of plain numbers (``None`` where a statistic is missing:
a rule then says it lacks the input, never guesses). Rule authors import these names from
:mod:`modcoord.actors.rules`, the extension point's public face.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from modcoord.actors.histogram import HistogramSnapshot
from modcoord.actors.shared.cluster import ClusterView
from modcoord.actors.tuning import (
    AdaptiveParameter,
    AdaptiveSummary,
    DebounceSummary,
    ResourceSummary,
)

__all__ = [
    "AdaptiveView",
    "CacheView",
    "LatencyWindow",
    "MemoryView",
    "QueueView",
    "RuleSnapshot",
    "number",
    "rule_snapshot",
]


@dataclass(frozen=True)
class LatencyWindow:
    """A histogram's recent window: its summary and the window's length (seconds)."""

    summary: HistogramSnapshot
    window_s: float


@dataclass(frozen=True)
class CacheView:
    """The cache as the rules see it.

    Attributes:
        enabled: ``cache.enabled``.
        lookups: ``(hits, misses)`` within the monitor's window, or ``None`` if unknown.
    """

    enabled: bool
    lookups: tuple[int, int] | None


@dataclass(frozen=True)
class QueueView:
    """The batch queue as the rules see it.

    Attributes:
        depth: updates queued (``None`` if unknown).
        max_queue: ``batch.max_queue`` (``None`` or 0 if unknown).
        new_rejections: publishes refused since the previous evaluation.
    """

    depth: float | None
    max_queue: float | None
    new_rejections: int = 0


@dataclass(frozen=True)
class MemoryView:
    """Resident memory as the rules see it (bytes; ``None`` if unknown)."""

    rss_bytes: float | None
    max_rss_bytes: float | None
    strategy: str | None = None


@dataclass(frozen=True)
class AdaptiveView:
    """What adapted, as the rules see it (from the debouncer's and batcher's typed
    :class:`~modcoord.actors.tuning.AdaptiveSummary`).

    Attributes:
        parameters: parameter name → its :class:`AdaptiveParameter`.
        pinned: ``(parameter, subject, bound key)`` for each value held at a bound (the
            subject is a module, or ``"all"`` for the batch window).
    """

    parameters: Mapping[str, AdaptiveParameter]
    pinned: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class RuleSnapshot:
    """Everything a rule may read. A section is ``None`` when its statistics are missing.

    Attributes:
        latencies: recent windows of the histograms the rules need, by name (a histogram
            not recorded yet is absent).
        latency_window_s: the window length to report for an absent histogram.
        cache: see :class:`CacheView`.
        queue: see :class:`QueueView`.
        memory: see :class:`MemoryView`.
        restarts: restarts per actor within the window.
        adaptive: what the debouncer and batcher tuned (``None``: neither adapts).
        resources: the memory manager's resource awareness (``None``: not watched).
        cluster: the cluster (``None``: the local engine; the rules of
            :mod:`modcoord.actors.rules_cluster` read it).
    """

    latencies: Mapping[str, LatencyWindow]
    latency_window_s: float
    cache: CacheView | None = None
    queue: QueueView | None = None
    memory: MemoryView | None = None
    restarts: Mapping[str, int] | None = None
    adaptive: AdaptiveView | None = None
    resources: ResourceSummary | None = None
    cluster: ClusterView | None = None


def number(section: Any, *keys: str) -> float | None:
    """The first of ``keys`` in ``section`` holding a real number, else ``None``."""
    if not isinstance(section, Mapping):
        return None
    for key in keys:
        value = section.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None



def rule_snapshot(sections: Mapping[str, Any], latencies: Mapping[str, LatencyWindow],
                  latency_window_s: float, cache_lookups: tuple[int, int] | None = None,
                  new_rejections: int = 0,
                  adaptive: Iterable[AdaptiveSummary] = ()) -> RuleSnapshot:
    """Build the typed snapshot from the monitor's plain sections.

    Args:
        sections: ``{"cache": {...}, "batcher": {...}, "memory": {...}, "restarts":
            {...}}`` (see :func:`modcoord.actors.monitor.build_snapshot`); a section that
            is missing or not a mapping becomes ``None``; odd values become ``None``.
        latencies: see :attr:`RuleSnapshot.latencies`.
        latency_window_s: see :attr:`RuleSnapshot.latency_window_s`.
        cache_lookups: ``(hits, misses)`` within the window (the monitor keeps the
            history), or ``None``.
        new_rejections: batch rejections since the previous evaluation.
        adaptive: the typed adaptive summaries of the actors' statistics (the
            debouncer's, the batcher's, the memory manager's resources), as they are.
    """
    summaries = tuple(adaptive)
    resources = next((r for r in summaries if isinstance(r, ResourceSummary)
                      and r.enabled), None)
    cache = sections.get("cache")
    batcher = sections.get("batcher")
    memory = sections.get("memory")
    restarts = sections.get("restarts")
    strategy = memory.get("strategy") if isinstance(memory, Mapping) else None
    return RuleSnapshot(
        adaptive=_adaptive_view(s for s in summaries if not isinstance(s, ResourceSummary)),
        resources=resources,
        latencies=latencies,
        latency_window_s=latency_window_s,
        cache=CacheView(enabled=cache.get("enabled") is not False, lookups=cache_lookups)
        if isinstance(cache, Mapping) else None,
        queue=QueueView(depth=number(batcher, "queue_depth", "pending"),
                        max_queue=number(batcher, "max_queue"),
                        new_rejections=new_rejections)
        if isinstance(batcher, Mapping) else None,
        memory=MemoryView(rss_bytes=number(memory, "rss_bytes"),
                          max_rss_bytes=number(memory, "max_rss_bytes"),
                          strategy=strategy if isinstance(strategy, str) else None)
        if isinstance(memory, Mapping) else None,
        restarts={str(k): int(v) for k, v in restarts.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if isinstance(restarts, Mapping) else None,
    )


def _adaptive_view(summaries: Iterable[AdaptiveSummary]) -> AdaptiveView | None:
    """The :class:`AdaptiveView` of the summaries that adapt; ``None`` when none does."""
    params: dict[str, AdaptiveParameter] = {}
    pinned: list[tuple[str, str, str]] = []
    enabled = False
    for summary in summaries:
        if not summary.enabled:
            continue
        enabled = True
        for name, p in summary.parameters.items():
            params[name] = p
            if p.pinned is not None:
                pinned.append((name, "all", p.pinned))
        if isinstance(summary, DebounceSummary):
            pinned.extend(("debounce.delay_ms", m.module, m.pinned)
                          for m in summary.modules if m.pinned is not None)
    return AdaptiveView(params, tuple(pinned)) if enabled else None
