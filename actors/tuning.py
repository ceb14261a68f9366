"""The typed snapshots of what adapts: one parameter, one tuned subject, one actor's summary.

The debouncer and the batcher (their :class:`~modcoord.actors.adaptive.DebounceTuner` and
:class:`~modcoord.actors.adaptive.BatchTuner`) and the memory manager (its
:class:`~modcoord.actors.resources.ResourceGovernor`) each report a summary in their
statistics; the monitor hands the same objects to the insight rules
(:class:`~modcoord.actors.rules.RuleSnapshot`), and ``status`` serialises them with
``as_dict`` at the edge. Nothing between reads a string key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AdaptiveParameter",
    "AdaptiveSubject",
    "AdaptiveSummary",
    "BatchSummary",
    "DebounceSummary",
    "ResourceSummary",
    "frozen_parameter",
]

Value = float | int | str
"""A parameter's value: a number (ms, entries, a factor) or a name (a memory strategy)."""


@dataclass(frozen=True)
class AdaptiveParameter:
    """One parameter: the configured value, the one in force, and why.

    Attributes:
        configured: the value the mode file gives.
        effective: the value in force now.
        reason: why they differ (or why they do not).
        pinned: the config key of the bound holding the value, or ``None``.
    """

    configured: Value
    effective: Value
    reason: str
    pinned: str | None = None

    @property
    def numeric(self) -> tuple[float, float] | None:
        """``(configured, effective)`` as numbers, or ``None`` for a named value."""
        c, e = self.configured, self.effective
        if isinstance(c, str) or isinstance(e, str):
            return None
        return float(c), float(e)

    def as_dict(self) -> dict[str, Any]:
        return {"configured": self.configured, "effective": self.effective,
                "reason": self.reason, "pinned": self.pinned}


def frozen_parameter(configured: Value, why: str) -> AdaptiveParameter:
    """A parameter that is not tuned: effective = configured, and why."""
    return AdaptiveParameter(configured, configured, why)


@dataclass(frozen=True)
class AdaptiveSubject:
    """The debounce delay of one module (``key`` ``None``) or one key of a module.

    Attributes:
        module: the module id.
        key: the key, or ``None`` for the module's own estimate.
        configured: ``debounce.delay_ms``.
        effective: the delay it gets now (the configured one while learning).
        reason: why.
        gaps: publish gaps learnt.
        pinned: the bound key holding it, or ``None``.
    """

    module: str
    key: str | None
    configured: float
    effective: float
    reason: str
    gaps: int
    pinned: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"module": self.module}
        if self.key is not None:
            out["key"] = self.key
        out.update(configured=self.configured, effective=self.effective, reason=self.reason,
                   gaps=self.gaps, pinned=self.pinned)
        return out


@dataclass(frozen=True)
class AdaptiveSummary:
    """What one actor tunes: whether it adapts, and each parameter.

    Attributes:
        enabled: whether the actor adapts (false in MANUAL, with ``adaptive.enabled:
            false``, or with its section disabled).
        parameters: parameter name (its config key) → :class:`AdaptiveParameter`.
    """

    enabled: bool
    parameters: Mapping[str, AdaptiveParameter]

    def details(self) -> dict[str, Any]:
        """The summary's own fields beyond ``enabled`` and ``parameters`` (for
        ``status``)."""
        return {}

    def as_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled,
                "parameters": {k: p.as_dict() for k, p in self.parameters.items()},
                **self.details()}


@dataclass(frozen=True)
class DebounceSummary(AdaptiveSummary):
    """The debouncer's summary: the bounded per-module and per-key view and its counters.

    Attributes:
        modules: the ``adaptive.summary_top_n`` most recently active modules.
        keys: the same for keys.
        tracked_keys / tracked_modules: estimates held now.
        untracked: publishes of keys beyond ``adaptive.debounce.max_keys``.
        forgotten: keys forgotten after ``adaptive.debounce.forget_after_ms`` idle.
        bounds_ms: ``(min, max)`` in force.
    """

    modules: tuple[AdaptiveSubject, ...] = ()
    keys: tuple[AdaptiveSubject, ...] = ()
    tracked_keys: int = 0
    tracked_modules: int = 0
    untracked: int = 0
    forgotten: int = 0
    bounds_ms: tuple[float, float] = (0.0, 0.0)

    def details(self) -> dict[str, Any]:
        if not self.enabled:
            return {}
        return {"modules": [m.as_dict() for m in self.modules],
                "keys": [k.as_dict() for k in self.keys],
                "tracked_keys": self.tracked_keys, "tracked_modules": self.tracked_modules,
                "untracked": self.untracked, "forgotten": self.forgotten,
                "bounds_ms": list(self.bounds_ms)}


@dataclass(frozen=True)
class BatchSummary(AdaptiveSummary):
    """The batcher's summary.

    Attributes:
        arrival_rate_per_s: the decayed arrival rate.
        bounds_ms: ``(min, max)`` window in force.
    """

    arrival_rate_per_s: float = 0.0
    bounds_ms: tuple[float, float] = (0.0, 0.0)

    def details(self) -> dict[str, Any]:
        if not self.enabled:
            return {}
        return {"arrival_rate_per_s": self.arrival_rate_per_s,
                "bounds_ms": list(self.bounds_ms)}


@dataclass(frozen=True)
class ResourceSummary(AdaptiveSummary):
    """The memory manager's resource awareness (``adaptive.resources``).

    ``parameters`` holds ``memory.strategy``, ``cache.max_entries`` and ``delays.widen``
    (the factor debounce delays and batch windows are widened by, configured 1).

    Attributes:
        memory_level: escalation steps taken (0: none, at most 2).
        memory_reason: what the memory pressure is (or was last), "" if none yet.
        widening: whether delays and windows are widened for CPU pressure.
        cpu_reason: what the CPU pressure is (or was last), "" if none yet.
        cpu_fraction: the daemon's CPU use over ``adaptive.resources.cpu_window_ms`` as a
            fraction of the CPUs it may use, or ``None`` before a window is measured.
        available_bytes: the machine's available memory at the last check, or ``None``.
        cache_evicted: cache entries evicted by a pressure cap since start.
        escalations / relaxations: memory steps up and down since start.
    """

    memory_level: int = 0
    memory_reason: str = ""
    widening: bool = False
    cpu_reason: str = ""
    cpu_fraction: float | None = None
    available_bytes: int | None = None
    cache_evicted: int = 0
    escalations: int = 0
    relaxations: int = 0

    @property
    def strategy(self) -> AdaptiveParameter | None:
        """The ``memory.strategy`` parameter (``None`` if not reported)."""
        return self.parameters.get("memory.strategy")

    @property
    def cache_cap(self) -> AdaptiveParameter | None:
        """The ``cache.max_entries`` parameter (``None`` if not reported)."""
        return self.parameters.get("cache.max_entries")

    @property
    def widen(self) -> AdaptiveParameter | None:
        """The ``delays.widen`` parameter (``None`` if not reported)."""
        return self.parameters.get("delays.widen")

    def details(self) -> dict[str, Any]:
        if not self.enabled:
            return {}
        return {"memory_level": self.memory_level, "memory_reason": self.memory_reason,
                "widening": self.widening, "cpu_reason": self.cpu_reason,
                "cpu_fraction": self.cpu_fraction, "available_bytes": self.available_bytes,
                "cache_evicted": self.cache_evicted, "escalations": self.escalations,
                "relaxations": self.relaxations}
