"""The cache actor: maintenance of the shared coordination result store, and predictive
caching (refresh-ahead and pre-warming).

The store itself (:class:`~modcoord.actors.shared.cache_store.CacheStore`: canonical keys,
LRU with TTL, single flight) is a shared hot-path object: the façade reads it in its own
thread. This actor purges, shrinks, clears and reconfigures it, and answers cross-process
``Get``/``Put`` calls.

Predictive caching works off the request path, from the reads the façade counts in the
shared :class:`~modcoord.actors.shared.demand.Demand`:

- **refresh-ahead** (``cache.refresh_ahead``): every quarter of the lead (``before_ms``,
  cut to half the TTL; :data:`CHECKS_PER_LEAD`) a check starts, hottest first, a
  recomputation of each entry that is hot (its context hit ``min_hits`` times, and the
  entry hit since it was computed) and expires within the lead,
  while fewer than ``max_in_flight`` background computations run; the others are counted
  (``refresh_skipped_budget``) and tried again at the next check;
- **pre-warming** (``cache.prewarm``): on a switch to a mode (:class:`Prewarm`), that
  mode's ``max_entries`` most read contexts without a fresh entry are computed, within the
  same budget (queued, started as earlier ones end).

A background computation is the shared ``compute`` hook — exactly what a miss computes —
behind a store flight (:meth:`~modcoord.actors.shared.cache_store.CacheStore.begin_background`):
a request arriving meanwhile is answered by the old entry or joins the flight, never
computes again. A result with a module error is not stored: the old entry stays until it
expires, and the failure is counted and logged.
"""

from __future__ import annotations

import contextlib
import functools
from collections import deque
from dataclasses import dataclass, fields
from typing import Any

import pykka
from loguru import logger

from modcoord.actors._base import ActorContext, ManagedActor, handles
from modcoord.actors.clock import TimerHandle
from modcoord.actors.errors import InvalidMessageError, ModcoordError
from modcoord.actors.message import Message
from modcoord.actors.settings import CacheSettings
from modcoord.actors.shared.cache_store import CacheStatistics, CacheStore, split_key
from modcoord.actors.shared.demand import Demand

__all__ = [
    "CHECKS_PER_LEAD",
    "MAX_LEAD_FRACTION",
    "MIN_REFRESH_CHECK_S",
    "CacheActor",
    "CacheActorStatistics",
    "Clear",
    "Get",
    "Invalidate",
    "Prewarm",
    "Purge",
    "Put",
    "Shrink",
]

#: The refresh check runs at most this often (seconds), however short the lead.
MIN_REFRESH_CHECK_S = 0.005
#: The lead (``cache.refresh_ahead.before_ms``) is cut to this fraction of the TTL.
MAX_LEAD_FRACTION = 0.5
#: The refresh check runs this many times per lead: an entry is caught early in its lead,
#: with at least ``(1 - 1 / CHECKS_PER_LEAD)`` of the lead left for its computation.
CHECKS_PER_LEAD = 4
#: Error text kept in a refresh-failure log record, per module.
_MAX_LOGGED_ERROR_CHARS = 200


# -- messages ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Get(Message):
    """Return the fresh value cached under ``key``, or ``None`` (no single flight)."""

    key: str


@dataclass(frozen=True)
class Put(Message):
    """Store ``value`` under ``key`` (ignored while the cache is disabled)."""

    key: str
    value: Any


@dataclass(frozen=True)
class Purge(Message):
    """Remove expired entries; the reply is how many (the memory manager sends this)."""


@dataclass(frozen=True)
class Shrink(Message):
    """Evict ``fraction`` of the entries, least recently used first; reply: how many."""

    fraction: float


@dataclass(frozen=True)
class Clear(Message):
    """Remove every entry; the reply is how many."""


@dataclass(frozen=True)
class Invalidate(Message):
    """Remove ``key``; the reply is whether it was present."""

    key: str


@dataclass(frozen=True)
class Prewarm(Message):
    """The mode switched to ``mode``: compute its most read contexts (reply: how many are
    queued; 0 when ``cache.prewarm`` is off or the cache disabled)."""

    mode: str


@dataclass(frozen=True)
class _RefreshTick(Message):
    token: int


@dataclass(frozen=True)
class _BackgroundDone(Message):
    """A background computation ended (told from the thread that ended it)."""


