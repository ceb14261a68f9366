"""When each module was last active, and which modules have been swept (thread-safe).

The façade touches the table on every publish, coordinate or call, in the I/O thread,
without a message hop; the memory actor (:mod:`modcoord.actors.memory`) sweeps it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from modcoord.actors.clock import Clock

__all__ = ["ActivityStatistics", "ActivityTable"]


@dataclass(frozen=True)
class ActivityStatistics:
    """Snapshot of an :class:`ActivityTable`.

    Attributes:
        modules: modules with a recorded activity.
        swept: modules currently marked swept.
        sweeps: times a module was marked swept, since creation.
        reactivations: times :meth:`ActivityTable.touch` reported a swept module.
    """

    modules: int
    swept: int
    sweeps: int
    reactivations: int

    def as_dict(self) -> dict[str, int]:
        return {
            "modules": self.modules, "swept": self.swept, "sweeps": self.sweeps,
            "reactivations": self.reactivations,
        }


class ActivityTable:
    """When each module was last active, and which modules have been swept.

    Thread-safe. :meth:`touch` is the hot path (any thread); the memory actor does the
    rest. Marking swept and touching are ordered so that a module touched while it is
    being swept is either not swept, or reported by that touch as needing reactivation:
    it never stays swept while active.

    Args:
        clock: where activity times are read.
    """

    def __init__(self, clock: Clock) -> None:
        self._now = clock.monotonic
        self._last: dict[str, float] = {}
        self._swept: set[str] = set()
        self._lock = threading.Lock()
        self._sweeps = 0
        self._reactivations = 0

    def touch(self, module_id: str) -> bool:
        """Record activity of ``module_id`` now.

        Returns:
            ``True`` if the module had been swept (it is unmarked now, and only this call
            returns ``True`` for that sweep): the caller should tell the memory actor
            ``Reactivate(module_id)``. ``False`` otherwise (the common case).
        """
        self._last[module_id] = self._now()
        if module_id not in self._swept:
            return False
        with self._lock:
            if module_id in self._swept:
                self._swept.discard(module_id)
                self._reactivations += 1
                return True
        return False

    def last_seen(self, module_id: str) -> float | None:
        """Return the clock time of the module's last activity, or ``None`` if unknown."""
        return self._last.get(module_id)

    def inactive_since(self, cutoff: float, include_swept: bool = False) -> list[str]:
        """Return the modules last active before ``cutoff``, sorted.

        Args:
            cutoff: a clock time.
            include_swept: also list modules already marked swept.
        """
        last = self._last.copy()
        with self._lock:
            swept = set(self._swept)
        return sorted(
            m for m, t in last.items() if t < cutoff and (include_swept or m not in swept)
        )

    def mark_swept(self, module_id: str, cutoff: float | None = None) -> bool:
        """Mark ``module_id`` swept.

        Args:
            module_id: the module.
            cutoff: if given, mark only if the module is known and was last active before
                ``cutoff`` (checked again after marking, against a concurrent touch).
                ``None`` marks unconditionally (used when restoring a handover).

        Returns:
            ``True`` if the module is newly marked; ``False`` if it was already swept,
            is unknown or has been active since ``cutoff``.
        """
        with self._lock:
            if module_id in self._swept:
                return False
            if cutoff is not None:
                last = self._last.get(module_id)
                if last is None or last >= cutoff:
                    return False
            self._swept.add(module_id)
            if cutoff is not None and self._last.get(module_id, cutoff) >= cutoff:
                self._swept.discard(module_id)  # a touch raced us: it is active
                return False
            self._sweeps += 1
            return True

    def unmark_swept(self, module_id: str) -> bool:
        """Clear the swept mark. Returns ``True`` if the module was marked."""
        with self._lock:
            if module_id in self._swept:
                self._swept.discard(module_id)
                return True
            return False

    def is_swept(self, module_id: str) -> bool:
        """Return whether the module is currently marked swept."""
        return module_id in self._swept

    def swept(self) -> frozenset[str]:
        """Return the modules currently marked swept."""
        with self._lock:
            return frozenset(self._swept)

    def forget(self, module_id: str) -> None:
        """Drop everything known about ``module_id`` (it unregistered). Idempotent."""
        with self._lock:
            self._last.pop(module_id, None)
            self._swept.discard(module_id)

    def statistics(self) -> ActivityStatistics:
        """Return an immutable snapshot of the table's counts."""
        with self._lock:
            return ActivityStatistics(
                modules=len(self._last), swept=len(self._swept), sweeps=self._sweeps,
                reactivations=self._reactivations,
            )
