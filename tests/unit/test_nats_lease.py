"""The partition lease state machine (supervisor/daemon/nats/lease.py) on the fake clock:
acquire, renew, fence, takeover, release, lost, and the safety property (an owner always
fences itself before another instance may take its partition over), checked over random
interleavings of delayed, lost and stale messages against a compare-and-set key model."""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from modcoord.actors import MockClock
from modcoord.supervisor.daemon.nats.lease import (
    Acquire,
    Action,
    LeaseSettings,
    PartitionLeases,
    Release,
    Renew,
    TakeOver,
)

#: The simulated callers' request timeout.
TIMEOUT_S = 2.0
S = LeaseSettings(lease_s=9.0, grace_s=1.0, renew_s=1.0, poll_s=0.25)


def leases(clock: MockClock, name: str = "a") -> PartitionLeases:
    return PartitionLeases(name, clock, S)


def test_the_defaults_are_the_documented_ones() -> None:
    assert LeaseSettings() == S


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"lease_s": 0}, "lease_s must be a positive"),
    ({"grace_s": 9.0}, "grace_s .* must be below lease_s"),
    ({"renew_s": 8.0}, "renew_s .* must be below lease_s - grace_s"),
    ({"poll_s": 2.0}, "poll_s .* must not exceed renew_s"),
    ({"renew_s": True}, "renew_s must be a positive"),
])
def test_bad_settings_are_refused_naming_the_setting(kwargs: dict[str, float],
                                                     match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LeaseSettings(**kwargs)


def test_acquire_an_absent_key_then_renew_it(clock: MockClock) -> None:
    a = leases(clock)
    assert a.actions({0: "a"}) == []  # not read yet: nothing to act on
    a.observed(0, None, None)
    assert a.actions({0: "a"}) == [Acquire(0)]
    a.acquire_started(0)
    assert a.actions({0: "a"}) == []  # one write at a time
    clock.advance(0.01)
    a.acquired(0, 7)
    assert a.owned() == {0} and a.revision(0) == 7
    clock.advance(0.5)
    assert a.actions({0: "a"}) == []
    clock.advance(0.5)
    assert a.actions({0: "a"}) == [Renew(0, 7)]
    a.renew_started(0)
    a.renewed(0, 9)
    assert a.revision(0) == 9 and a.owned() == {0}
    st = a.statistics()
    assert (st.acquired, st.renewals, st.takeovers) == (1, 1, 0)


def test_an_owner_that_cannot_renew_fences_at_lease_minus_grace(clock: MockClock) -> None:
    a = leases(clock)
    a.observed(0, None, None)
    a.acquire_started(0)
    clock.advance(0.2)  # the reply comes later: the lease counts from the send
    a.acquired(0, 1)
    for _ in range(7):
        clock.advance(1.0)
        [renew] = a.actions({0: "a"})
        assert renew == Renew(0, 1)
        a.renew_started(0)
        a.failed(0)  # timed out
    assert a.owned() == {0}  # 7.2 s after the send
    assert a.next_fence() == pytest.approx(clock.monotonic() + 0.8)
    clock.advance(0.79)
    assert a.owned() == {0}
    clock.advance(0.01)  # 8.0 s = lease_s - grace_s after the acquire was sent
    assert a.owned() == frozenset() and a.held() == {0}
    a.actions({0: "a"})
    a.actions({0: "a"})
    assert a.statistics().fenced == 1 and a.statistics().failures == 7
    a.renew_started(0)
    a.renewed(0, 2)  # it is still ours (nobody took it): processing may resume
    assert a.owned() == {0}


def test_a_silent_foreign_lease_is_taken_over_after_lease_s(clock: MockClock) -> None:
    b = leases(clock, "b")
    b.observed(3, 10, "a")
    clock.advance(4)
    b.observed(3, 11, "a")  # a renewed: the wait starts again
    clock.advance(8.99)
    b.observed(3, 11, "a")
    assert b.actions({3: "b"}) == []
    clock.advance(0.01)
    assert b.actions({3: "b"}) == [TakeOver(3, 11)]
    assert b.actions({3: "a"}) == []  # only a partition the targets give to b
    b.acquire_started(3)
    b.acquired(3, 12)
    assert b.owned() == {3} and b.statistics().takeovers == 1


def test_a_stale_read_does_not_restart_or_shorten_the_wait(clock: MockClock) -> None:
    b = leases(clock, "b")
    b.observed(3, 11, "a")
    clock.advance(5)
    b.observed(3, 10, "a")  # an older revision, from a lagging replica
    clock.advance(4)
    assert b.actions({3: "b"}) == [TakeOver(3, 11)]


def test_a_lost_compare_and_set_gives_the_partition_up(clock: MockClock) -> None:
    a = leases(clock)
    a.observed(0, None, None)
    a.acquire_started(0)
    a.acquired(0, 1)
    clock.advance(1)
    a.renew_started(0)
    a.lost(0)  # someone took it over
    assert a.owned() == frozenset() and a.held() == frozenset()
    assert a.statistics().lost == 1
    assert a.actions({0: "a"}) == []  # must read the key again first
    a.observed(0, 5, "b")
    assert a.actions({0: "a"}) == []


def test_create_race_lost(clock: MockClock) -> None:
    a = leases(clock)
    a.observed(0, None, None)
    a.acquire_started(0)
    a.lost(0)
    assert a.owned() == frozenset() and a.statistics().lost == 0  # nothing was held


def test_reading_a_newer_foreign_revision_of_a_held_key_gives_it_up(clock: MockClock) -> None:
    a = leases(clock)
    a.observed(0, None, None)
    a.acquire_started(0)
    a.acquired(0, 4)
    a.observed(0, 4, "a")  # its own write: nothing changes
    a.observed(0, 3, "x")  # stale
    assert a.owned() == {0}
    a.observed(0, 6, "b")
    assert a.owned() == frozenset() and a.statistics().lost == 1


def test_release_to_the_new_target_after_the_caller_is_done(clock: MockClock) -> None:
    a = leases(clock)
    a.observed(0, None, None)
    a.acquire_started(0)
    a.acquired(0, 1)
    assert a.actions({0: "b"}) == [Release(0, 1)]
    assert a.owned() == {0}  # offered only: the caller is still finishing its batch
    clock.advance(1)
    assert a.actions({0: "b"}) == [Renew(0, 1)]  # keep the lease while finishing
    a.renew_started(0)
    a.renewed(0, 2)
    assert a.actions({0: "b"}) == [Release(0, 2)]
    a.release_started(0)
    assert a.owned() == frozenset()  # not processed from the delete on
    a.released(0)
    assert a.held() == frozenset() and a.statistics().releases == 1


def test_a_failed_release_gives_the_partition_up_anyway(clock: MockClock) -> None:
    a = leases(clock)
    a.observed(0, None, None)
    a.acquire_started(0)
    a.acquired(0, 1)
    a.release_started(0)
    a.failed(0)
    assert a.held() == frozenset() and a.owned() == frozenset()


def test_a_read_during_a_write_in_flight_is_ignored(clock: MockClock) -> None:
    a = leases(clock)
    a.observed(0, None, None)
    a.acquire_started(0)
    a.acquired(0, 1)
    clock.advance(1)
    a.renew_started(0)
    a.observed(0, 2, "a")  # shows the renew itself, before its reply
    a.renewed(0, 2)
    assert a.owned() == {0} and a.statistics().lost == 0


def test_outcomes_without_a_start_are_refused(clock: MockClock) -> None:
    a = leases(clock)
    with pytest.raises(ValueError, match="no acquire in flight"):
        a.acquired(0, 1)
    with pytest.raises(ValueError, match="not held"):
        a.renew_started(0)
    with pytest.raises(ValueError, match="not held"):
        a.release_started(0)
    a.acquire_started(0)
    with pytest.raises(ValueError, match="already in flight"):
        a.acquire_started(0)


def test_lapsed_owners_are_those_whose_leases_stayed_unchanged_for_lease_s(
        clock: MockClock) -> None:
    b = leases(clock, "b")
    b.observed(1, 10, "a")
    b.observed(2, 20, "c")
    b.observed(3, None, None)
    clock.advance(5)
    b.observed(2, 21, "c")  # c renews, a does not
    assert b.lapsed_owners() == frozenset()
    clock.advance(4)
    assert b.lapsed_owners() == {"a"}
    b.observed(4, 5, "b")  # its own old key: reported too (the runtime leaves itself out)
    clock.advance(9)
    assert b.lapsed_owners() == {"a", "b", "c"}


# -- safety over random interleavings -------------------------------------------------

@dataclass
class Key:
    """The lease key of one partition, as the KV bucket keeps it: compare-and-set on the
    revision (a stream sequence, increasing across writes)."""

    revision: int | None = None
    owner: str | None = None
    seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    history: list[tuple[float, int | None, str | None]] = field(default_factory=list)

    def write(self, now: float, action: Action, me: str) -> bool:
        if isinstance(action, Acquire):
            ok = self.revision is None
        else:
            ok = self.revision == action.revision
        if ok:
            self.revision, self.owner = ((None, None) if isinstance(action, Release)
                                         else (next(self.seq), me))
            if isinstance(action, Release):
                next(self.seq)  # the delete marker takes a sequence too
            self.history.append((now, self.revision, self.owner))
        return ok

    def read(self, now: float, lag: float) -> tuple[int | None, str | None]:
        """The key as of ``now - lag`` (a replica that lags behind)."""
        state: tuple[int | None, str | None] = (None, None)
        for t, rev, owner in self.history:
            if t <= now - lag:
                state = (rev, owner)
        return state


class World:
    """Instances sharing one key over a network that delays, loses and reorders: each
    write lands at a random time after it is sent (or never), its reply comes later (or
    never: then a timeout), reads may be stale; instances freeze (a partition or a GC
    pause: their timers keep running, their messages wait) and come back."""

    def __init__(self, seed: int, names: tuple[str, ...], settings: LeaseSettings) -> None:
        self.rng = random.Random(seed)
        self.clock = MockClock()
        self.key = Key()
        self.names = names
        self.settings = settings
        self.inst = {n: PartitionLeases(n, self.clock, settings) for n in names}
        self.frozen: dict[str, bool] = dict.fromkeys(names, False)
        self.reading: dict[str, bool] = dict.fromkeys(names, False)
        self.events: list[tuple[float, int, Callable[[], None]]] = []
        self.order = itertools.count()
        self.waiting: dict[str, list[Callable[[], None]]] = {n: [] for n in names}
        self.target = names[0]
        self.overlaps: list[tuple[float, set[str]]] = []
        self.owned_time: dict[str, float] = dict.fromkeys(names, 0.0)

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.events, (t, next(self.order), fn))

    def deliver(self, name: str, fn: Callable[[], None]) -> None:
        """A reply to ``name``: held while it is frozen."""
        if self.frozen[name]:
            self.waiting[name].append(fn)
        else:
            fn()

    def delay(self) -> float:
        r = self.rng.random()
        return self.rng.uniform(0.001, 0.05) if r < 0.8 else self.rng.uniform(0.05, 3.0)

    def send(self, name: str, action: Action) -> None:
        inst = self.inst[name]
        now = self.clock.monotonic()
        if isinstance(action, (Acquire, TakeOver)):
            inst.acquire_started(0)
        elif isinstance(action, Renew):
            inst.renew_started(0)
        else:
            inst.release_started(0)
        fate = self.rng.random()
        lands = fate > 0.05  # 5%: lost before it lands
        land_at = now + self.delay()
        reply_at = land_at + self.delay()
        replies = fate > 0.1 and reply_at < now + TIMEOUT_S  # else the caller times out

        def reply_with(ok: bool, rev: int | None) -> Callable[[], None]:
            def reply() -> None:
                if not ok:
                    inst.lost(0)
                elif isinstance(action, Release):
                    inst.released(0)
                elif isinstance(action, Renew):
                    inst.renewed(0, rev)  # type: ignore[arg-type]
                else:
                    inst.acquired(0, rev)  # type: ignore[arg-type]
            return reply

        def land() -> None:
            ok = self.key.write(self.clock.monotonic(), action, name)
            if replies:
                fn = reply_with(ok, self.key.revision)
                self.at(reply_at, lambda: self.deliver(name, fn))

        if lands:
            self.at(land_at, land)
        if not (lands and replies):
            self.at(now + TIMEOUT_S, lambda: self.deliver(name, lambda: inst.failed(0)))

    def poll(self, name: str) -> None:
        inst = self.inst[name]
        if self.frozen[name]:
            return
        if not inst.in_flight(0) and not self.reading[name] and 0 not in inst.held():
            self.reading[name] = True
            lag = self.rng.choice([0.0, 0.0, 0.0, 0.5, 2.0])
            now = self.clock.monotonic()

            def read() -> None:
                rev, owner = self.key.read(self.clock.monotonic(), lag)

                def reply() -> None:
                    self.reading[name] = False
                    inst.observed(0, rev, owner)

                self.at(self.clock.monotonic() + self.delay(),
                        lambda: self.deliver(name, reply))

            self.at(now + self.delay(), read)
        for action in inst.actions({0: self.target}):
            self.send(name, action)

    def check(self) -> None:
        owners = {n for n, i in self.inst.items() if 0 in i.owned()}
        if len(owners) > 1:
            self.overlaps.append((self.clock.monotonic(), owners))

    def run(self, seconds: float) -> None:
        end = self.clock.monotonic() + seconds
        next_poll = dict.fromkeys(self.names, self.clock.monotonic())
        while self.clock.monotonic() < end:
            now = self.clock.monotonic()
            if self.rng.random() < 0.004:  # the membership moves the target
                self.target = self.rng.choice(self.names)
            for n in self.names:
                if self.rng.random() < 0.003:  # freeze or thaw
                    self.frozen[n] = not self.frozen[n]
                    if not self.frozen[n]:
                        for fn in self.waiting[n]:
                            fn()
                            self.check()
                        self.waiting[n].clear()
                if now >= next_poll[n]:
                    self.poll(n)
                    next_poll[n] = now + self.settings.poll_s
            step = 0.05
            while self.events and self.events[0][0] <= now + step:
                t, _, fn = heapq.heappop(self.events)
                self.clock.advance(max(0.0, t - self.clock.monotonic()))
                fn()
                self.check()
            self.clock.advance(max(0.0, now + step - self.clock.monotonic()))
            self.check()
            for n, i in self.inst.items():
                if 0 in i.owned():
                    self.owned_time[n] += step


