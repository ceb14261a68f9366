"""Partition ownership and membership for the NATS engine (a stand-in).

PLACEHOLDER until the lease runtime (``leases_runtime``) lands: the same contract in the
fewest lines. Membership: each instance writes ``inst.<id>`` in ``MODCOORD_MEMBERS`` every
``HEARTBEAT_S``; a member whose key's revision has not changed for ``MEMBER_TIMEOUT_S`` on
this instance's clock is gone. Leases: ``p.<n>`` in ``MODCOORD_LEASES``, created if absent,
renewed by compare-and-set every ``RENEW_S``; a foreign lease whose revision stays unchanged
for ``LEASE_S`` is taken over; an owner fences itself (stops processing) once its last
successful renew is older than ``LEASE_S - GRACE_S``, so it stops before anyone may take
over. Every instance takes partitions that are free or expired (no balancing yet).

On failure: a KV error is counted and logged and the poll goes on; a lost CAS means
another instance holds the lease (the partition is given up at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from loguru import logger
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

__all__ = ["Ownership"]

HEARTBEAT_S = 2.0
MEMBER_TIMEOUT_S = 10.0
LEASE_S = 9.0
GRACE_S = 1.0
RENEW_S = 1.0
POLL_S = 0.25


class Ownership:
    """Membership and partition leases of one instance (runs on the engine's loop).

    Args:
        members, leases: the KV buckets (on the control connection).
        instance_id: this instance.
        partitions: how many partitions.
        on_gained, on_lost: called (synchronously, on the loop) with a partition number.
        lease_s: the lease (tests shorten it).
    """

    def __init__(self, members: KeyValue, leases: KeyValue, instance_id: str, partitions: int,
                 on_gained: Callable[[int], None], on_lost: Callable[[int], None],
                 lease_s: float = LEASE_S) -> None:
        self._members = members
        self._leases = leases
        self.instance_id = instance_id
        self.partitions = partitions
        self._on_gained = on_gained
        self._on_lost = on_lost
        self.lease_s = lease_s
        self._owned: dict[int, tuple[int, float]] = {}  # p -> (revision, renew started)
        self._seen: dict[str, tuple[int, float]] = {}  # key -> (revision, first seen)
        self._live: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.stats = {"renewals": 0, "failures": 0, "takeovers": 0, "acquired": 0,
                      "fenced": 0, "lost": 0}
        self._log = logger.bind(actor="nats", instance=instance_id)

    def owned(self) -> frozenset[int]:
        """The partitions this instance may process now (not fenced)."""
        now = time.monotonic()
        return frozenset(p for p, (_, t) in self._owned.items()
                         if now < t + self.lease_s - GRACE_S)

    def live_members(self) -> tuple[str, ...]:
        now = time.monotonic()
        live = {m for m, t in self._live.items() if now - t < MEMBER_TIMEOUT_S}
        live.add(self.instance_id)
        return tuple(sorted(live))

    def statistics(self) -> dict[str, Any]:
        return dict(self.stats)

    async def start(self) -> None:
        await self._heartbeat_once()
        await self._refresh_members()
        self._tasks = [asyncio.create_task(self._heartbeat()),
                       asyncio.create_task(self._poll())]

    async def stop(self, release: bool = True) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if not release:
            return
        for p, (rev, _) in list(self._owned.items()):
            with contextlib.suppress(Exception):
                await self._leases.delete(f"p.{p}", last=rev)
            self._drop(p)
        with contextlib.suppress(Exception):
            await self._members.delete(f"inst.{self.instance_id}")

    # -- membership --

    async def _heartbeat_once(self) -> None:
        value = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                            "partitions": sorted(self.owned())}).encode()
        await self._members.put(f"inst.{self.instance_id}", value)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self._heartbeat_once()
                await self._refresh_members()
            except Exception as exc:
                self.stats["failures"] += 1
                self._log.warning("heartbeat failed", error=f"{type(exc).__name__}: {exc}")

    async def _refresh_members(self) -> None:
        now = time.monotonic()
        try:
            keys = await self._members.keys()
        except Exception:  # no keys yet (nats-py raises NoKeysError) or a blip
            return
        for key in keys:
            entry = await self._members.get(key)
            member = key.removeprefix("inst.")
            rev = int(entry.revision or 0)
            seen = self._seen.get(key)
            if seen is None or seen[0] != rev:
                self._seen[key] = (rev, now)
                self._live[member] = now

    # -- leases --

    def _drop(self, p: int) -> None:
        if self._owned.pop(p, None) is not None:
            self._on_lost(p)

    async def _poll(self) -> None:
        while True:
            try:
                await self._poll_once()
            except Exception as exc:
                self.stats["failures"] += 1
                self._log.warning("lease poll failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(POLL_S)

    async def _poll_once(self) -> None:
        value = json.dumps({"owner": self.instance_id}).encode()
        fenced_before = self.owned()
        for p in range(self.partitions):
            key = f"p.{p}"
            now = time.monotonic()
            if p in self._owned:
                rev, renewed = self._owned[p]
                if now - renewed >= RENEW_S:
                    try:
                        new = await self._leases.update(key, value, last=rev)
                    except KeyWrongLastSequenceError:
                        self.stats["lost"] += 1
                        self._log.warning("lease lost", partition=p)
                        self._drop(p)
                        continue
                    except Exception:
                        self.stats["failures"] += 1
                        if now > renewed + self.lease_s - GRACE_S and p in fenced_before:
                            self.stats["fenced"] += 1
                            self._log.warning("lease not renewed in time: fenced",
                                              partition=p)
                            self._drop(p)
                        continue
                    self._owned[p] = (int(new), now)
                    self.stats["renewals"] += 1
                continue
            try:
                entry = await self._leases.get(key)
            except KeyNotFoundError:
                entry = None
            try:
                if entry is None or entry.value is None or entry.operation is not None:
                    rev = (await self._leases.create(key, value) if entry is None
                           else await self._leases.update(key, value,
                                                          last=int(entry.revision or 0)))
                    self._gain(p, int(rev), now, takeover=False)
                    continue
                rev = int(entry.revision or 0)
                seen = self._seen.get(key)
                if seen is None or seen[0] != rev:
                    self._seen[key] = (rev, now)
                elif now - seen[1] >= self.lease_s:
                    new = await self._leases.update(key, value, last=rev)
                    self._gain(p, int(new), now, takeover=True)
            except KeyWrongLastSequenceError:
                continue  # someone else was faster

    def _gain(self, p: int, rev: int, now: float, takeover: bool) -> None:
        self._owned[p] = (rev, now)
        self.stats["takeovers" if takeover else "acquired"] += 1
        self._log.info("partition gained", partition=p, takeover=takeover)
        self._on_gained(p)
