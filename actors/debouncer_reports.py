"""The debouncer's snapshots: its statistics (:class:`DebouncerStatistics`) and its
pending work handed to a successor (:class:`DebouncerHandover` of :class:`PendingEntry`).
The actor is :mod:`modcoord.actors.debouncer`, which re-exports these.

These are plain frozen values and check nothing; the successor's ``restore`` judges a
handover (an entry whose priority it does not know is kept, as a ``medium`` update; a
handover of another type is logged as an error and ignored).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from modcoord.actors.tuning import DebounceSummary
from modcoord.actors.update import Update

__all__ = ["DebouncerHandover", "DebouncerStatistics", "PendingEntry"]


@dataclass(frozen=True)
class DebouncerStatistics:
    """Immutable snapshot of the debouncer.

    Attributes:
        received: updates received (every one, including pass-through ones).
        emitted: updates handed to the batcher (due, flushed or passed through).
        collapsed: updates replaced by a later publish for the same key before emission.
        cancelled: pending updates dropped by an explicit :class:`Cancel`.
        pending: keys with an update pending now.
        lateness_p50_ms: median of how late due keys were emitted after their deadline.
        lateness_p99_ms: 99th percentile of the same.
        lateness_max_ms: the largest lateness seen.
        undelivered: updates that could not be handed to the batcher (its handle was
            closed for good); normally zero.
        adaptive: the tuned parameter (``debounce.delay_ms``: configured, effective,
            reason), and, while adapting, the bounded summary of the most recently active
            modules and keys and the counters (:class:`DebounceSummary`).
    """

    received: int
    emitted: int
    collapsed: int
    cancelled: int
    pending: int
    lateness_p50_ms: float
    lateness_p99_ms: float
    lateness_max_ms: float
    undelivered: int = 0
    adaptive: DebounceSummary = dataclasses.field(
        default_factory=lambda: DebounceSummary(enabled=False, parameters={}))

    def as_dict(self) -> dict[str, Any]:
        """Return the snapshot as a plain dict (for status output and metrics)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["adaptive"] = self.adaptive.as_dict()
        return out


@dataclass(frozen=True, slots=True)
class PendingEntry:
    """One pending key, as handed to a successor.

    Attributes:
        update: the update that will be emitted (latest payload, effective priority).
        first_at: clock reading of the key's first pending publish (``max_wait`` origin).
        deadline: when it is due.
    """

    update: Update
    first_at: float
    deadline: float


@dataclass(frozen=True)
class DebouncerHandover:
    """A debouncer's pending work, in emission order (deadline, then arrival)."""

    entries: tuple[PendingEntry, ...]
