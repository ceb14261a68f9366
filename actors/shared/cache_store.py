"""The coordination result store: a thread-safe LRU with a TTL and single flight.

Its parts have their own modules, re-exported here: canonical keys
(:mod:`~modcoord.actors.shared.cache_keys`), the flight a computation is
(:mod:`~modcoord.actors.shared.cache_flight`) and the eviction and lifetime policy
(:mod:`~modcoord.actors.shared.cache_policy`).

The hot path does not hop through an actor: the façade's I/O thread calls
:meth:`CacheStore.lookup` directly and, on a miss, leads the computation and calls
:meth:`CacheStore.complete` (or :meth:`CacheStore.fail`). The cache actor
(:mod:`modcoord.actors.cache`) owns the store's maintenance. The store belongs to the
shared context (:class:`~modcoord.actors.shared.Shared`) and outlives the actor, so a
restart loses nothing.

Counting rules (see :class:`CacheStatistics`):

- a fresh entry answers the lookup: a **hit**;
- a lookup that joins a computation already in flight for its key (single flight): also a
  **hit** — it is answered without redoing the work — and counted again in ``joined``;
- anything else (absent, expired, or the cache disabled): a **miss**, and the caller leads.

Which entries go when the cache is full, and how long an entry lives, is the store's
:class:`CachePolicy` (``plugins.cache_policy``): the built-in :class:`LruPolicy` (``lru``)
evicts the expired entries first, else the least recently used ``evict_fraction``; a plugin
policy (entry-point group ``modcoord.cache_policies``) may choose otherwise. The hit path
never calls the policy.

Evictions are counted by cause: ``expired`` (TTL passed, found on lookup, on insertion
into a full cache, or by :meth:`CacheStore.purge_expired`), ``size`` (the cache was full,
or ``max_entries`` shrank) and ``explicit`` (:meth:`~CacheStore.invalidate`,
:meth:`~CacheStore.clear`, :meth:`~CacheStore.shrink`, or disabling the cache).

On failure: a leader that fails ends its flight with :meth:`CacheStore.fail` (nothing is
stored, the waiters get the error or the uncacheable value); a leader that never ends it
leaves its waiters to their own timeouts. Bad arguments (a shrink fraction outside
``[0, 1]``) raise :class:`~modcoord.actors.errors.InvalidMessageError` and change nothing.
"""

from __future__ import annotations

import enum
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from modcoord.actors.clock import Clock
from modcoord.actors.errors import InvalidMessageError
from modcoord.actors.payload import encode_value, payload_value
from modcoord.actors.settings import CacheSettings
from modcoord.actors.shared.cache_flight import Flight, Waiter
from modcoord.actors.shared.cache_keys import cache_key, split_key
from modcoord.actors.shared.cache_policy import LRU, CachePolicy, LruPolicy

__all__ = [
    "LRU",
    "CachePolicy",
    "CacheStatistics",
    "CacheStore",
    "Flight",
    "Lookup",
    "LookupKind",
    "LruPolicy",
    "Waiter",
    "cache_key",
    "split_key",
]


class LookupKind(str, enum.Enum):
    """What a :meth:`CacheStore.lookup` tells its caller to do.

    A ``str`` enum: ``LookupKind.HIT == "hit"``, so callers may compare with plain strings.
    """

    HIT = "hit"
    """The value is in :attr:`Lookup.value`."""
    LEAD = "lead"
    """Compute, then call ``complete(key, value)`` or ``fail(key, error)``."""
    WAIT = "wait"
    """Someone else computes: wait on :attr:`Lookup.flight`."""


@dataclass(frozen=True, slots=True)
class Lookup:
    """The answer of :meth:`CacheStore.lookup`.

    Attributes:
        kind: HIT, LEAD or WAIT.
        value: the cached value (HIT only).
        flight: the computation in flight (WAIT; and LEAD when the cache is enabled, so
            the leader can see who joined); ``None`` otherwise.
    """

    kind: LookupKind
    value: Any = None
    flight: Flight | None = None

    @property
    def hit(self) -> bool:
        return self.kind is LookupKind.HIT

    @property
    def lead(self) -> bool:
        return self.kind is LookupKind.LEAD

    @property
    def wait(self) -> bool:
        return self.kind is LookupKind.WAIT


