"""Partition leases: the state machine of one coordinator instance (no I/O).

Each partition ``p`` has a lease key (``p.<p>``) in a KV bucket. Its revision changes on
every write, and every write is a compare-and-set on the revision last seen, so two
instances can never both believe a write of theirs made them the owner. The runtime reads
keys, sends the writes :meth:`PartitionLeases.actions` asks for, and reports each outcome
back; this class decides, on this instance's own monotonic clock:

* **Acquire** a partition the targets give to this instance whose key is absent
  (``create``).
* **Take over** one whose foreign key's revision has been seen unchanged for ``lease_s``
  (``update`` on that revision): its owner stopped renewing.
* **Renew** each held lease every ``renew_s`` (``update`` on the held revision).
* **Release** (``delete`` on the held revision) a held partition the targets give to another
  member, once the caller has finished with it; the caller decides when, ``released``
  confirms.
* **Fence**: :meth:`PartitionLeases.owned` leaves out a held partition once
  ``now >= start of its last successful write + lease_s - grace_s``.

Why the owner always fences before anyone may take over: a write's lease is counted from
the moment the write was *sent* (``*_started``), which is no later than the moment it
landed; a taker first sees that revision after it landed and must see it unchanged for
``lease_s``. So the owner stops at least ``grace_s`` before the earliest takeover, with no
cross-host clock involved (only the clocks' rates). A takeover on a revision that has
meanwhile changed fails its compare-and-set, and a renew after a takeover fails too: the
loser learns it through :meth:`PartitionLeases.lost`.

A write whose outcome is unknown (a timeout: it may still land) is :meth:`failed`: a renew
keeps the lease, its fence clock not advanced; the next renew on the old revision then fails
its compare-and-set if the first one landed, and the partition is given up (safe: someone,
maybe this instance, takes it over after ``lease_s``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from modcoord.actors.clock import Clock

__all__ = [
    "Acquire",
    "Action",
    "LeaseSettings",
    "LeaseStatistics",
    "PartitionLeases",
    "Release",
    "Renew",
    "TakeOver",
]


@dataclass(frozen=True)
class LeaseSettings:
    """The lease timing (seconds).

    Attributes:
        lease_s: how long a foreign lease's revision must stay unchanged before it is taken
            over. Above NATS's own election time (4-9 s measured) so that an election does
            not move ownership.
        grace_s: how much earlier than ``lease_s`` an owner that cannot renew stops
            (fences itself).
        renew_s: how often an owner renews.
        poll_s: how often the runtime polls (reads keys, acts).

    Raises:
        ValueError: a value is not positive, ``grace_s`` is not below ``lease_s``, an owner
            would fence between two renewals (``renew_s >= lease_s - grace_s``), or the
            poll is slower than the renewals.
    """

    lease_s: float = 9.0
    grace_s: float = 1.0
    renew_s: float = 1.0
    poll_s: float = 0.25

    def __post_init__(self) -> None:
        for name in ("lease_s", "grace_s", "renew_s", "poll_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"lease setting {name} must be a positive number of "
                                 f"seconds, not {value!r}")
        if self.grace_s >= self.lease_s:
            raise ValueError(f"lease setting grace_s ({self.grace_s}) must be below lease_s "
                             f"({self.lease_s}): lower grace_s")
        if self.renew_s >= self.lease_s - self.grace_s:
            raise ValueError(f"lease setting renew_s ({self.renew_s}) must be below "
                             f"lease_s - grace_s ({self.lease_s - self.grace_s}), or an owner "
                             f"fences itself between renewals: lower renew_s")
        if self.poll_s > self.renew_s:
            raise ValueError(f"lease setting poll_s ({self.poll_s}) must not exceed renew_s "
                             f"({self.renew_s}): lower poll_s")


@dataclass(frozen=True)
class Acquire:
    """Create the absent lease key of partition ``p``."""

    p: int


@dataclass(frozen=True)
class TakeOver:
    """Write the lease key of ``p`` on ``revision`` (its owner stopped renewing)."""

    p: int
    revision: int


@dataclass(frozen=True)
class Renew:
    """Write the held lease key of ``p`` on ``revision``."""

    p: int
    revision: int


@dataclass(frozen=True)
class Release:
    """Delete the held lease key of ``p`` on ``revision`` (the targets moved it), once the
    caller has stopped processing ``p``."""

    p: int
    revision: int


Action = Acquire | TakeOver | Renew | Release
_Kind = Literal["acquire", "renew", "release"]


@dataclass(frozen=True)
class LeaseStatistics:
    """Counters since start (an immutable snapshot).

    Attributes:
        acquired: partitions acquired (absent key created).
        takeovers: partitions taken over from a silent owner.
        renewals: successful renewals.
        releases: partitions released to their new target.
        lost: leases lost to another instance (a compare-and-set failed).
        failures: writes whose outcome was unknown (timeouts, no connection).
        fenced: times a held partition passed its fence deadline unrenewed.
    """

    acquired: int = 0
    takeovers: int = 0
    renewals: int = 0
    releases: int = 0
    lost: int = 0
    failures: int = 0
    fenced: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Held:
    revision: int
    valid_from: float  # when the write that produced ``revision`` was sent
    releasing: bool = False
    fenced: bool = False  # counted once per fence


@dataclass
class _View:
    revision: int | None  # None: the key is absent
    owner: str | None
    since: float  # when this instance first saw ``revision``


@dataclass
class _Attempt:
    kind: _Kind
    start: float


class PartitionLeases:
    """The lease state machine of instance ``instance_id`` (see the module docstring).

    Protocol with the runtime, per partition, one write at a time:
    ``observed`` whenever a key was read; for each action of :meth:`actions`, the matching
    ``acquire_started`` / ``renew_started`` / ``release_started`` just before the write is
    sent, then exactly one of ``acquired`` / ``renewed`` / ``released`` (it succeeded),
    ``lost`` (its compare-and-set failed: someone else holds the key) or ``failed`` (an
    error: outcome unknown). Outcomes with no matching start raise ``ValueError``.
    Inputs come from one thread (the runtime's loop); :meth:`owned` and
    :meth:`statistics` may be called from any thread (they read snapshots).
    """

    def __init__(self, instance_id: str, clock: Clock,
                 settings: LeaseSettings | None = None) -> None:
        self.instance_id = instance_id
        self._clock = clock
        self.settings = settings or LeaseSettings()
        self._held: dict[int, _Held] = {}
        self._views: dict[int, _View] = {}
        self._attempts: dict[int, _Attempt] = {}
        self._stats: dict[str, int] = dict.fromkeys(LeaseStatistics().as_dict(), 0)

    # -- queries -----------------------------------------------------------------------
    def _fence_at(self, held: _Held) -> float:
        return held.valid_from + self.settings.lease_s - self.settings.grace_s

    def owned(self) -> frozenset[int]:
        """The partitions this instance may process NOW: held, not being released, and not
        past the fence deadline."""
        now = self._clock.monotonic()
        return frozenset(p for p, h in tuple(self._held.items())
                         if not h.releasing and now < self._fence_at(h))

    def held(self) -> frozenset[int]:
        """The partitions whose lease key this instance last wrote (fenced or not)."""
        return frozenset(self._held)

    def next_fence(self) -> float | None:
        """The earliest fence deadline of a partition in :meth:`owned` (monotonic), or None."""
        now = self._clock.monotonic()
        deadlines = [self._fence_at(h) for h in self._held.values()
                     if not h.releasing and now < self._fence_at(h)]
        return min(deadlines, default=None)

    def revision(self, p: int) -> int | None:
        """The revision of ``p``'s lease key as this instance holds it, or None."""
        held = self._held.get(p)
        return None if held is None else held.revision

    def in_flight(self, p: int) -> bool:
        """Whether a write for ``p`` has been started and not yet reported."""
        return p in self._attempts

    def absent_since(self, p: int) -> float | None:
        """When this instance first saw ``p``'s key absent (monotonic), if its last read
        found it absent; None otherwise (present, held, or not read)."""
        view = self._views.get(p)
        return view.since if view is not None and view.revision is None else None

    def lapsed_owners(self) -> frozenset[str]:
        """The owners of foreign leases seen unchanged for ``lease_s``: they stopped
        renewing (dead, or cut off and fenced)."""
        now = self._clock.monotonic()
        return frozenset(v.owner for v in tuple(self._views.values())
                         if v.revision is not None and v.owner is not None
                         and now - v.since >= self.settings.lease_s)

    def unheld(self, absent_s: float = 0.0) -> frozenset[int]:
        """The partitions no instance holds as this one last read them: the key seen
        absent for ``absent_s`` or longer (a handover leaves it absent for a moment), or a
        foreign lease seen unchanged for ``lease_s`` (its owner stopped renewing).
        Partitions this instance holds, or has not read yet, are not among them."""
        now = self._clock.monotonic()
        return frozenset(
            p for p, v in tuple(self._views.items())
            if p not in self._held and (
                (v.revision is None and now - v.since >= absent_s) or (
                    v.revision is not None and v.owner != self.instance_id
                    and now - v.since >= self.settings.lease_s)))

    def statistics(self) -> LeaseStatistics:
        return LeaseStatistics(**self._stats)

    # -- what to do --------------------------------------------------------------------
    def actions(self, targets: Mapping[int, str]) -> list[Action]:
        """The writes to send now, given the target owner of each partition (from
        :func:`~modcoord.supervisor.daemon.nats.partitions.assign` over the live members).
        Partitions with a write in flight are skipped; a held partition due for renewal is
        renewed before it is offered for release (the caller may ignore a ``Release``; it is
        offered again)."""
        now = self._clock.monotonic()
        out: list[Action] = []
        for p, held in sorted(self._held.items()):
            if not held.fenced and now >= self._fence_at(held):
                held.fenced = True
                self._stats["fenced"] += 1
            if p in self._attempts:
                continue
            if now - held.valid_from >= self.settings.renew_s:
                out.append(Renew(p, held.revision))
            elif targets.get(p, self.instance_id) != self.instance_id:
                out.append(Release(p, held.revision))
        for p, target in sorted(targets.items()):
            if target != self.instance_id or p in self._held or p in self._attempts:
                continue
            view = self._views.get(p)
            if view is None:
                continue  # not read yet
            if view.revision is None:
                out.append(Acquire(p))
            elif now - view.since >= self.settings.lease_s:
                out.append(TakeOver(p, view.revision))
        return out

    # -- inputs ------------------------------------------------------------------------
    def observed(self, p: int, revision: int | None, owner: str | None) -> None:
        """``p``'s lease key was read: ``revision`` and ``owner``, or None for both when
        it is absent (or deleted). A held partition whose key shows another revision
        (absent, or newer than the held one) is given up at once (counted as lost); an
        older revision than one seen before is a stale read and ignored, and so is any read
        of a partition with a write in flight (it may show that write)."""
        if p in self._attempts:
            return  # the read may show the write in flight: its outcome decides
        now = self._clock.monotonic()
        held = self._held.get(p)
        if held is not None:
            if revision is not None and revision <= held.revision:
                return
            del self._held[p]
            self._stats["lost"] += 1
        view = self._views.get(p)
        if (view is None or (revision is None and view.revision is not None)
                or (revision is not None and (view.revision is None
                                             or revision > view.revision))):
            self._views[p] = _View(revision, owner, now)
        elif revision is not None and revision == view.revision:
            view.owner = owner

    def _start(self, p: int, kind: _Kind) -> None:
        if p in self._attempts:
            raise ValueError(f"partition {p}: a {self._attempts[p].kind} is already in "
                             f"flight (one write at a time per partition)")
        self._attempts[p] = _Attempt(kind, self._clock.monotonic())

    def _finish(self, p: int, *kinds: _Kind) -> _Attempt:
        attempt = self._attempts.get(p)
        if attempt is None or attempt.kind not in kinds:
            raise ValueError(f"partition {p}: no {' or '.join(kinds)} in flight (call the "
                             f"matching *_started before sending the write)")
        del self._attempts[p]
        return attempt

    def acquire_started(self, p: int) -> None:
        """An ``Acquire`` or ``TakeOver`` write for ``p`` is being sent now."""
        self._start(p, "acquire")

    def renew_started(self, p: int) -> None:
        """A ``Renew`` write for ``p`` is being sent now.

        Raises:
            ValueError: ``p`` is not held.
        """
        if p not in self._held:
            raise ValueError(f"partition {p}: not held, nothing to renew")
        self._start(p, "renew")

    def release_started(self, p: int) -> None:
        """A ``Release`` (delete) for ``p`` is being sent now: from now on ``p`` is not in
        :meth:`owned` (the caller must have stopped processing it).

        Raises:
            ValueError: ``p`` is not held.
        """
        held = self._held.get(p)
        if held is None:
            raise ValueError(f"partition {p}: not held, nothing to release")
        self._start(p, "release")
        held.releasing = True

    def acquired(self, p: int, revision: int) -> None:
        """The acquire or takeover of ``p`` succeeded at ``revision``: held, its lease
        counted from when the write was sent."""
        attempt = self._finish(p, "acquire")
        view = self._views.pop(p, None)
        self._held[p] = _Held(revision, attempt.start)
        took_over = view is not None and view.revision is not None
        self._stats["takeovers" if took_over else "acquired"] += 1

    def renewed(self, p: int, revision: int) -> None:
        """The renew of ``p`` succeeded at ``revision``: its lease counted anew from when
        the write was sent."""
        attempt = self._finish(p, "renew")
        held = self._held.get(p)
        if held is None:  # given up meanwhile (observed elsewhere): stay out
            return
        held.revision, held.valid_from, held.fenced = revision, attempt.start, False
        self._stats["renewals"] += 1

    def released(self, p: int) -> None:
        """The release of ``p`` succeeded: no longer held."""
        self._finish(p, "release")
        if self._held.pop(p, None) is not None:
            self._stats["releases"] += 1
        self._views.pop(p, None)

    def lost(self, p: int) -> None:
        """The write in flight for ``p`` failed its compare-and-set: another instance holds
        the key (or was faster to create it). ``p`` is not held; its key must be read again
        before this instance acts on it."""
        self._finish(p, "acquire", "renew", "release")
        if self._held.pop(p, None) is not None:
            self._stats["lost"] += 1
        self._views.pop(p, None)

    def failed(self, p: int) -> None:
        """The write in flight for ``p`` ended in an error (a timeout, no connection): its
        outcome is unknown. A renew keeps the lease (the fence clock not advanced); a
        release gives the partition up anyway (it was no longer processed; if the delete
        did not land, the target takes it over after ``lease_s``); an acquire leaves it
        unheld (if the write landed, the key shows this instance and ages into a takeover)."""
        attempt = self._finish(p, "acquire", "renew", "release")
        self._stats["failures"] += 1
        if attempt.kind == "release":
            self._held.pop(p, None)
            self._views.pop(p, None)