def test_never_two_owners_over_random_interleavings() -> None:
    """120 seeds x 2 minutes of simulated time, 2 or 3 instances: at no event does more
    than one instance consider the partition owned; and the runs really exercised
    takeovers, releases, fences and lost compare-and-sets (so the check is not vacuous)."""
    totals = dict.fromkeys(("acquired", "takeovers", "releases", "fenced", "lost",
                            "failures"), 0)
    owned_time = 0.0
    for seed in range(120):
        names = ("a", "b", "c")[: 2 + seed % 2]
        world = World(seed, names, LeaseSettings(lease_s=3.0, grace_s=0.5, renew_s=0.5,
                                                 poll_s=0.1))
        world.run(120.0)
        assert world.overlaps == [], (seed, world.overlaps[:3])
        for inst in world.inst.values():
            for k, v in inst.statistics().as_dict().items():
                if k in totals:
                    totals[k] += v
        owned_time += sum(world.owned_time.values())
    assert all(v > 30 for v in totals.values()), totals
    assert owned_time > 0.2 * 120 * 120, owned_time  # someone owns it much of the time


def test_unheld_partitions_are_absent_for_a_while_or_lapsed(clock: MockClock) -> None:
    b = leases(clock, "b")
    b.observed(1, None, None)  # absent
    b.observed(2, 10, "a")     # a foreign lease, renewed below
    b.observed(4, 20, "a")     # a foreign lease nobody renews
    assert b.unheld(3.0) == frozenset() and b.unheld() == {1}
    clock.advance(3.0)
    b.observed(2, 11, "a")
    assert b.unheld(3.0) == {1}  # absent for 3 s; the others held
    clock.advance(6.0)
    assert b.unheld(3.0) == {1, 4}  # 4 unchanged for lease_s: its owner stopped renewing
    b.acquire_started(1)
    b.acquired(1, 5)
    assert b.unheld(3.0) == {4}  # held by b now