_LEAD_UNCACHED = Lookup(LookupKind.LEAD)



# -- the store -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheStatistics:
    """A snapshot of the cache.

    Attributes:
        hits: lookups answered without computing (fresh entries, plus joined flights).
        misses: lookups whose caller had to compute (absent, expired, or cache disabled).
        hit_rate: ``hits / (hits + misses)``, 0.0 before any lookup.
        evictions_expired / evictions_size / evictions_explicit: entries removed, by cause.
        size: entries held now; max_size: ``cache.max_entries``, or the memory-pressure cap
            when lower (``adaptive.resources``).
        inflight: computations in flight now.
        joined: of the hits, lookups that joined a flight instead of finding an entry.
        enabled: ``cache.enabled``.
    """

    hits: int
    misses: int
    hit_rate: float
    evictions_expired: int
    evictions_size: int
    evictions_explicit: int
    size: int
    max_size: int
    inflight: int
    joined: int = 0
    enabled: bool = True

    def as_dict(self) -> dict[str, Any]:
        """Return the fields as a dict, plus ``evictions`` by cause as a nested dict."""
        out = asdict(self)
        out["evictions"] = {
            "expired": self.evictions_expired,
            "size": self.evictions_size,
            "explicit": self.evictions_explicit,
        }
        return out


