"""Cache policies: which entries leave a full cache, and how long an entry lives.

A :class:`CachePolicy` is chosen by ``plugins.cache_policy``: the built-in :class:`LruPolicy`
(``lru``, the instance :data:`LRU`) or a plugin's (entry-point group
``modcoord.cache_policies``, run through its guard by
:class:`~modcoord.actors.plugins.GuardedCachePolicy`).

Rules: both methods are called by the store with its lock held (``ttl_s`` just before), so
they must be quick and must not call the store; the hit path never calls the policy.

On failure: the store refuses a lifetime that is not a positive finite number (it uses
``cache.ttl_ms``) and, when none of the victims named exists, evicts the built-in's
choice instead, so a bad policy never leaves a full cache full.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["LRU", "CachePolicy", "LruPolicy"]


@runtime_checkable
class CachePolicy(Protocol):
    """Which entries to evict and how long they live (``modcoord.cache_policies``).

    Both methods are called with the store's lock held (``ttl_s`` is not: it is called
    before), so they must be quick and must not call the store.
    """

    def ttl_s(self, key: str, value: Any, default_s: float) -> float:
        """How long the entry stored now for ``key`` lives, in seconds (``default_s`` is
        ``cache.ttl_ms``). A value that is not a positive finite number is refused (the
        default is used)."""
        ...

    def victims(self, entries: Mapping[str, tuple[Any, float]], n: int,
                now: float) -> Iterable[str]:
        """The keys to evict from a full cache (at least one).

        Args:
            entries: key → ``(value, expires_at)``, least recently used first (a copy for
                a plugin policy).
            n: how many ``cache.evict_fraction`` suggests.
            now: the clock's time (an entry with ``expires_at <= now`` is expired).

        Keys not in ``entries`` are ignored; if none of the keys returned is, the built-in
        choice is used.
        """
        ...


class LruPolicy:
    """The built-in ``lru`` policy: every expired entry if there is one, else the ``n``
    least recently used; every entry lives ``cache.ttl_ms``."""

    name = "lru"

    def ttl_s(self, key: str, value: Any, default_s: float) -> float:
        return default_s

    def victims(self, entries: Mapping[str, tuple[Any, float]], n: int,
                now: float) -> Iterable[str]:
        expired = [k for k, (_, expires_at) in entries.items() if expires_at <= now]
        if expired:
            return expired
        return list(itertools.islice(entries, n))


LRU = LruPolicy()
"""The built-in policy instance."""
