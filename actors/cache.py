"""The cache actor: maintenance of the shared coordination result store.

The store itself (:class:`~modcoord.actors.shared.cache_store.CacheStore`: canonical keys,
LRU with TTL, single flight) is a shared hot-path object: the façade reads it in its own
thread. This actor purges, shrinks, clears and reconfigures it, and answers cross-process
``Get``/``Put`` calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loguru import logger

from modcoord.actors._base import ActorContext, ManagedActor, handles
from modcoord.actors.errors import InvalidMessageError
from modcoord.actors.message import Message
from modcoord.actors.settings import CacheSettings
from modcoord.actors.shared.cache_store import CacheStatistics, CacheStore

__all__ = [
    "CacheActor",
    "Clear",
    "Get",
    "Invalidate",
    "Purge",
    "Put",
    "Shrink",
]


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


def _require_key(key: Any) -> str:
    if type(key) is not str:
        raise InvalidMessageError(f"cache key must be a string, not {type(key).__name__}")
    return key


class CacheActor(ManagedActor):
    """Maintains the :class:`CacheStore` (expiry, shrinking, clearing, reconfiguration).

    The store is ``context.shared.cache_store``, so a successor started with the same
    shared context reuses it. The actor has no pending work of its own: the store *is* the
    state, and it outlives the actor. It arms no timers — the memory manager sends
    :class:`Purge` periodically.
    """

    actor_name = "cache"
    settings_type = CacheSettings

    def __init__(self, settings: Any, context: ActorContext, takeover: Any = None) -> None:
        super().__init__(settings, context, takeover)
        store = context.shared.cache_store
        self.store: CacheStore = store
        if store.settings != self.settings:
            store.reconfigure(self.settings)

    def statistics(self) -> CacheStatistics:
        return self.store.statistics()

    def apply_settings(self, old: Any, new: Any) -> None:
        self.store.reconfigure(new)
        logger.bind(actor=self.actor_name).info(
            "cache reconfigured", enabled=new.enabled, ttl_ms=new.ttl_ms,
            max_entries=new.max_entries,
        )

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