class CacheStore:
    """A thread-safe LRU cache with a TTL and single flight, guarded by one lock.

    Args:
        clock: where expiry reads time.
        settings: ``cache:`` settings (enabled, ttl_ms, max_entries, evict_fraction).

    Entries are kept in an ``OrderedDict`` ``key -> (blob, expires_at)``, least recently
    used first; a hit moves its entry to the end. The blob is the value's msgpack encoding
    (:func:`~modcoord.actors.payload.encode_value`: one ``bytes`` object per entry, whose
    memory goes back to the system when the entry goes, where a tree of small objects would
    stay in the interpreter's arenas); each hit decodes it, outside the lock, into a value
    of its own (a value msgpack cannot encode is kept as the object it is). An entry is expired once
    ``clock.monotonic() >= expires_at``. Changing ``ttl_ms`` affects entries stored after
    the change. If a leader never calls :meth:`complete` or :meth:`fail`, its waiters are
    never woken: waiters should bound their waits (``Flight.wait(timeout)``).
    """

    def __init__(self, clock: Clock, settings: CacheSettings | None = None) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[Any, float]] = OrderedDict()
        self._flights: dict[str, Flight] = {}
        self._hits = 0
        self._misses = 0
        self._joined = 0
        self._ev_expired = 0
        self._ev_size = 0
        self._ev_explicit = 0
        self._cap: int | None = None
        self._policy: CachePolicy = LRU
        self._apply(settings if settings is not None else CacheSettings())

    @property
    def policy(self) -> CachePolicy:
        """The eviction and lifetime policy in force (:data:`LRU` unless set)."""
        return self._policy

    def set_policy(self, policy: CachePolicy | None) -> None:
        """Use ``policy`` from now on (``None``: the built-in :data:`LRU`). Entries stored
        already keep their expiry."""
        with self._lock:
            self._policy = policy if policy is not None else LRU

    def _apply(self, settings: CacheSettings) -> None:
        self._settings = settings
        self._enabled = settings.enabled
        self._ttl_s = settings.ttl_ms / 1000.0
        cap = self._cap
        self._max = settings.max_entries if cap is None else min(settings.max_entries, cap)
        self._evict_n = max(1, math.ceil(settings.evict_fraction * self._max))

    def cap(self, limit: int | None) -> int:
        """Cap the effective ``max_entries`` at ``limit`` (``None``: the configured one),
        for memory pressure; the cap outlives :meth:`reconfigure`. Entries beyond it are
        evicted least recently used first (counted as ``size``); returns how many."""
        with self._lock:
            self._cap = None if limit is None else max(1, int(limit))
            self._apply(self._settings)
            n = max(0, len(self._entries) - self._max)
            for _ in range(n):
                self._entries.popitem(last=False)
            self._ev_size += n
            return n

    @property
    def cap_limit(self) -> int | None:
        """The pressure cap in force (see :meth:`cap`), or ``None``."""
        return self._cap

    @property
    def settings(self) -> CacheSettings:
        """The settings in force."""
        return self._settings

    def __len__(self) -> int:
        return len(self._entries)

    # -- hot path --

    def lookup(self, key: str) -> Lookup:
        """Look ``key`` up; see :class:`LookupKind` for what the caller must do.

        A LEAD caller must end the flight with :meth:`complete` or :meth:`fail` — in a
        ``try``/``except`` — or its waiters wait until their own timeout.
        """
        now = self._clock.monotonic()
        with self._lock:
            if not self._enabled:
                self._misses += 1
                return _LEAD_UNCACHED
            entry = self._entries.get(key)
            if entry is not None and now < entry[1]:
                self._entries.move_to_end(key)
                self._hits += 1
                blob = entry[0]
            else:
                if entry is not None:
                    del self._entries[key]
                    self._ev_expired += 1
                flight = self._flights.get(key)
                if flight is not None:
                    self._hits += 1
                    self._joined += 1
                    return Lookup(LookupKind.WAIT, None, flight)
                flight = self._flights[key] = Flight(key)
                self._misses += 1
                return Lookup(LookupKind.LEAD, None, flight)
        return Lookup(LookupKind.HIT, payload_value(blob))  # decoded outside the lock

    def complete(self, key: str, value: Any) -> None:
        """End the flight for ``key`` with ``value``: store it and wake the waiters.

        Nothing is stored when the cache is disabled, or when the key was invalidated or
        the cache cleared while the value was being computed (the waiters still get it).
        """
        ttl = self._ttl(key, value)
        blob = encode_value(value)
        now = self._clock.monotonic()
        with self._lock:
            flight = self._flights.pop(key, None)
            if self._enabled and (flight is None or flight.storable):
                self._store(key, blob, now, ttl)
        if flight is not None:
            flight.settle(value, None)

    def fail(self, key: str, error: BaseException | None, value: Any = None) -> None:
        """End the flight for ``key`` without storing anything, and wake the waiters.

        The waiters get ``(value, error)``: ``Flight.wait`` raises ``error`` if there is
        one. With ``error=None`` the waiters get ``value`` as a result that must not be
        cached (for example one holding per-module errors); the next lookup leads again.
        """
        with self._lock:
            flight = self._flights.pop(key, None)
        if flight is not None:
            flight.settle(value, error)

    def get(self, key: str) -> Any:
        """Return the fresh value for ``key``, or ``None`` (counted as hit or miss).

        Unlike :meth:`lookup` this never starts or joins a flight.
        """
        now = self._clock.monotonic()
        with self._lock:
            if not self._enabled:
                self._misses += 1
                return None
            entry = self._entries.get(key)
            if entry is not None and now < entry[1]:
                self._entries.move_to_end(key)
                self._hits += 1
                blob = entry[0]
            else:
                if entry is not None:
                    del self._entries[key]
                    self._ev_expired += 1
                self._misses += 1
                return None
        return payload_value(blob)

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key`` (not when disabled); flights are not touched."""
        ttl = self._ttl(key, value)
        blob = encode_value(value)
        now = self._clock.monotonic()
        with self._lock:
            if self._enabled:
                self._store(key, blob, now, ttl)

    def _ttl(self, key: str, value: Any) -> float:
        """The policy's lifetime for a new entry (outside the lock), or ``cache.ttl_ms``."""
        policy, default = self._policy, self._ttl_s
        if policy is LRU:
            return default
        ttl = policy.ttl_s(key, value, default)
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not (
                0 < ttl < math.inf):
            return default
        return float(ttl)

    # -- background computations (refresh-ahead and pre-warming, the cache actor's) --

    def remaining(self, key: str) -> float | None:
        """Seconds until the entry for ``key`` expires, or ``None`` if there is no fresh
        entry. Counts nothing and does not touch the LRU order."""
        now = self._clock.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            return entry[1] - now if entry is not None and now < entry[1] else None

    def begin_background(self, key: str) -> Flight | None:
        """Start a flight for ``key`` that no request leads (a refresh or a pre-warm),
        counting neither a hit nor a miss; a fresh entry stays and keeps answering.

        Returns ``None`` (nothing started) if the cache is disabled or a flight for ``key``
        is already in progress. Otherwise the caller must end the flight with
        :meth:`complete` (the new value replaces the entry, with a full TTL) or
        :meth:`fail` (the old entry, if any, stays until it expires); requests that find
        no fresh entry meanwhile join the flight instead of computing again.
        """
        with self._lock:
            if not self._enabled or key in self._flights:
                return None
            flight = self._flights[key] = Flight(key)
            return flight

    def _store(self, key: str, value: Any, now: float, ttl_s: float) -> None:
        entries = self._entries
        if key in entries:
            entries.move_to_end(key)
        elif len(entries) >= self._max:
            self._evict_locked(now)
        entries[key] = (value, now + ttl_s)

    def _evict_locked(self, now: float) -> None:
        """Make room in a full cache: the policy's victims (the built-in's if it names
        none that exist), counted as ``expired`` or ``size``."""
        entries = self._entries
        n = min(self._evict_n, len(entries))
        removed = self._remove_locked(self._policy.victims(entries, n, now), now)
        if not removed and self._policy is not LRU:
            self._remove_locked(LRU.victims(entries, n, now), now)

    def _remove_locked(self, keys: Iterable[str], now: float) -> int:
        entries = self._entries
        removed = 0
        for k in keys:
            entry = entries.pop(k, None) if type(k) is str else None
            if entry is None:
                continue
            removed += 1
            if entry[1] <= now:
                self._ev_expired += 1
            else:
                self._ev_size += 1
        return removed

    def _purge_locked(self, now: float) -> int:
        expired = [k for k, (_, expires_at) in self._entries.items() if expires_at <= now]
        for k in expired:
            del self._entries[k]
        self._ev_expired += len(expired)
        return len(expired)

    # -- maintenance (the actor's) --

    def purge_expired(self) -> int:
        """Remove every expired entry; return how many (counted as ``expired``)."""
        now = self._clock.monotonic()
        with self._lock:
            return self._purge_locked(now)

    def shrink(self, fraction: float) -> int:
        """Evict ``ceil(fraction * size)`` entries, least recently used first.

        Counted as ``explicit``. Returns how many were evicted.

        Raises:
            InvalidMessageError: if ``fraction`` is not a number in ``[0, 1]``.
        """
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not (
            0.0 <= fraction <= 1.0
        ):
            raise InvalidMessageError(f"shrink fraction must be in [0, 1], not {fraction!r}")
        with self._lock:
            n = min(len(self._entries), math.ceil(fraction * len(self._entries)))
            for _ in range(n):
                self._entries.popitem(last=False)
            self._ev_explicit += n
            return n

    def clear(self) -> int:
        """Remove every entry (counted as ``explicit``); return how many.

        Values being computed now will not be stored (their waiters still get them).
        """
        with self._lock:
            n = len(self._entries)
            self._entries.clear()
            self._ev_explicit += n
            for flight in self._flights.values():
                flight.storable = False
            return n

    def invalidate(self, key: str) -> bool:
        """Remove ``key`` (counted as ``explicit``); return whether it was present.

        A value being computed for ``key`` now will not be stored.
        """
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None:
                flight.storable = False
            if self._entries.pop(key, None) is None:
                return False
            self._ev_explicit += 1
            return True

    def reconfigure(self, settings: CacheSettings) -> None:
        """Apply new settings live.

        Disabling clears the cache (``explicit``); a smaller ``max_entries`` evicts the
        least recently used entries down to it (``size``). Flights in progress still
        complete and wake their waiters.
        """
        with self._lock:
            self._apply(settings)
            if not settings.enabled:
                n = len(self._entries)
                self._entries.clear()
                self._ev_explicit += n
            elif len(self._entries) > self._max:
                n = len(self._entries) - self._max
                for _ in range(n):
                    self._entries.popitem(last=False)
                self._ev_size += n

    def statistics(self) -> CacheStatistics:
        """Return an immutable snapshot (see :class:`CacheStatistics`)."""
        with self._lock:
            total = self._hits + self._misses
            return CacheStatistics(
                hits=self._hits,
                misses=self._misses,
                hit_rate=self._hits / total if total else 0.0,
                evictions_expired=self._ev_expired,
                evictions_size=self._ev_size,
                evictions_explicit=self._ev_explicit,
                size=len(self._entries),
                max_size=self._max,
                inflight=len(self._flights),
                joined=self._joined,
                enabled=self._enabled,
            )
