"""Status assembly: the document ``status --json`` prints, built from the actors' statistics
and the engine's own gauges (fields: docs/REFERENCE.md).

Rules: every actor is asked for its statistics at once and waited for together, within one
deadline (:func:`gather_statistics`); the typed snapshots are serialised here, at the edge
(:func:`adaptive_status` for the ``adaptive`` field, ``as_dict()`` for the rest). The
coordination latency is the recent window's, or the totals since start when the window
holds nothing.

On failure: an actor that does not answer in time (stopped, restarting or busy) is ``None``
in the document and its section falls back to empty values; assembling never raises for
it. Only the supervisor's child status is required: its failure propagates as the
engine's (:class:`~modcoord.actors.errors.CallTimeoutError` when it does not answer).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from modcoord.actors._base import ActorHandle, Statistics
from modcoord.actors.errors import ModcoordError
from modcoord.actors.monitor import adaptive_summaries
from modcoord.actors.plugins import PluginHost
from modcoord.actors.shared.metrics import MetricsRegistry
from modcoord.actors.tuning import AdaptiveSummary, DebounceSummary, ResourceSummary
from modcoord.supervisor.daemon.actor_messages import plain
from modcoord.supervisor.daemon.module_metrics import ModuleMetricsTable
from modcoord.supervisor.protocol.calls import ACTOR_NAMES

__all__ = ["adaptive_status", "gather_statistics", "status_document"]


def adaptive_status(summaries: Iterable[AdaptiveSummary]) -> dict[str, Any]:
    """The ``status`` document's ``adaptive`` field from the actors' typed summaries
    (serialised here, at the edge): ``enabled`` (any adapts), ``parameters`` (each
    configured, effective, reason, pinned), the debouncer's bounded per-module and per-key
    summary as ``debounce`` and the resource awareness as ``resources`` (while active)."""
    parts = tuple(summaries)
    out: dict[str, Any] = {
        "enabled": any(p.enabled for p in parts),
        "parameters": {k: v.as_dict() for p in parts for k, v in p.parameters.items()},
    }
    for part in parts:
        if part.enabled and isinstance(part, DebounceSummary):
            out["debounce"] = part.details()
        elif part.enabled and isinstance(part, ResourceSummary):
            out["resources"] = part.details()
    return out


def gather_statistics(handles: Mapping[str, ActorHandle],
                      timeout: float = 2.0) -> dict[str, Any]:
    """Every actor's statistics object as it is (``None`` for one that did not
    answer within ``timeout`` seconds, all actors sharing the one deadline)."""
    futures = {}
    for name in ACTOR_NAMES:
        with contextlib.suppress(ModcoordError):  # a stopped actor has no statistics
            futures[name] = handles[name].ask_future(Statistics())
    out: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    for name, future in futures.items():
        try:
            out[name] = future.get(timeout=max(0.01, deadline - time.monotonic()))
        except Exception:
            out[name] = None
    return out


def status_document(
    *,
    typed: Mapping[str, Any],
    children: Mapping[str, Mapping[str, Any]],
    metrics: MetricsRegistry,
    started_at: float,
    mode: str,
    strategy: str,
    coordinating: bool,
    modules: int,
    rss_reader: Callable[[], int],
    max_queue: int,
    undeliverable: int,
    plugins: PluginHost,
    module_metrics: ModuleMetricsTable,
    rejected: int | None = None,
) -> dict[str, Any]:
    """The status document from the actors' statistics (``typed``, as
    :func:`gather_statistics` returns them), the supervisor's ``children`` and the
    engine's gauges; ``started_at`` is the ``time.monotonic()`` of the engine's start."""
    stats = {name: plain(s) for name, s in typed.items()}
    histogram = metrics.histogram("coordination")
    coordination = histogram.recent()
    if not coordination.count:  # nothing in the window (or trimmed): since start
        coordination = histogram.total()
    cache = stats.get("cache") or {}
    batcher = stats.get("batcher") or {}
    if rejected is not None and batcher:
        # Admission is decided in the daemon: its gauge counts what was refused, also
        # when the batcher runs in a process of its own.
        batcher = {**batcher, "rejected": rejected}
    memory = stats.get("memory") or {}
    return {
        "pid": os.getpid(),
        "uptime_s": round(time.monotonic() - started_at, 3),
        "mode": mode,
        "strategy": strategy,
        "is_coordinating": coordinating,
        "actors": {
            name: {"alive": c["alive"], "restarts": c["restarts"], "state": c["state"],
                   "process": c.get("process", "daemon"), "pid": c.get("pid"),
                   "rss_bytes": c.get("rss_bytes"), "cpu_seconds": c.get("cpu_seconds")}
            for name, c in children.items()
        },
        "modules": modules,
        "performance_metrics": {
            "coordination_latency_ms": {
                "p50": coordination.p50, "p95": coordination.p95, "p99": coordination.p99,
                "max": coordination.max, "count": coordination.count,
            },
            "memory_usage_bytes": rss_reader(),
            "active_subscriptions": batcher.get("subscribers", 0),
            "cache_hit_rate": cache.get("hit_rate", 0.0),
            "batch_efficiency": batcher.get("efficiency", 0.0),
        },
        "cache_stats": cache,
        "batch_queue": {
            "pending": batcher.get("queue_depth", 0),
            "max_queue": max_queue,
            "rejected": batcher.get("rejected", 0),
        },
        "debouncer": stats.get("debouncer"),
        "batcher": batcher,
        "memory": memory,
        "monitor": stats.get("monitor"),
        "undeliverable": undeliverable,
        "adaptive": adaptive_status(adaptive_summaries(typed)),
        "plugins": plugins.statistics(),
        "module_metrics": {"modules": module_metrics.values(),
                           "statistics": module_metrics.statistics()},
        "last_reload_error": None,
    }
