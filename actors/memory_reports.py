"""The memory manager's snapshots: what one cleanup did (:class:`CleanupReport`), the
actor's statistics (:class:`MemoryStatistics`) and its handover to a successor
(:class:`MemoryHandover`). The actor is :mod:`modcoord.actors.memory`, which re-exports
these."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modcoord.actors.errors import InvalidMessageError
from modcoord.actors.tuning import ResourceSummary

__all__ = ["CleanupReport", "MemoryHandover", "MemoryStatistics"]


@dataclass(frozen=True)
class CleanupReport:
    """What one cleanup did.

    Attributes:
        reason: ``interval``, ``pressure`` or ``forced``.
        strategy: the ``memory.strategy`` it ran under.
        expired_purged: expired cache entries purged (0 when not waited for).
        modules_swept: modules whose subscriptions were removed.
        cache_shrunk: cache entries removed by ``Shrink``/``Clear`` (0 when unknown).
        rss_before: resident memory before, bytes (``None`` if it could not be read).
        rss_after: resident memory after, bytes (``None`` if it could not be read).
        gc_collected: objects ``gc.collect()`` found, or ``None`` if it did not run.
        actions: what was done, in order (``purge``, ``sweep``, ``shrink``, ``clear``,
            ``trim``, ``gc``).
        swept: the ids of the modules swept.
    """

    reason: str
    strategy: str
    expired_purged: int
    modules_swept: int
    cache_shrunk: int
    rss_before: int | None
    rss_after: int | None
    gc_collected: int | None
    actions: tuple[str, ...]
    swept: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason, "strategy": self.strategy,
            "expired_purged": self.expired_purged, "modules_swept": self.modules_swept,
            "cache_shrunk": self.cache_shrunk, "rss_before": self.rss_before,
            "rss_after": self.rss_after, "gc_collected": self.gc_collected,
            "actions": list(self.actions), "swept": list(self.swept),
        }


@dataclass(frozen=True)
class MemoryStatistics:
    """Snapshot of the memory manager.

    Attributes:
        rss_bytes: the latest resident-memory reading (0 if none could be made).
        max_rss_bytes: the limit, ``memory.max_rss_mb`` in bytes.
        cleanups: ``(reason, count)`` for each reason in :data:`CLEANUP_REASONS`.
        modules_tracked: registered modules.
        modules_inactive: registered modules inactive longer than ``inactive_after_ms``.
        modules_swept: registered modules whose subscriptions are currently removed.
        pressure_armed: whether a pressure cleanup would fire above the limit.
        strategy: the strategy in force (``memory.strategy``, or past it under memory
            pressure: see ``resources``).
        sweeps_total: modules swept since start (a module may count more than once).
        reactivations_total: swept modules subscribed again since start.
        resources: resource awareness (``adaptive.resources``): the strategy, cache cap
            and widening in force, each with the configured value and why.
    """

    rss_bytes: int
    max_rss_bytes: int
    cleanups: tuple[tuple[str, int], ...]
    modules_tracked: int
    modules_inactive: int
    modules_swept: int
    pressure_armed: bool
    strategy: str
    sweeps_total: int = 0
    reactivations_total: int = 0
    resources: ResourceSummary = field(
        default_factory=lambda: ResourceSummary(enabled=False, parameters={}))

    def cleanup_count(self, reason: str) -> int:
        """Return how many cleanups ran for ``reason`` (0 for an unknown reason)."""
        return dict(self.cleanups).get(reason, 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rss_bytes": self.rss_bytes, "max_rss_bytes": self.max_rss_bytes,
            "cleanups": dict(self.cleanups), "modules_tracked": self.modules_tracked,
            "modules_inactive": self.modules_inactive, "modules_swept": self.modules_swept,
            "pressure_armed": self.pressure_armed, "strategy": self.strategy,
            "sweeps_total": self.sweeps_total,
            "reactivations_total": self.reactivations_total,
            "resources": self.resources.as_dict(),
        }


@dataclass(frozen=True)
class MemoryHandover:
    """A memory manager's state, for its successor's :meth:`MemoryManagerActor.restore`.

    Attributes:
        modules: ``(module_id, sources)`` of every tracked module.
        swept: tracked modules whose subscriptions are removed.
        pressure_armed: the hysteresis state.
        cleanups: ``(reason, count)`` so far.
        sweeps_total: see :class:`MemoryStatistics`.
        reactivations_total: see :class:`MemoryStatistics`.
        pressure_level: the memory escalation level (``adaptive.resources``).
    """

    modules: tuple[tuple[str, tuple[str, ...]], ...]
    swept: tuple[str, ...]
    pressure_armed: bool
    cleanups: tuple[tuple[str, int], ...] = ()
    sweeps_total: int = 0
    reactivations_total: int = 0
    pressure_level: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "modules": [[m, list(s)] for m, s in self.modules], "swept": list(self.swept),
            "pressure_armed": self.pressure_armed, "cleanups": dict(self.cleanups),
            "sweeps_total": self.sweeps_total,
            "reactivations_total": self.reactivations_total,
            "pressure_level": self.pressure_level,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MemoryHandover:
        """Rebuild from :meth:`as_dict` output.

        Raises:
            InvalidMessageError: if the data does not have that shape.
        """
        try:
            cleanups = data.get("cleanups", {})
            return cls(
                modules=tuple((str(m), tuple(str(s) for s in src)) for m, src in
                              data.get("modules", ())),
                swept=tuple(str(m) for m in data.get("swept", ())),
                pressure_armed=bool(data.get("pressure_armed", True)),
                cleanups=tuple((str(k), int(v)) for k, v in dict(cleanups).items()),
                sweeps_total=int(data.get("sweeps_total", 0)),
                reactivations_total=int(data.get("reactivations_total", 0)),
                pressure_level=int(data.get("pressure_level", 0)),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise InvalidMessageError(f"memory: malformed handover: {exc}") from exc
