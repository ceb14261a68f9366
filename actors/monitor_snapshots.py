"""The monitor's snapshots: the peers' statistics it gathers, and its own reports.

Every evaluation starts from :func:`collect_statistics`: a bounded ``ask`` of
``Statistics()`` to each of :data:`PEERS` (all of them together wait at most
:data:`GATHER_TIMEOUT_S`, real time). :func:`build_snapshot` turns what came back into the
plain dict of sections the rules read, and :func:`adaptive_summaries` keeps the typed
adaptive summaries as they are. The monitor's own statistics are
:class:`MonitorStatistics`; its rule state handed to a successor is
:class:`MonitorHandover`. The actor is :mod:`modcoord.actors.monitor`, which re-exports
these.

Nothing here fails an evaluation: a peer that is absent, stopped, crashing or slower than
the timeout is logged at debug level and left out, as is a statistics object of a kind
this module does not know; the rules that need the missing section report not enough
data.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loguru import logger

from modcoord.actors._base import ActorHandle, Statistics
from modcoord.actors.errors import ModcoordError
from modcoord.actors.tuning import AdaptiveSummary

__all__ = [
    "GATHER_TIMEOUT_S",
    "PEERS",
    "MonitorHandover",
    "MonitorStatistics",
    "adaptive_summaries",
    "build_snapshot",
    "collect_statistics",
]

GATHER_TIMEOUT_S = 1.0
"""How long the periodic evaluation waits for the peers' statistics."""
PEERS: tuple[str, ...] = ("cache", "batcher", "memory", "debouncer")
"""Actors whose statistics a periodic evaluation gathers."""


def collect_statistics(handles: Mapping[str, ActorHandle], own_name: str) -> dict[str, Any]:
    """Ask the peers for statistics (bounded): actor name → its ``statistics()``.

    Peers that are absent (or ``own_name``), stopped, crashing or slower than
    :data:`GATHER_TIMEOUT_S` are left out (and logged at debug level).
    """
    log = logger.bind(actor=own_name)
    futures: dict[str, Any] = {}
    for name in PEERS:
        handle = handles.get(name)
        if handle is None or name == own_name:
            continue
        try:
            futures[name] = handle.ask_future(Statistics())
        except ModcoordError as exc:
            log.debug("no statistics from a peer", peer=name, error=str(exc))
    # A real wait, so real time: the injected clock may be a MockClock standing still.
    deadline = time.monotonic() + GATHER_TIMEOUT_S
    stats: dict[str, Any] = {}
    for name, future in futures.items():
        try:
            stats[name] = future.get(timeout=max(0.0, deadline - time.monotonic()))
        except Exception as exc:  # a missing section is reported
            log.debug("no statistics from a peer", peer=name, error=repr(exc))
    return stats


def _plain(obj: Any) -> dict[str, Any] | None:
    """A statistics object as a plain dict, or ``None`` if it is not one."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return dict(obj)
    as_dict = getattr(obj, "as_dict", None)
    if callable(as_dict):
        out = as_dict()
        return dict(out) if isinstance(out, Mapping) else None
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return None


def adaptive_summaries(stats_by_actor: Mapping[str, Any]) -> tuple[AdaptiveSummary, ...]:
    """The typed :class:`AdaptiveSummary` fields of the actors' statistics objects (the
    debouncer's and batcher's ``adaptive``, the memory manager's ``resources``), as they
    are: the rules read them typed."""
    found: list[AdaptiveSummary] = []
    for stats in stats_by_actor.values():
        if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
            found.extend(v for f in dataclasses.fields(stats)
                         if isinstance(v := getattr(stats, f.name), AdaptiveSummary))
    return tuple(found)


def build_snapshot(stats_by_actor: Mapping[str, Any], restarts: Mapping[str, int],
                   max_queue: int | None = None) -> dict[str, Any]:
    """Build the snapshot :class:`Evaluate` takes from the actors' statistics.

    Args:
        stats_by_actor: actor name → its ``statistics()`` (an object with ``as_dict()``, a
            dataclass, or a mapping). Missing actors and objects of another kind are left
            out; the rules that need them report not enough data.
        restarts: actor name → restarts within the window.
        max_queue: ``batch.max_queue``, added to the ``batcher`` section if that section
            exists and does not carry it already.

    Returns:
        ``{"cache": {...}, "batcher": {...}, "memory": {...}, "debouncer": {...},
        "restarts": {...}}`` with only the sections available.
    """
    snapshot: dict[str, Any] = {}
    for name, stats in stats_by_actor.items():
        section = _plain(stats)
        if section is not None:
            snapshot[name] = section
    batcher = snapshot.get("batcher")
    if batcher is not None and batcher.get("max_queue") is None and max_queue is not None:
        batcher["max_queue"] = max_queue
    snapshot["restarts"] = {str(k): int(v) for k, v in restarts.items()}
    return snapshot


@dataclass(frozen=True)
class MonitorStatistics:
    """Snapshot of the monitor.

    Attributes:
        evaluations: evaluations run (periodic and on request).
        insights_fired: ``(rule id, times it became active)``.
        active: ids of the rules active now.
        last_status: ``ok``, ``issues``, ``not_enough_data`` or ``""`` before the first.
        modules_reporting: modules with stored metrics.
        trims: ``Trim`` messages handled.
    """

    evaluations: int
    insights_fired: tuple[tuple[str, int], ...]
    active: tuple[str, ...]
    last_status: str
    modules_reporting: int
    trims: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "evaluations": self.evaluations, "insights_fired": dict(self.insights_fired),
            "active": list(self.active), "last_status": self.last_status,
            "modules_reporting": self.modules_reporting, "trims": self.trims,
        }


@dataclass(frozen=True)
class MonitorHandover:
    """The monitor's rule state, for its successor's :meth:`MonitorActor.restore`.

    Attributes:
        active: ids of the active rules.
        last_logged: ``(rule id, clock time, observed value)`` of each rule's last log.
        fired: ``(rule id, count)``.
        evaluations: evaluations so far.
        restarts: ``(clock time, actor)`` of restarts still within the window.
        module_metrics: ``(module id, metrics)``.
    """

    active: tuple[str, ...]
    last_logged: tuple[tuple[str, float, float], ...]
    fired: tuple[tuple[str, int], ...] = ()
    evaluations: int = 0
    restarts: tuple[tuple[float, str], ...] = ()
    module_metrics: tuple[tuple[str, dict[str, Any]], ...] = ()