@dataclass(frozen=True)
class CacheActorStatistics(CacheStatistics):
    """:class:`CacheStatistics` and predictive caching (the ``cache_stats`` of ``status``).

    Attributes:
        refresh_ahead: ``cache.refresh_ahead.enabled`` (and the cache enabled).
        refresh_lead_ms: the lead in force (``before_ms``, cut to half the TTL).
        refreshes / refresh_failures / refresh_skipped_budget / prewarmed /
            prewarm_failures / background_inflight / tracked_contexts: see
            :class:`~modcoord.actors.shared.demand.DemandCounters`.
        prewarm_queued: pre-warm computations waiting for budget.
        max_in_flight: ``cache.refresh_ahead.max_in_flight``.
    """

    refresh_ahead: bool = False
    refresh_lead_ms: float = 0.0
    refreshes: int = 0
    refresh_failures: int = 0
    refresh_skipped_budget: int = 0
    prewarmed: int = 0
    prewarm_failures: int = 0
    prewarm_queued: int = 0
    background_inflight: int = 0
    max_in_flight: int = 0
    tracked_contexts: int = 0


def _require_key(key: Any) -> str:
    if type(key) is not str:
        raise InvalidMessageError(f"cache key must be a string, not {type(key).__name__}")
    return key


class CacheActor(ManagedActor):
    """Maintains the :class:`CacheStore` (expiry, shrinking, clearing, reconfiguration).

    The store is ``context.shared.cache_store``, so a successor started with the same
    shared context reuses it, and the reads and counters of predictive caching are
    ``context.shared.demand``. Its only pending work is the pre-warm queue (handed to a
    successor). Its one timer is the refresh check, armed while refresh-ahead is on; the
    memory manager sends :class:`Purge` periodically.
    """

    actor_name = "cache"
    settings_type = CacheSettings

    def __init__(self, settings: Any, context: ActorContext, takeover: Any = None) -> None:
        super().__init__(settings, context, takeover)
        store = context.shared.cache_store
        self.store: CacheStore = store
        if store.settings != self.settings:
            store.reconfigure(self.settings)
        self.demand: Demand = context.shared.demand
        self.demand.track_max = self.settings.prewarm.track_max_contexts
        self._prewarm_queue: deque[str] = deque()
        self._refresh_timer: TimerHandle | None = None
        self._refresh_token = 0
        self._budget_short = False  # the last check passed a due refresh over
        self._log = logger.bind(actor=self.actor_name)

    def started(self) -> None:
        self._arm_refresh()

    def on_stop(self) -> None:
        if self._refresh_timer is not None:
            self._refresh_timer.cancel()
        super().on_stop()

    def export_pending(self) -> Any:
        return tuple(self._prewarm_queue)

    def restore(self, pending: Any) -> None:
        if pending:
            self._prewarm_queue.extend(str(k) for k in pending)

    def statistics(self) -> CacheActorStatistics:
        base = self.store.statistics()
        counters = self.demand.counters()
        return CacheActorStatistics(
            **{f.name: getattr(base, f.name) for f in fields(base)},
            refresh_ahead=self._refreshing(),
            refresh_lead_ms=self._lead_s() * 1000.0,
            **{f.name: getattr(counters, f.name) for f in fields(counters)},
            prewarm_queued=len(self._prewarm_queue),
            max_in_flight=self.settings.refresh_ahead.max_in_flight,
        )

    def apply_settings(self, old: Any, new: Any) -> None:
        self.store.reconfigure(new)
        self.demand.track_max = new.prewarm.track_max_contexts
        self._arm_refresh()
        self._log.info(
            "cache reconfigured", enabled=new.enabled, ttl_ms=new.ttl_ms,
            max_entries=new.max_entries, refresh_ahead=new.refresh_ahead.enabled,
            prewarm=new.prewarm.enabled,
        )

    # -- refresh-ahead --

    def _refreshing(self) -> bool:
        s = self.settings
        return bool(s.enabled and s.refresh_ahead.enabled and
                    self.context.shared.compute is not None)

    def _lead_s(self) -> float:
        """Seconds before expiry a hot entry is refreshed: ``before_ms`` cut to half the
        TTL."""
        s: CacheSettings = self.settings
        return min(s.refresh_ahead.before_ms, s.ttl_ms * MAX_LEAD_FRACTION) / 1000.0

    def _post(self, message: Message) -> None:
        """Timer or computation callback: tell this actor; ignored if the actor is gone
        (a successor arms its own timer and pumps its own queue)."""
        with contextlib.suppress(pykka.ActorDeadError, ModcoordError):
            self.actor_ref.tell(message)

    def _arm_refresh(self) -> None:
        if self._refresh_timer is not None:
            self._refresh_timer.cancel()
            self._refresh_timer = None
        self._refresh_token += 1
        if not self._refreshing():
            return
        interval = max(MIN_REFRESH_CHECK_S, self._lead_s() / CHECKS_PER_LEAD)
        self._refresh_timer = self.clock.call_at(
            self.clock.monotonic() + interval,
            functools.partial(self._post, _RefreshTick(self._refresh_token)))

    @handles(_RefreshTick)
    def _on_refresh_tick(self, message: _RefreshTick) -> None:
        if message.token != self._refresh_token:
            return  # a timer replaced by a reconfigure
        self._arm_refresh()
        self._check_refresh()

    def _check_refresh(self) -> None:
        """Start the refreshes that are due, hottest first, within the budget."""
        lead = self._lead_s()
        budget = self.settings.refresh_ahead.max_in_flight
        skipped = 0
        for key in self.demand.due(self.settings.refresh_ahead.min_hits):
            remaining = self.store.remaining(key)
            if remaining is None or remaining > lead:
                continue  # gone (the next request computes it) or not due yet
            if self.demand.inflight() >= budget:
                skipped += 1
                continue
            self._start(key, refresh=True)
        if skipped:
            self.demand.skipped_budget(skipped)
        if bool(skipped) != self._budget_short:
            self._budget_short = bool(skipped)
            if skipped:
                self._log.warning(
                    "refresh budget exhausted: due entries left to expire", skipped=skipped,
                    max_in_flight=budget,
                    hint="raise cache.refresh_ahead.max_in_flight")
            else:
                self._log.info("refresh budget sufficient again", max_in_flight=budget)
        self._pump()

    def _start(self, key: str, refresh: bool) -> bool:
        """Start one background computation of ``key``; False if none was started (a
        request already computes it, the cache is disabled, or no compute hook)."""
        compute = self.context.shared.compute
        if compute is None:
            return False
        try:
            mode, context = split_key(key)
        except InvalidMessageError:
            self._log.opt(exception=True).error("not a cache key: not recomputed")
            return False
        flight = self.store.begin_background(key)
        if flight is None:
            return False
        self.demand.begin()
        store, demand, post, log = self.store, self.demand, self._post, self._log

        def done(value: dict[str, Any], cacheable: bool) -> None:
            if cacheable:
                store.complete(key, value)
            else:
                store.fail(key, None, value)
            (demand.refreshed if refresh else demand.prewarm_ended)(key, cacheable)
            if not cacheable:
                modules = {m: str(e)[:_MAX_LOGGED_ERROR_CHARS]
                           for m, e in (value.get("errors") or {}).items()}
                if refresh:
                    log.warning("cache refresh failed: the old entry stays until it expires",
                                mode=mode, modules=modules)
                else:
                    log.warning("cache pre-warm failed: nothing stored", mode=mode,
                                modules=modules)
            post(_BackgroundDone())

        try:
            compute(mode, context, done)
        except Exception as exc:  # the hook never raises; if it does, nothing is lost
            store.fail(key, exc)
            (demand.refreshed if refresh else demand.prewarm_ended)(key, False)
            self._log.opt(exception=True).error("background computation failed to start")
        return True

    # -- pre-warming --

    @handles(Prewarm)
    def _on_prewarm(self, message: Prewarm) -> int:
        s = self.settings
        if not (s.enabled and s.prewarm.enabled) or self.context.shared.compute is None:
            return 0
        keys = [k for k in self.demand.top(message.mode, s.prewarm.max_entries)
                if self.store.remaining(k) is None]
        self._prewarm_queue = deque(keys)
        self._log.info("pre-warming the cache", mode=message.mode, contexts=len(keys),
                       max_in_flight=s.refresh_ahead.max_in_flight)
        self._pump()
        return len(keys)

    @handles(_BackgroundDone)
    def _on_background_done(self, message: _BackgroundDone) -> None:
        self._pump()

    def _pump(self) -> None:
        """Start queued pre-warms while the budget allows."""
        budget = self.settings.refresh_ahead.max_in_flight
        queue = self._prewarm_queue
        while queue and self.demand.inflight() < budget:
            key = queue.popleft()
            if self.store.remaining(key) is None:
                self._start(key, refresh=False)

    @handles(Get)
    def _on_get(self, message: Get) -> Any:
        return self.store.get(_require_key(message.key))

    @handles(Put)
    def _on_put(self, message: Put) -> None:
        self.store.put(_require_key(message.key), message.value)

    @handles(Purge)
    def _on_purge(self, message: Purge) -> int:
        n = self.store.purge_expired()
        if n:
            logger.bind(actor=self.actor_name).debug("purged expired entries", entries=n)
        return n

    @handles(Shrink)
    def _on_shrink(self, message: Shrink) -> int:
        n = self.store.shrink(message.fraction)
        logger.bind(actor=self.actor_name).info(
            "shrank the cache", entries=n, fraction=message.fraction)
        return n

    @handles(Clear)
    def _on_clear(self, message: Clear) -> int:
        n = self.store.clear()
        logger.bind(actor=self.actor_name).info("cleared the cache", entries=n)
        return n

    @handles(Invalidate)
    def _on_invalidate(self, message: Invalidate) -> bool:
        return self.store.invalidate(_require_key(message.key))
