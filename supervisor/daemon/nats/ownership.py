"""Partition ownership over NATS: membership heartbeats and partition leases of one
coordinator instance, driving :class:`~.membership.Membership` and
:class:`~.lease.PartitionLeases` (the logic, no I/O) over two KV buckets.

* **Membership.** Every ``heartbeat_s`` the instance puts its heartbeat key
  ``inst.<instance_id>`` (a :class:`~.membership.MemberInfo`, JSON) in the members bucket
  and reads every member's key. A member is gone once its key's revision has not changed
  for ``member_timeout_s`` on this instance's clock (on nats-server 2.9 a key aged out of
  the bucket gives no watch event); a missing key is a clean leave. While the bucket cannot
  be read at all, silence is not counted. This instance always counts itself as live.
* **Targets.** :func:`~.partitions.assign` over the live members without the suspects: a
  member is suspect once a lease of its own has lapsed (seen unchanged for ``lease_s``) or
  a partition targeted at it has stayed absent for ``lease_s`` (it does not take what is
  given to it), and stays suspect for :data:`SUSPECT_HOLD_LEASES` leases after the last
  such sign, or until it restarts (a new ``started_unix`` in its heartbeat). So a dead
  owner's partitions get a new target as soon as its leases lapse, before its heartbeat
  times out, and a member that heartbeats but does not hold leases cannot leave partitions
  unowned for longer than ``lease_s`` at a time. The price: a member cut off long enough
  for its leases to lapse gets its share back only when the hold ends (54 s with the
  defaults), its partitions processed by the others meanwhile.
* **Leases.** Every ``poll_s`` (sooner when a held partition's fence deadline comes first)
  the instance reads the lease keys ``p.<n>`` of the partitions it does not hold (those
  targeted at another member less often, :data:`FOREIGN_READ_FACTOR`) and sends
  the writes the state machine asks for, each as its own task (so a slow write delays
  nothing else): ``create`` to acquire, ``update(last=revision)`` to take over and to renew,
  ``delete(last=revision)`` to release. The value is a :class:`LeaseValue` (JSON).
* **Callbacks.** ``on_gained(p)`` when ``p`` enters :meth:`Ownership.owned`, ``on_lost(p)``
  when it leaves it (fenced, lost, released, or about to be released). Each may be a plain
  function or a coroutine function (then awaited); both run on the event loop and must be
  quick: the poll waits for them. An exception in one is counted and logged, never raised.
  A partition moving to another member is announced lost first; its key is deleted only
  after ``on_lost`` returned, so the caller finishes its current batch in ``on_lost`` (or
  before it returns), and nothing processes the partition from then on.

Use the CONTROL connection's KV handles (a data backlog must never starve the renewals).
The caller creates the buckets: members with ``max_age`` of several heartbeats (it only
removes garbage), leases with ``history=1`` and a ``max_age`` well above ``lease_s``.

The loops run on one asyncio loop; the queries (:meth:`Ownership.owned`,
:meth:`Ownership.live_members`, :meth:`Ownership.statistics`) may be called from any thread.

On failure: a KV error is counted (``statistics()``) and logged; the loops go on and retry
at the next poll. Nothing is raised out of the loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import msgspec
from loguru import logger
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from modcoord.actors.clock import Clock, MonotonicClock
from modcoord.supervisor.daemon.nats.lease import (
    Acquire,
    Action,
    LeaseSettings,
    PartitionLeases,
    Release,
    Renew,
    TakeOver,
)
from modcoord.supervisor.daemon.nats.membership import MEMBER_TIMEOUT_S, MemberInfo, Membership
from modcoord.supervisor.daemon.nats.partitions import assign
from modcoord.supervisor.daemon.nats.tasks import cancel_and_wait

__all__ = [
    "HEARTBEAT_S",
    "LEASE_KEY_PREFIX",
    "MEMBER_KEY_PREFIX",
    "LeaseValue",
    "Ownership",
    "OwnershipStatistics",
    "lease_key",
    "member_key",
]

#: How often an instance writes its heartbeat and reads the members.
HEARTBEAT_S = 2.0
#: Key prefixes in the members and leases buckets.
MEMBER_KEY_PREFIX = "inst."
LEASE_KEY_PREFIX = "p."
#: Lease keys of partitions targeted at another member are read every this many
#: ``renew_s`` (those targeted at this instance every ``poll_s``): often enough to see a
#: lease lapse within half a renewal, at a fraction of the reads.
FOREIGN_READ_FACTOR = 0.5
#: Stopping waits this long for the releases (deletes) to be answered.
RELEASE_TIMEOUT_S = 2.0
#: A suspect member (see the module docstring) stays out of the targets this many
#: ``lease_s`` after the last sign; then it is given its share again, to see if it takes it.
SUSPECT_HOLD_LEASES = 6
#: JetStream's "wrong last sequence" API error codes (a failed compare-and-set).
_CAS_ERROR_CODES = (10071, 10164)

Callback = Callable[[int], Awaitable[object] | object]


def member_key(instance_id: str) -> str:
    """The heartbeat key of ``instance_id`` in the members bucket."""
    return f"{MEMBER_KEY_PREFIX}{instance_id}"


def lease_key(p: int) -> str:
    """The lease key of partition ``p`` in the leases bucket."""
    return f"{LEASE_KEY_PREFIX}{p}"


class LeaseValue(msgspec.Struct, frozen=True):
    """A lease key's value: who wrote it, and when (wall clock, for people only)."""

    owner: str
    written_unix: float


