"""The CPU-pressure widening the memory manager sets and the tuners read on their hot path.

The memory manager's :class:`~modcoord.actors.resources.ResourceGovernor` decides it
(``adaptive.resources``); the debouncer's and batcher's tuners multiply their delays and
windows by :attr:`Widening.factor` (within their bounds). One float attribute, replaced
whole: a reader sees the old factor or the new one, never a torn value, so no lock.
It lives in the shared context, so a restarted debouncer or batcher keeps widening.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Widening"]


class Widening:
    """The factor (``1.0``: not widened) and why, set by :meth:`set`."""

    __slots__ = ("factor", "on_change", "reason")

    def __init__(self) -> None:
        self.factor = 1.0
        self.reason = ""
        self.on_change: Callable[[float, str], None] | None = None
        """Told each new factor and reason (actor processes get their copy this way)."""

    def set(self, factor: float, reason: str) -> None:
        """Widen by ``factor`` (clamped to at least 1.0) for ``reason``."""
        changed = reason != self.reason or max(1.0, float(factor)) != self.factor
        self.reason = reason
        self.factor = max(1.0, float(factor))
        if changed and self.on_change is not None:
            self.on_change(self.factor, self.reason)
