"""Trend rules: a figure of the history that rose or fell by a factor over a window.

A pure function of the history's series (:func:`trend_insights`): for each watched metric
it compares the mean of the window's last sixth (*now*) with the mean of its first third
(*before*); a ratio of at least ``factor`` (or at most ``1/factor``) is an insight of the
same shape as the monitor's rules (``id``, ``severity``, ``observed``, ``threshold``,
``window_s``, ``message``, ``recommendation``). Where the per-module update rates
(``module.<id>.updates_per_s``) explain it — one module's rate rose the most over the same
window — the message says so ("..., since module X started publishing 12k/s").

Nothing is judged without data: each part of the window needs :data:`MIN_POINTS` points,
and a *before* value under the metric's noise floor (:data:`NOISE_FLOORS`) is not a
baseline (0.01 ms → 0.05 ms is not a trend).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "MIN_POINTS",
    "NOISE_FLOORS",
    "TRENDABLE",
    "TrendThresholds",
    "trend_insights",
]

MIN_POINTS: Final = 3
"""Points each part of the window needs before a trend is judged."""

NOISE_FLOORS: Final[Mapping[str, float]] = {
    "coordination_p50_ms": 0.05,
    "coordination_p99_ms": 0.1,
    "publish_to_delivery_p99_ms": 1.0,
    "updates_in_per_s": 10.0,
    "updates_delivered_per_s": 10.0,
    "collapse_ratio": 0.01,
    "cache_hit_rate": 0.01,
    "cache_size": 10.0,
    "batch_efficiency": 0.1,
    "batch_queue_depth": 100.0,
    "memory_rss_bytes": 1024.0 * 1024.0,
    "modules": 1.0,
}
"""Metric → the smallest *before* value a trend is measured from (the trendable metrics)."""

TRENDABLE: Final = tuple(NOISE_FLOORS)

_HIGHER_IS_WORSE: Final = frozenset({
    "coordination_p50_ms", "coordination_p99_ms", "publish_to_delivery_p99_ms",
    "batch_queue_depth", "memory_rss_bytes"})
_LOWER_IS_WORSE: Final = frozenset({"cache_hit_rate", "updates_delivered_per_s"})
_LABELS: Final = {
    "coordination_p50_ms": ("coordination p50", " ms"),
    "coordination_p99_ms": ("coordination p99", " ms"),
    "publish_to_delivery_p99_ms": ("publish-to-delivery p99", " ms"),
    "updates_in_per_s": ("updates in", "/s"),
    "updates_delivered_per_s": ("updates delivered", "/s"),
    "memory_rss_bytes": ("memory (RSS)", " B"),
    "batch_queue_depth": ("batch queue depth", ""),
}
_ADVICE: Final = {
    "coordination_p99_ms": "coordination slowed: look at the busiest modules' rates "
                           "('modcoord history --metric coordination_p99_ms --since 1h') "
                           "and their on_mode_change time; raise cache.ttl_ms to answer "
                           "repeated rounds from the cache",
    "publish_to_delivery_p99_ms": "deliveries slowed: raise debounce.max_wait_ms or "
                                  "batch.max_size, or slow the busiest publisher",
    "batch_queue_depth": "the batch queue is filling: raise batch.max_queue or slow the "
                         "busiest publisher",
    "memory_rss_bytes": "memory grew: lower cache.max_entries or memory.max_rss_mb",
    "cache_hit_rate": "the cache hits less: raise cache.ttl_ms or cache.max_entries",
    "updates_delivered_per_s": "fewer updates are delivered: check the subscribers "
                               "('modcoord status', server section)",
}


@dataclass(frozen=True)
class TrendThresholds:
    """The ``history.trend`` keys: the factor, the window (s) and the watched metrics."""

    factor: float = 4.0
    window_s: float = 900.0
    metrics: tuple[str, ...] = field(default=(
        "coordination_p99_ms", "publish_to_delivery_p99_ms", "batch_queue_depth",
        "memory_rss_bytes", "cache_hit_rate", "updates_delivered_per_s"))


def _mean(points: Sequence[tuple[float, float]]) -> float:
    return sum(v for _, v in points) / len(points)


def _split(points: Sequence[tuple[float, float]], now: float, window: float
           ) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    start = now - window
    before = [p for p in points if start <= p[0] < start + window / 3]
    recent = [p for p in points if p[0] >= now - window / 6]
    return before, recent


def _human(value: float, unit: str) -> str:
    if unit == " B":
        return f"{value / 1048576:.1f} MiB"
    if abs(value) >= 10_000:
        return f"{value / 1000:.0f}k{unit}"
    if abs(value) >= 100:
        return f"{value:.0f}{unit}"
    return f"{value:.3g}{unit}"


def _window_words(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _culprit(values: Callable[[str, float], list[tuple[float, float]]],
             modules: Iterable[str], now: float, window: float) -> tuple[str, float] | None:
    """The module whose update rate rose the most over the window (at least doubled, and
    by more than the rates' noise floor), with its rate now."""
    best: tuple[float, str, float] | None = None
    floor = NOISE_FLOORS["updates_in_per_s"]
    for name in modules:
        points = values(name, window)
        before, recent = _split(points, now, window)
        if len(recent) < MIN_POINTS:
            continue
        rate_now = _mean(recent)
        rate_before = _mean(before) if before else 0.0
        rise = rate_now - rate_before
        if rate_now >= floor and rate_now >= 2 * rate_before and (
                best is None or rise > best[0]):
            best = (rise, name, rate_now)
    if best is None:
        return None
    module = best[1][len("module."):-len(".updates_per_s")]
    return module, best[2]


def trend_insights(values: Callable[[str, float], list[tuple[float, float]]],
                   known: Iterable[str], now: float, thresholds: TrendThresholds
                   ) -> list[dict[str, Any]]:
    """The trend insights over the history.

    Args:
        values: ``(metric, since_s) -> [(ts, value), ...]`` oldest first (the store's).
        known: every metric name the history holds (for the per-module rates).
        now: the current wall time (the same clock as the series' timestamps).
        thresholds: the ``history.trend`` settings.

    Returns:
        One insight per watched metric that rose or fell by ``factor`` or more.
    """
    window = thresholds.window_s
    factor = thresholds.factor
    modules = [m for m in known if m.startswith("module.") and m.endswith(".updates_per_s")]
    out: list[dict[str, Any]] = []
    for metric in thresholds.metrics:
        floor = NOISE_FLOORS.get(metric, 0.0)
        before, recent = _split(values(metric, window), now, window)
        if len(before) < MIN_POINTS or len(recent) < MIN_POINTS:
            continue
        was, is_now = _mean(before), _mean(recent)
        rose = is_now >= was and is_now >= floor and is_now / max(was, floor, 1e-12) >= factor
        fell = is_now < was and was >= floor and was / max(is_now, 1e-12) >= factor
        if not (rose or fell):
            continue
        ratio = is_now / max(was, floor, 1e-12) if rose else was / max(is_now, 1e-12)
        label, unit = _LABELS.get(metric, (metric.replace("_", " "), ""))
        change = f"rose {ratio:.1f}x" if rose else (
            f"fell {ratio:.1f}x" if is_now > 0 else "fell to 0")
        message = (f"{label} {change} in the last {_window_words(window)} "
                   f"({_human(was, unit)} → {_human(is_now, unit)})")
        if not metric.startswith("module."):
            culprit = _culprit(values, modules, now, window)
            if culprit is not None:
                message += (f", since module {culprit[0]} started publishing "
                            f"{_human(culprit[1], '/s')}")
        worse = (rose and metric in _HIGHER_IS_WORSE) or (fell and metric in _LOWER_IS_WORSE)
        out.append({
            "id": f"trend.{metric}",
            "severity": "warning" if worse else "info",
            "observed": round(min(ratio, 1e9), 2),
            "threshold": factor,
            "window_s": window,
            "message": message,
            "recommendation": _ADVICE.get(
                metric, f"see 'modcoord history --metric {metric} --since 1h'; "
                        "the factor is history.trend.factor"),
        })
    return out