@dataclass(frozen=True)
class OwnershipStatistics:
    """Counters since start and the current state (an immutable snapshot).

    Attributes:
        acquired, takeovers, renewals, releases, lost, failures, fenced: the lease counters
            (:class:`~.lease.LeaseStatistics`).
        heartbeats: heartbeats written.
        heartbeat_failures: heartbeats or member reads that failed.
        read_failures: lease key reads that failed.
        bad_values: member or lease values that could not be decoded (ignored).
        callback_errors: ``on_gained``/``on_lost`` calls that raised.
        owned: partitions owned now.
        live_members: members live now (this instance included).
        suspects: live members left out of the targets for not holding leases.
    """

    acquired: int
    takeovers: int
    renewals: int
    releases: int
    lost: int
    failures: int
    fenced: int
    heartbeats: int
    heartbeat_failures: int
    read_failures: int
    bad_values: int
    callback_errors: int
    owned: int
    live_members: int
    suspects: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _is_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed compare-and-set (someone else wrote the key)."""
    return isinstance(exc, KeyWrongLastSequenceError) or getattr(
        exc, "err_code", None) in _CAS_ERROR_CODES


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _scaled(lease_s: float) -> LeaseSettings:
    """Settings with ``lease_s`` and the other timings in the defaults' proportions."""
    d = LeaseSettings()
    k = lease_s / d.lease_s
    return LeaseSettings(lease_s=lease_s, grace_s=d.grace_s * k, renew_s=d.renew_s * k,
                         poll_s=d.poll_s * k)


