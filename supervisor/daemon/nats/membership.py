"""Which coordinator instances are alive, seen from one instance (no I/O).

Each instance writes its heartbeat key (``inst.<instance_id>``) in the members bucket every
few seconds; every write gives the key a new revision. The runtime reads or watches the
bucket and reports what it sees with :meth:`Membership.observe`. A member is alive while its
revision keeps changing: once the revision has stayed the same for ``timeout_s`` on THIS
instance's clock, the member is gone. No cross-host clock is needed, and none is trusted:
on nats-server 2.9 a key removed by the bucket's age limit produces no watch event, so
expiry must be detected here. A clean leave (the key deleted) is :meth:`Membership.removed`.
While the runtime cannot read the bucket at all, silence is not counted
(:meth:`Membership.scan_failed`): an instance cut off from NATS does not conclude that
everyone else died.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import msgspec

from modcoord.actors.clock import Clock

__all__ = ["MEMBER_TIMEOUT_S", "MemberInfo", "Membership"]

#: A member whose heartbeat revision has not changed for this long (on the observer's
#: clock) is gone. Above NATS's own election time (4-9 s measured), so that an election of
#: the members bucket's stream does not make every member look dead.
MEMBER_TIMEOUT_S = 10.0


class MemberInfo(msgspec.Struct, frozen=True):
    """What an instance says about itself in its heartbeat.

    Attributes:
        instance_id: the instance (unique in the cluster).
        host: its host name.
        pid: its daemon's process id.
        agent_subject: where owners deliver batches for its modules.
        started_unix: when it started (wall clock, for people).
        partitions: the partitions it owned when it wrote the heartbeat.
    """

    instance_id: str
    host: str
    pid: int
    agent_subject: str
    started_unix: float
    partitions: tuple[int, ...] = ()


@dataclass
class _Seen:
    revision: int
    since: float  # this instance's clock, when ``revision`` was first seen
    info: MemberInfo


class Membership:
    """The live members as seen by one instance (see the module docstring).

    Raises:
        ValueError: ``timeout_s`` is not positive.
    """

    def __init__(self, clock: Clock, timeout_s: float = MEMBER_TIMEOUT_S) -> None:
        if not timeout_s > 0:
            raise ValueError(f"the member timeout must be positive, not {timeout_s!r}")
        self._clock = clock
        self.timeout_s = timeout_s
        self._seen: dict[str, _Seen] = {}
        self._blind_since: float | None = None

    def scan_failed(self) -> None:
        """The runtime could not read the members (this instance is cut off, or the bucket
        is electing a leader): the time until it reads them again does not count against
        any member, and :meth:`live` answers as of now until then."""
        if self._blind_since is None:
            self._blind_since = self._clock.monotonic()

    def scan_succeeded(self) -> None:
        """The runtime read the members again after :meth:`scan_failed`: every member's
        silence is counted without the blind period."""
        if self._blind_since is None:
            return
        blind = self._clock.monotonic() - self._blind_since
        self._blind_since = None
        for seen in self._seen.values():
            seen.since += blind

    def _now(self) -> float:
        return self._clock.monotonic() if self._blind_since is None else self._blind_since

    def observe(self, instance_id: str, revision: int, info: MemberInfo) -> None:
        """Record that ``instance_id``'s heartbeat key has ``revision``. A new (higher)
        revision makes the member alive for another ``timeout_s``; the same revision
        changes nothing, and a lower one (a stale read) is ignored."""
        seen = self._seen.get(instance_id)
        if seen is None or revision > seen.revision:
            self._seen[instance_id] = _Seen(revision, self._clock.monotonic(), info)

    def removed(self, instance_id: str) -> None:
        """``instance_id``'s key is gone (deleted on a clean leave, or aged out): forget it.
        Unknown instances are ignored."""
        self._seen.pop(instance_id, None)

    def _alive(self, seen: _Seen, now: float) -> bool:
        return now - seen.since < self.timeout_s

    def live(self) -> tuple[str, ...]:
        """The live members' ids, sorted."""
        now = self._now()
        return tuple(sorted(m for m, s in tuple(self._seen.items()) if self._alive(s, now)))

    def members(self) -> Mapping[str, MemberInfo]:
        """The live members' latest heartbeats (a read-only snapshot)."""
        now = self._now()
        return MappingProxyType({m: s.info for m, s in sorted(tuple(self._seen.items()))
                                 if self._alive(s, now)})

    def known(self) -> tuple[str, ...]:
        """Every member still remembered, live or gone (sorted): a gone member is kept, so
        that reading its unchanged key again does not bring it back to life."""
        return tuple(sorted(self._seen))
