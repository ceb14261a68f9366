"""A cache policy: evict the most recently used entries (good for cyclic scans, where LRU
evicts exactly what comes back next), and keep entries of the MANUAL mode twice as long."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class MostRecentlyUsedPolicy:
    """Expired entries first, else the ``n`` most recently used."""

    def ttl_s(self, key: str, value: Any, default_s: float) -> float:
        return default_s * 2 if key.startswith("MANUAL:") else default_s

    def victims(self, entries: Mapping[str, tuple[Any, float]], n: int,
                now: float) -> Iterable[str]:
        expired = [k for k, (_, expires_at) in entries.items() if expires_at <= now]
        if expired:
            return expired
        return list(entries)[-n:]
