"""What the dashboard page shows: the ONE list of its charts (:data:`PANELS`) and live
figures (:data:`TILES`), its time ranges (:data:`RANGES`) and poll intervals, as the page
reads them from ``/api/layout`` (:func:`layout`).

docs/REFERENCE.md ("Dashboard panels") lists the same tables (a test keeps them equal), and
a Grafana dashboard over the Prometheus metrics mirrors the panels. Every figure named
here is one the history already samples (:func:`~modcoord.supervisor.daemon.sampling.
figures`) or a field of the ``status`` document: nothing is derived twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

from modcoord.supervisor.protocol.calls import HISTORY_MAX_SINCE_S
from modcoord.supervisor.version import VERSION

__all__ = [
    "HISTORY_COLUMNS",
    "INSIGHTS_POLL_MS",
    "PANELS",
    "POLL_INTERVAL_MS",
    "RANGES",
    "TILES",
    "Panel",
    "Tile",
    "layout",
]

POLL_INTERVAL_MS: Final = 2000
"""The page polls ``/api/live`` this often (and the history at most this often)."""
INSIGHTS_POLL_MS: Final = 10_000
"""The page asks for the insights this often (their rules judge windows of minutes, and
the trend rules read the history: too dear to run every poll)."""


@dataclass(frozen=True)
class Panel:
    """One history chart: ``metrics`` are history metric names; a ``*`` matches any run of
    characters (``adaptive.*``, ``module.*.updates_per_s``)."""

    id: str
    title: str
    unit: str
    metrics: tuple[str, ...]


@dataclass(frozen=True)
class Tile:
    """One live figure: ``source`` is ``history:<metric>`` (the newest sampled value) or
    ``status:<dotted.path>`` (a field of the ``status`` document)."""

    id: str
    label: str
    unit: str
    source: str


PANELS: Final = (
    Panel("latency", "Coordination latency", "ms",
          ("coordination_p50_ms", "coordination_p99_ms", "publish_to_delivery_p99_ms")),
    Panel("throughput", "Updates per second", "/s",
          ("updates_in_per_s", "updates_delivered_per_s")),
    Panel("collapse", "Collapse ratio", "ratio", ("collapse_ratio",)),
    Panel("cache_hit", "Cache hit rate", "ratio", ("cache_hit_rate",)),
    Panel("cache_size", "Cache size", "entries", ("cache_size",)),
    Panel("batch_efficiency", "Batch efficiency", "updates/ms", ("batch_efficiency",)),
    Panel("queue", "Batch queue depth", "updates", ("batch_queue_depth",)),
    Panel("memory", "Memory (RSS)", "bytes", ("memory_rss_bytes",)),
    Panel("modules", "Modules and restarts", "", ("modules", "restarts")),
    Panel("module_rates", "Busiest modules", "updates/s", ("module.*.updates_per_s",)),
    Panel("adaptive", "Adaptive parameters (effective)", "", ("adaptive.*",)),
)
"""The history charts, in page order (docs/REFERENCE.md: Dashboard panels)."""

TILES: Final = (
    Tile("coordinating", "Coordinating", "", "status:is_coordinating"),
    Tile("mode", "Mode", "", "status:mode"),
    Tile("strategy", "Strategy", "", "status:strategy"),
    Tile("modules", "Modules", "", "status:modules"),
    Tile("latency_p50", "Coordination p50", "ms", "history:coordination_p50_ms"),
    Tile("latency_p99", "Coordination p99", "ms", "history:coordination_p99_ms"),
    Tile("delivery_p99", "Publish → delivery p99", "ms", "history:publish_to_delivery_p99_ms"),
    Tile("updates_in", "Updates in", "/s", "history:updates_in_per_s"),
    Tile("updates_delivered", "Updates delivered", "/s", "history:updates_delivered_per_s"),
    Tile("collapse", "Collapse ratio", "ratio", "history:collapse_ratio"),
    Tile("cache_hit", "Cache hit rate", "ratio", "history:cache_hit_rate"),
    Tile("cache_size", "Cache size", "entries", "history:cache_size"),
    Tile("batch_efficiency", "Batch efficiency", "updates/ms", "history:batch_efficiency"),
    Tile("queue", "Batch queue depth", "updates", "history:batch_queue_depth"),
    Tile("memory", "Memory (RSS)", "bytes", "history:memory_rss_bytes"),
    Tile("uptime", "Uptime", "s", "status:uptime_s"),
)
"""The live figures, in page order (docs/REFERENCE.md: Dashboard panels)."""

HISTORY_COLUMNS: Final = ("ts", "min", "max", "mean", "last")
"""The columns of a history point (the ``history`` call's ``columns``); ``/api/history``
answers the subset its ``columns`` parameter names (the page asks for ``ts,mean``)."""

RANGES: Final = (("15 min", 900), ("1 h", 3600), ("6 h", 21_600), ("1 d", 86_400),
                 ("30 d", 30 * 86_400))
"""The time-range picker's choices (label, seconds); the history answers each at the
finest resolution that covers it."""

assert all(seconds <= HISTORY_MAX_SINCE_S for _, seconds in RANGES)


def layout() -> dict[str, Any]:
    """What ``/api/layout`` answers: the panels, tiles, ranges, the poll intervals and
    modcoord's version."""
    return {"panels": [asdict(p) for p in PANELS], "tiles": [asdict(t) for t in TILES],
            "ranges": [{"label": label, "seconds": s} for label, s in RANGES],
            "poll_ms": POLL_INTERVAL_MS, "insights_poll_ms": INSIGHTS_POLL_MS,
            "version": VERSION}
