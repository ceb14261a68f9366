"""Demand for coordination results: reads per context and mode, and the background
computations (refresh-ahead, pre-warming) made from them.

The request path (:meth:`ModuleCoordinator.coordinate
<modcoord.supervisor.daemon.coordinator.ModuleCoordinator.coordinate>`) reports every
cache lookup here with :meth:`Demand.read`; the cache actor (:mod:`modcoord.actors.cache`)
asks which entries are worth recomputing before they expire (:meth:`Demand.due`) and which
contexts a mode reads most (:meth:`Demand.top`), and counts its background computations
here. Like the store, a :class:`Demand` belongs to the shared context, so a restart of the
cache actor loses neither the reads nor the counters.

Per cache key (``mode:context``) three numbers are kept:

- ``reads``: every lookup, hit or miss, for as long as the key is tracked (pre-warming
  ranks by it; halved when the mode's keys are thinned, see below);
- ``hits``: lookups answered without computing, for as long as the key is tracked — a
  context read again and again is hot even if each of its entries expired after one hit
  (its misses are what refresh-ahead is for);
- ``since_compute``: hits since the entry was last computed (a refresh needs one: no
  entry no one reads is refreshed).

At most ``track_max`` keys are tracked per mode: a new key beyond it first forgets the
least read half of that mode's keys and halves the others' reads (older reads count less).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from modcoord.actors.shared.cache_store import LookupKind

__all__ = ["Demand", "DemandCounters"]


class _Reads:
    __slots__ = ("failed", "hits", "reads", "since_compute")

    def __init__(self) -> None:
        self.reads = 0
        self.hits = 0
        self.since_compute = 0
        self.failed = False  # a refresh of this entry failed: not retried until recomputed


@dataclass(frozen=True)
class DemandCounters:
    """The background computations so far (a snapshot).

    Attributes:
        refreshes: entries recomputed before they expired (the new value stored).
        refresh_failures: refreshes that ended with a module error or timeout (the old
            entry stayed until it expired; logged).
        refresh_skipped_budget: times an entry due for a refresh was passed over because
            ``max_in_flight`` computations were running (tried again at the next check
            while the entry lives; logged when it starts and when it stops).
        prewarmed: contexts computed on a mode switch before a request asked.
        prewarm_failures: pre-warm computations that ended with an error (nothing stored).
        background_inflight: refreshes and pre-warms running now.
        tracked_contexts: keys whose reads are counted now (all modes).
    """

    refreshes: int = 0
    refresh_failures: int = 0
    refresh_skipped_budget: int = 0
    prewarmed: int = 0
    prewarm_failures: int = 0
    background_inflight: int = 0
    tracked_contexts: int = 0


class Demand:
    """Thread-safe reads per key and mode, and the background computation counters.

    Args:
        track_max: keys tracked at most per mode (``cache.prewarm.track_max_contexts``).
    """

    def __init__(self, track_max: int = 1000) -> None:
        self._lock = threading.Lock()
        self._modes: dict[str, dict[str, _Reads]] = {}
        self.track_max = track_max
        self._refreshes = 0
        self._refresh_failures = 0
        self._skipped = 0
        self._prewarmed = 0
        self._prewarm_failures = 0
        self._inflight = 0

    # -- the request path --

    def read(self, mode: str, key: str, kind: LookupKind) -> None:
        """Count one lookup of ``key`` (of ``mode``) that ended as ``kind``.

        A HIT or a WAIT (joined a flight) is a hit; a LEAD means a request computes the
        entry anew, so nothing has read it since (and a failed refresh may be retried).
        """
        with self._lock:
            keys = self._modes.get(mode)
            if keys is None:
                keys = self._modes[mode] = {}
            r = keys.get(key)
            if r is None:
                if len(keys) >= self.track_max:
                    self._forget(keys)
                r = keys[key] = _Reads()
            r.reads += 1
            if kind is LookupKind.LEAD:
                r.since_compute = 0
                r.failed = False
            else:
                r.hits += 1
                r.since_compute += 1

    def _forget(self, keys: dict[str, _Reads]) -> None:
        """Drop the least read half of ``keys`` (at least one) and halve the rest's reads."""
        ranked = sorted(keys.items(), key=lambda kv: kv[1].reads)
        for k, _ in ranked[:max(1, len(ranked) // 2)]:
            del keys[k]
        for r in keys.values():
            r.reads = (r.reads + 1) // 2

    # -- the cache actor --

    def due(self, min_hits: int) -> list[str]:
        """Keys worth a refresh, most hit since their last computation first: hit at least
        ``min_hits`` times, and at least once since the entry was computed, and no refresh
        of the entry failed. (Whether the entry is about to expire is the store's.)"""
        with self._lock:
            found = [(r.since_compute, k) for keys in self._modes.values()
                     for k, r in keys.items()
                     if r.since_compute > 0 and r.hits >= min_hits and not r.failed]
        found.sort(reverse=True)
        return [k for _, k in found]

    def top(self, mode: str, n: int) -> list[str]:
        """The ``n`` keys of ``mode`` read most, most read first."""
        with self._lock:
            keys = self._modes.get(mode) or {}
            ranked = sorted(keys.items(), key=lambda kv: kv[1].reads, reverse=True)
        return [k for k, _ in ranked[:n]]

    def _entry(self, key: str) -> _Reads | None:
        return self._modes.get(key.partition(":")[0], {}).get(key)

    def begin(self) -> None:
        """A background computation starts (counted in ``background_inflight``)."""
        with self._lock:
            self._inflight += 1

    def inflight(self) -> int:
        """Background computations running now."""
        return self._inflight

    def refreshed(self, key: str, ok: bool) -> None:
        """A refresh of ``key`` ended: stored (``ok``) or failed (not retried until a
        request computes the entry again)."""
        with self._lock:
            self._inflight -= 1
            r = self._entry(key)
            if r is not None:
                r.since_compute = 0
                r.failed = not ok
            if ok:
                self._refreshes += 1
            else:
                self._refresh_failures += 1

    def prewarm_ended(self, key: str, ok: bool) -> None:
        """A pre-warm of ``key`` ended: stored (``ok``) or failed."""
        with self._lock:
            self._inflight -= 1
            r = self._entry(key)
            if r is not None and ok:
                r.since_compute = 0
                r.failed = False
            if ok:
                self._prewarmed += 1
            else:
                self._prewarm_failures += 1

    def skipped_budget(self, n: int) -> None:
        """``n`` due refreshes were passed over for want of budget."""
        with self._lock:
            self._skipped += n

    def counters(self) -> DemandCounters:
        """A snapshot of the counters (see :class:`DemandCounters`)."""
        with self._lock:
            return DemandCounters(
                refreshes=self._refreshes,
                refresh_failures=self._refresh_failures,
                refresh_skipped_budget=self._skipped,
                prewarmed=self._prewarmed,
                prewarm_failures=self._prewarm_failures,
                background_inflight=self._inflight,
                tracked_contexts=sum(len(k) for k in self._modes.values()),
            )

    def reads_of(self, key: str) -> dict[str, Any] | None:
        """The counts kept for ``key`` (for tests and diagnostics), or ``None``."""
        with self._lock:
            r = self._entry(key)
            return None if r is None else {
                "reads": r.reads, "hits": r.hits,
                "since_compute": r.since_compute, "failed": r.failed}
