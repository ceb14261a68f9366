"""A near cache: this daemon's copy of one mode's coordinate-cache bucket, kept by a watch.

Every cached ``coordinate`` on the NATS engine would otherwise be a KV read from the
bucket's stream leader (an R3 round trip through the daemon's loop: milliseconds at p99).
The near cache follows the bucket with a KV watch (an ordered push consumer: every put of
any daemon arrives in stream order) and keeps each entry's value; this daemon's own puts
go in at once. A lookup answers from it when the entry is there and younger than the
mode's current TTL.

Rules:

* **A hit is never wrong; a miss is only slower.** Entries are only ever put (a result
  recomputed after its entry expired replaces it with an equally valid one), never deleted
  by modcoord, and JetStream's ``max_age`` removes them silently (no watch event): so an
  entry is judged by its writer's ``stored_unix`` against the TTL *now* and dropped once
  older. A key that is not here (not yet arrived, evicted, or the watch is down) is looked
  up in the bucket as before (:class:`~modcoord.supervisor.daemon.nats.control.ClusterControl`
  does that), so the cluster-wide compute-once rule is unchanged.
* A ``DEL`` or ``PURGE`` seen on the watch (an operator's ``nats kv del``) removes the
  entry.
* **Bounded.** At most :data:`MAX_ENTRIES` entries (beyond, the oldest go:
  ``evicted``); expired entries are dropped from the oldest end at each lookup and each
  arrival (arrival order is nearly ``stored_unix`` order), so memory follows the live
  entries.
* **On failure** the watch is started again with a backoff (``watch_errors``, logged at
  most once per :data:`LOG_INTERVAL_S`); meanwhile lookups fall through to the bucket.
  A value that does not decode is skipped (``bad_values``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import msgspec
from loguru import logger
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from modcoord.supervisor.daemon.nats.tasks import cancel_and_wait

__all__ = ["MAX_ENTRIES", "NearCache"]

MAX_ENTRIES = 100_000
"""Entries one near cache keeps at most (a result map of a few hundred bytes each)."""
RETRY_MIN_S = 0.1
RETRY_MAX_S = 5.0
LOG_INTERVAL_S = 30.0
"""At most one warning about a failing watch per this interval."""


class NearCache:
    """One bucket's near cache (everything on the engine's loop).

    Args:
        kv: the mode's cache bucket.
        ttl_s: the mode's TTL now, in seconds (read at every judgement: a reload changes
            it).
        name: for the log (the mode).
        max_entries: the bound (:data:`MAX_ENTRIES`).
    """

    def __init__(self, kv: KeyValue, ttl_s: Callable[[], float], name: str, *,
                 max_entries: int = MAX_ENTRIES) -> None:
        self._kv = kv
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        # digest -> (stored_unix, the value without it); insertion order ~ stored order
        self._entries: dict[str, tuple[float, dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._decode = msgspec.msgpack.Decoder(dict[str, Any]).decode
        self.counts = dict.fromkeys(("hits", "arrived", "expired", "evicted", "removed",
                                     "bad_values", "watch_errors"), 0)
        self.following = False
        self._logged_at = float("-inf")
        self._log = logger.bind(actor="nats", cache=name)

    def start(self) -> None:
        """Start following the bucket (on the loop; returns at once)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._follow())

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        self._task = None
        self.following = False

    def __len__(self) -> int:
        return len(self._entries)

    # -- lookups --

    def get(self, digest: str) -> dict[str, Any] | None:
        """The entry's value (a copy, without ``stored_unix``) if it is here and younger
        than the TTL now; None otherwise (then ask the bucket)."""
        now = time.time()
        self._expire(now)
        held = self._entries.get(digest)
        if held is None:
            return None
        stored, value = held
        if now - stored > self._ttl_s():
            del self._entries[digest]
            self.counts["expired"] += 1
            return None
        self.counts["hits"] += 1
        return dict(value)

    def put(self, digest: str, value: dict[str, Any], stored_unix: float) -> None:
        """This daemon's own store (its watch brings the same entry back later)."""
        self._keep(digest, stored_unix, value)

    # -- the watch --

    async def _follow(self) -> None:
        delay = RETRY_MIN_S
        while True:
            watcher = None
            try:
                watcher = await self._kv.watchall()
                async for entry in watcher:
                    if entry is None:  # the bucket's current entries have all arrived
                        self.following = True
                        delay = RETRY_MIN_S
                        continue
                    self._arrive(entry.key, entry.value, entry.operation)
                raise ConnectionError("the watch ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.following = False
                self.counts["watch_errors"] += 1
                now = time.monotonic()
                if now - self._logged_at >= LOG_INTERVAL_S:
                    self._logged_at = now
                    self._log.warning("the near cache's watch failed: lookups go to the "
                                      "bucket until it is back",
                                      error=f"{type(exc).__name__}: {exc}",
                                      failures=self.counts["watch_errors"])
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):  # the connection went with it
                        await asyncio.wait_for(watcher.stop(), 2.0)  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    def _arrive(self, digest: str, data: bytes | None, operation: str | None) -> None:
        if operation in (KV_DEL, KV_PURGE):
            if self._entries.pop(digest, None) is not None:
                self.counts["removed"] += 1
            return
        try:
            value = self._decode(data or b"")
            stored = value.pop("stored_unix")
            if not isinstance(stored, (int, float)):
                raise TypeError("stored_unix is not a number")
        except (msgspec.DecodeError, KeyError, TypeError):
            self.counts["bad_values"] += 1
            return
        self.counts["arrived"] += 1
        self._keep(digest, float(stored), value)
        self._expire(time.time())

    def _keep(self, digest: str, stored: float, value: dict[str, Any]) -> None:
        held = self._entries.pop(digest, None)
        if held is not None and held[0] > stored:  # an older value arriving late
            self._entries[digest] = held
            return
        self._entries[digest] = (stored, value)
        while len(self._entries) > self._max_entries:
            del self._entries[next(iter(self._entries))]
            self.counts["evicted"] += 1

    def _expire(self, now: float) -> None:
        """Drop expired entries from the oldest end (stops at the first live one)."""
        ttl = self._ttl_s()
        entries = self._entries
        while entries:
            digest = next(iter(entries))
            if now - entries[digest][0] <= ttl:
                return
            del entries[digest]
            self.counts["expired"] += 1

    def statistics(self) -> dict[str, Any]:
        return {**self.counts, "entries": len(self._entries), "following": self.following}