class Ownership:
    """Membership and partition leases of one instance, on the running asyncio loop (see
    the module docstring).

    Args:
        members, leases: the members and leases KV buckets (control connection).
        instance_id: this instance (unique in the cluster).
        partitions: how many partitions the cluster has.
        on_gained, on_lost: called with a partition number (plain or coroutine functions).
        settings: the lease timing (default :class:`~.lease.LeaseSettings`).
        lease_s: shorthand for ``settings`` with this lease and the other timings scaled
            in proportion (tests).
        heartbeat_s, member_timeout_s: the membership timing.
        agent_subject: where owners deliver batches for this instance (in its heartbeat).
        clock: the monotonic clock (default: the real one).

    Raises:
        ValueError: ``partitions`` out of range, or timings that contradict each other
            (``member_timeout_s`` not above ``heartbeat_s``).
    """

    def __init__(self, members: KeyValue, leases: KeyValue, instance_id: str,
                 partitions: int, on_gained: Callback, on_lost: Callback, *,
                 settings: LeaseSettings | None = None, lease_s: float | None = None,
                 heartbeat_s: float = HEARTBEAT_S, member_timeout_s: float = MEMBER_TIMEOUT_S,
                 agent_subject: str = "", clock: Clock | None = None) -> None:
        assign(partitions, ())  # validates the count
        if not 0 < heartbeat_s < member_timeout_s:
            raise ValueError(f"member_timeout_s ({member_timeout_s}) must be above "
                             f"heartbeat_s ({heartbeat_s}) > 0, or live members time out "
                             f"between heartbeats")
        if settings is None:
            settings = _scaled(lease_s) if lease_s is not None else LeaseSettings()
        self._members_kv = members
        self._leases_kv = leases
        self.instance_id = instance_id
        self.partitions = partitions
        self.settings = settings
        self.heartbeat_s = heartbeat_s
        self._on_gained = on_gained
        self._on_lost = on_lost
        self._clock: Clock = clock or MonotonicClock()
        self.membership = Membership(self._clock, member_timeout_s)
        self.leases = PartitionLeases(instance_id, self._clock, settings)
        self._agent_subject = agent_subject
        self._started_unix = time.time()
        self._announced: set[int] = set()  # on_gained called, on_lost not yet
        self._leaving: set[int] = set()  # moving to another member: announced lost first
        self._reading: set[int] = set()
        self._read_at: dict[int, float] = {}  # when each lease key was last read
        # member -> (last sign it does not hold leases, its started_unix then)
        self._suspects: dict[str, tuple[float, float | None]] = {}
        self._target: dict[int, tuple[str, float]] = {}  # p -> (target, since when)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._counts = dict.fromkeys(("heartbeats", "heartbeat_failures", "read_failures",
                                      "bad_values", "callback_errors"), 0)
        self._log = logger.bind(actor="nats", instance=instance_id)

    # -- queries -----------------------------------------------------------------------
    def owned(self) -> frozenset[int]:
        """The partitions this instance may process now (any thread may ask)."""
        return self.leases.owned() - frozenset(tuple(self._leaving))

    def live_members(self) -> tuple[str, ...]:
        """The live members' ids (this instance always among them), sorted."""
        return tuple(sorted({*self.membership.live(), self.instance_id}))

    def targets(self) -> dict[int, str]:
        """Which member should own each partition now: rendezvous over the live members
        without the suspects (see the module docstring)."""
        return assign(self.partitions, set(self.live_members()) - set(tuple(self._suspects)))

    def suspects(self) -> tuple[str, ...]:
        """The members left out of the targets for not holding leases, sorted."""
        return tuple(sorted(self._suspects))

    def _update_suspects(self) -> None:
        now = self._clock.monotonic()
        lease_s = self.settings.lease_s
        signs = {o for o in self.leases.lapsed_owners() if o != self.instance_id}
        for p, member in assign(self.partitions, self.live_members()).items():
            target, since = self._target.get(p, (None, now))
            if target != member:
                self._target[p] = (member, now)
                continue
            absent = self.leases.absent_since(p)
            if member != self.instance_id and absent is not None \
                    and now - absent >= lease_s and now - since >= lease_s:
                signs.add(member)
        infos = self.membership.members()
        for member in signs:
            if member not in self._suspects:
                self._log.warning("member suspected of not holding its leases",
                                  member=member)
            info = infos.get(member)
            self._suspects[member] = (now, None if info is None else info.started_unix)
        for member, (last, started) in list(self._suspects.items()):
            info = infos.get(member)
            restarted = info is not None and started is not None \
                and info.started_unix != started
            if restarted or now - last >= SUSPECT_HOLD_LEASES * lease_s:
                del self._suspects[member]

    def statistics(self) -> OwnershipStatistics:
        return OwnershipStatistics(**self.leases.statistics().as_dict(), **self._counts,
                                   owned=len(self.owned()),
                                   live_members=len(self.live_members()),
                                   suspects=len(self._suspects))

    # -- life --------------------------------------------------------------------------
    async def start(self) -> None:
        """Write the first heartbeat, read the members, and start the heartbeat and lease
        loops. A failed first heartbeat is counted and logged; the loops retry."""
        await self.heartbeat_once()
        self._loops = [asyncio.create_task(self._heartbeat_loop()),
                       asyncio.create_task(self._poll_loop())]
        self._log.info("ownership started", partitions=self.partitions,
                       lease_s=self.settings.lease_s)

    async def stop(self, release: bool = True) -> None:
        """Stop the loops and the writes in flight. With ``release`` (a clean leave) call
        ``on_lost`` for every owned partition, delete every held lease key and this
        instance's heartbeat key, so that the next owners take over at once; without it
        (a crash, for tests) nothing more is written and the leases lapse. Never raises."""
        await cancel_and_wait([*self._loops, *self._tasks])
        self._loops, self._tasks = [], set()
        for p in range(self.partitions):
            if self.leases.in_flight(p):  # cancelled before it ran: outcome unknown
                self.leases.failed(p)
        if not release:
            return
        self._leaving |= self.leases.held()
        await self._announce()
        deletes = [self._release_now(p, rev) for p in sorted(self.leases.held())
                   if (rev := self.leases.revision(p)) is not None
                   and not self.leases.in_flight(p)]
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*deletes, return_exceptions=True),
                                   RELEASE_TIMEOUT_S)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._members_kv.delete(member_key(self.instance_id)),
                                   RELEASE_TIMEOUT_S)
        self._log.info("ownership stopped", released=self.leases.statistics().releases)

    async def settle(self) -> None:
        """Wait until no read or write started by :meth:`poll_once` is in flight."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- membership --------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await self.heartbeat_once()
            self._wake.set()

    async def heartbeat_once(self) -> None:
        """One heartbeat round, as the heartbeat loop does it: write this instance's key,
        read every member's. Failures are counted and logged, never raised."""
        info = MemberInfo(instance_id=self.instance_id, host=socket.gethostname(),
                          pid=os.getpid(), agent_subject=self._agent_subject,
                          started_unix=self._started_unix,
                          partitions=tuple(sorted(self.owned())))
        try:
            await self._members_kv.put(member_key(self.instance_id),
                                       msgspec.json.encode(info))
            self._counts["heartbeats"] += 1
        except Exception as exc:
            self._counts["heartbeat_failures"] += 1
            self._log.warning("heartbeat not written", error=_describe(exc))
        try:
            await self._scan_members()
        except Exception as exc:
            self.membership.scan_failed()
            self._counts["heartbeat_failures"] += 1
            self._log.warning("members not read", error=_describe(exc))

    async def _scan_members(self) -> None:
        try:
            keys = await self._members_kv.keys()
        except NoKeysError:
            keys = []
        entries: dict[str, tuple[int, MemberInfo]] = {}
        for key in keys:
            if not key.startswith(MEMBER_KEY_PREFIX):
                continue
            try:
                entry = await self._members_kv.get(key)
            except KeyNotFoundError:
                continue
            try:
                info = msgspec.json.decode(entry.value or b"", type=MemberInfo)
            except msgspec.DecodeError:
                self._counts["bad_values"] += 1
                self._log.warning("member value not understood", key=key)
                continue
            entries[key.removeprefix(MEMBER_KEY_PREFIX)] = (int(entry.revision or 0), info)
        self.membership.scan_succeeded()
        for gone in set(self.membership.known()) - set(entries):
            self.membership.removed(gone)
        for instance_id, (revision, info) in entries.items():
            self.membership.observe(instance_id, revision, info)

    # -- leases ------------------------------------------------------------------------
    async def _poll_loop(self) -> None:
        while True:
            self._wake.clear()  # a write finishing during the poll wakes the next one
            try:
                await self.poll_once()
            except Exception:
                self._log.opt(exception=True).error("lease poll failed")
            delay = self.settings.poll_s
            fence = self.leases.next_fence()
            if fence is not None:
                delay = min(delay, max(0.0, fence - self._clock.monotonic()) + 0.001)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def poll_once(self) -> None:
        """One lease round, as the poll loop does it: announce changes, start the reads
        and writes due (as tasks: :meth:`settle` waits for them), announce again."""
        await self._announce()
        self._update_suspects()
        targets = self.targets()
        now = self._clock.monotonic()
        for p in range(self.partitions):
            if p in self.leases.held() or p in self._reading or self.leases.in_flight(p):
                continue
            every = (self.settings.poll_s if targets.get(p) == self.instance_id
                     else FOREIGN_READ_FACTOR * self.settings.renew_s)
            if now - self._read_at.get(p, -every) >= every:
                self._reading.add(p)
                self._read_at[p] = now
                self._spawn(self._read(p))
        self._leaving = {p for p in self._leaving
                         if p in self.leases.held() and targets.get(p) != self.instance_id}
        for action in self.leases.actions(targets):
            if isinstance(action, Release) and action.p in self._announced:
                self._leaving.add(action.p)  # announce it lost first; delete next poll
                continue
            self._start(action)
        await self._announce()

    async def _read(self, p: int) -> None:
        try:
            try:
                entry = await self._leases_kv.get(lease_key(p))
            except KeyNotFoundError:
                self.leases.observed(p, None, None)
                self._wake.set()  # maybe free to acquire: act now
                return
            owner: str | None
            try:
                owner = msgspec.json.decode(entry.value or b"", type=LeaseValue).owner
            except msgspec.DecodeError:
                self._counts["bad_values"] += 1
                owner = None
            self.leases.observed(p, int(entry.revision or 0), owner)
        except Exception as exc:
            self._counts["read_failures"] += 1
            self._log.debug("lease not read", partition=p, error=_describe(exc))
        finally:
            self._reading.discard(p)

    def _value(self) -> bytes:
        return msgspec.json.encode(LeaseValue(self.instance_id, time.time()))

    def _start(self, action: Action) -> None:
        p, key = action.p, lease_key(action.p)
        if isinstance(action, Acquire):
            self.leases.acquire_started(p)
            value = self._value()
            self._spawn(self._write(p, lambda: self._leases_kv.create(key, value),
                                    self.leases.acquired, "acquired"))
        elif isinstance(action, TakeOver):
            self.leases.acquire_started(p)
            value, last = self._value(), action.revision
            self._spawn(self._write(p, lambda: self._leases_kv.update(key, value, last=last),
                                    self.leases.acquired, "taken over"))
        elif isinstance(action, Renew):
            self.leases.renew_started(p)
            value, last = self._value(), action.revision
            self._spawn(self._write(p, lambda: self._leases_kv.update(key, value, last=last),
                                    self.leases.renewed, None))
        else:
            self._spawn(self._release_now(p, action.revision))

    async def _release_now(self, p: int, revision: int) -> None:
        self.leases.release_started(p)

        async def delete() -> int:
            await self._leases_kv.delete(lease_key(p), last=revision)
            return revision

        await self._write(p, delete, lambda q, _rev: self.leases.released(q), "released")

    async def _write(self, p: int, call: Callable[[], Awaitable[int]],
                     done: Callable[[int, int], None], change: str | None) -> None:
        try:
            revision = await call()
        except asyncio.CancelledError:
            if self.leases.in_flight(p):
                self.leases.failed(p)
            raise
        except Exception as exc:
            if _is_conflict(exc):
                self.leases.lost(p)
                self._log.info("lease held by another instance", partition=p)
            else:
                self.leases.failed(p)
                self._log.warning("lease write failed", partition=p, error=_describe(exc))
            self._wake.set()
            return
        done(p, int(revision))
        if change is not None:
            self._log.info("lease written", partition=p, change=change,
                           revision=int(revision))
            self._wake.set()

    async def _announce(self) -> None:
        owned = self.owned()
        for p in sorted(self._announced - owned):
            self._announced.discard(p)
            await self._call(self._on_lost, p, "lost")
        for p in sorted(owned - self._announced):
            self._announced.add(p)
            await self._call(self._on_gained, p, "gained")

    async def _call(self, callback: Callback, p: int, what: str) -> None:
        try:
            result = callback(p)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self._counts["callback_errors"] += 1
            self._log.opt(exception=True).error("partition callback failed", partition=p,
                                                change=what)
