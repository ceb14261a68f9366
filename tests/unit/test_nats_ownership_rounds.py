"""The ownership runtime (supervisor/daemon/nats/ownership.py) over an in-memory KV with
the same compare-and-set rules and errors as nats-py's, on the fake clock, one round at a
time (``heartbeat_once``, ``poll_once``, ``settle``): acquisition, release only after
``on_lost``, fencing when the writes fail, takeover of a silent owner's leases even while
its heartbeat goes on, callback errors counted, a clean stop deleting its keys."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError

from modcoord.actors import MockClock
from modcoord.supervisor.daemon.nats.lease import LeaseSettings
from modcoord.supervisor.daemon.nats.membership import MemberInfo
from modcoord.supervisor.daemon.nats.ownership import (
    SUSPECT_HOLD_LEASES,
    LeaseValue,
    Ownership,
    lease_key,
    member_key,
)
from modcoord.supervisor.daemon.nats.partitions import assign

P = 8
S = LeaseSettings()


@dataclass
class Entry:
    value: bytes | None
    revision: int


class FakeKV:
    """A KV bucket: revisions from one sequence, compare-and-set on the last revision,
    delete markers; ``fail`` makes every write raise a timeout. ``log`` records each
    successful write as ``(operation, key)``, shared with the test's callback log."""

    seq = 0

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.data: dict[str, Entry] = {}
        self.deleted: dict[str, int] = {}
        self.log = log
        self.fail = False

    def _next(self) -> int:
        FakeKV.seq += 1
        return FakeKV.seq

    def _check(self) -> None:
        if self.fail:
            raise TimeoutError("nats: timeout")

    async def get(self, key: str) -> Entry:
        if key not in self.data:
            raise KeyNotFoundError
        return self.data[key]

    async def put(self, key: str, value: bytes) -> int:
        self._check()
        self.data[key] = Entry(value, self._next())
        self.deleted.pop(key, None)
        self.log.append(("put", key))
        return self.data[key].revision

    async def create(self, key: str, value: bytes) -> int:
        self._check()
        if key in self.data:
            raise KeyWrongLastSequenceError(description="wrong last sequence")
        return await self.put(key, value)

    async def update(self, key: str, value: bytes, last: int) -> int:
        self._check()
        if key not in self.data or self.data[key].revision != last:
            raise KeyWrongLastSequenceError(description="wrong last sequence")
        return await self.put(key, value)

    async def delete(self, key: str, last: int | None = None) -> bool:
        self._check()
        if last and (key not in self.data or self.data[key].revision != last):
            raise APIError(code=400, err_code=10071, description="wrong last sequence")
        self.data.pop(key, None)
        self.deleted[key] = self._next()
        self.log.append(("delete", key))
        return True

    async def keys(self) -> list[str]:
        if not self.data:
            raise NoKeysError
        return sorted(self.data)


class Harness:
    def __init__(self, clock: MockClock, name: str = "a",
                 on_gained: Callable[[int], Any] | None = None) -> None:
        self.log: list[tuple[str, Any]] = []
        self.members, self.leases = FakeKV(self.log), FakeKV(self.log)
        self.clock = clock
        self.own = Ownership(self.members, self.leases, name, P,  # type: ignore[arg-type]
                             on_gained or (lambda p: self.log.append(("gained", p))),
                             self._lost, settings=S, clock=clock)

    async def _lost(self, p: int) -> None:
        await asyncio.sleep(0)
        self.log.append(("lost", p))

    async def rounds(self, n: int = 3, advance: float = 0.0) -> None:
        for _ in range(n):
            await self.own.poll_once()
            await self.own.settle()
            if advance:
                self.clock.advance(advance)

    def member(self, name: str, started_unix: float = 0.0) -> None:
        """Another instance's heartbeat key (a new revision each call)."""
        info = MemberInfo(instance_id=name, host="h", pid=2, agent_subject="",
                          started_unix=started_unix)
        self.members.data[member_key(name)] = Entry(msgspec.json.encode(info),
                                                    self.members._next())


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_alone_it_acquires_every_partition_and_announces_each(clock: MockClock) -> None:
    async def main() -> None:
        h = Harness(clock)
        await h.own.heartbeat_once()
        assert h.own.live_members() == ("a",)
        await h.rounds()
        assert h.own.owned() == set(range(P))
        assert sorted(p for e, p in h.log if e == "gained") == list(range(P))
        value = msgspec.json.decode(h.leases.data[lease_key(0)].value or b"", type=LeaseValue)
        assert value.owner == "a"
        st = h.own.statistics()
        assert (st.acquired, st.owned, st.heartbeats, st.live_members) == (P, P, 1, 1)

    run(main())


def test_a_partition_moves_to_a_joiner_only_after_on_lost(clock: MockClock) -> None:
    async def main() -> None:
        h = Harness(clock)
        await h.own.heartbeat_once()
        await h.rounds()
        h.member("b")
        await h.own.heartbeat_once()
        assert h.own.live_members() == ("a", "b")
        await h.rounds()
        moved = {p for p, m in assign(P, ["a", "b"]).items() if m == "b"}
        assert moved and h.own.owned() == set(range(P)) - moved
        for p in moved:
            lost_at = h.log.index(("lost", p))
            deleted_at = h.log.index(("delete", lease_key(p)))
            assert lost_at < deleted_at  # the caller was told before the key went
        assert h.own.statistics().releases == len(moved)

    run(main())


def test_failing_writes_fence_every_partition_before_lease_s(clock: MockClock) -> None:
    async def main() -> None:
        h = Harness(clock)
        await h.own.heartbeat_once()
        await h.rounds()
        h.leases.fail = True
        t0 = clock.monotonic()
        while h.own.owned():
            await h.rounds(1, advance=0.25)
            assert clock.monotonic() - t0 <= S.lease_s - S.grace_s + 0.25
        await h.rounds(1)  # the poll that announces it
        assert sorted(p for e, p in h.log if e == "lost") == list(range(P))
        st = h.own.statistics()
        assert st.fenced == P and st.failures > 0 and st.lost == 0
        h.leases.fail = False  # reachable again, nobody took them: renewed, announced again
        await h.rounds(2)
        assert h.own.owned() == set(range(P))
        assert sum(1 for e, _ in h.log if e == "gained") == 2 * P

    run(main())


def test_a_heartbeating_member_that_does_not_hold_leases_cannot_strand_partitions(
        clock: MockClock) -> None:
    """x still writes heartbeats (so it stays a live member) but its leases stay
    unchanged: after lease_s they are taken over, not before, and x is suspect. When the
    suspicion ends, x is given its share back; it does not take it, so lease_s later the
    partitions are taken again: never unowned for longer than about lease_s."""
    async def main() -> None:
        h = Harness(clock)
        value = msgspec.json.encode(LeaseValue("x", 0.0))
        for p in range(P):
            h.leases.data[lease_key(p)] = Entry(value, h.leases._next())
        x_share = {p for p, m in assign(P, ["a", "x"]).items() if m == "x"}
        t0 = clock.monotonic()
        unowned_since: dict[int, float] = dict.fromkeys(range(P), t0)
        longest = 0.0
        released_back = False
        step = 0
        while clock.monotonic() - t0 < (SUSPECT_HOLD_LEASES + 3) * S.lease_s:
            if step % 8 == 0:  # every 2 s
                h.member("x")
                await h.own.heartbeat_once()
            step += 1
            await h.rounds(1, advance=S.poll_s)
            now = clock.monotonic()
            if now - t0 < S.lease_s - S.poll_s:
                assert h.own.owned() == frozenset()  # not before x's leases lapse
            owned = h.own.owned()
            for p in range(P):
                if p in owned:
                    longest = max(longest, now - unowned_since.pop(p, now))
                else:
                    unowned_since.setdefault(p, now)
            if x_share - owned:
                released_back |= now - t0 > SUSPECT_HOLD_LEASES * S.lease_s
        assert h.own.live_members() == ("a", "x")
        assert h.own.owned() == set(range(P))
        assert released_back  # the suspicion ended once and x got its share back
        assert h.own.statistics().takeovers == P
        assert h.own.statistics().releases == len(x_share)
        assert longest <= S.lease_s + 1.0, longest
        assert h.own.suspects() == ("x",)

    run(main())


def test_a_suspect_that_restarts_gets_its_share_at_once(clock: MockClock) -> None:
    async def main() -> None:
        h = Harness(clock)
        value = msgspec.json.encode(LeaseValue("x", 0.0))
        for p in range(P):
            h.leases.data[lease_key(p)] = Entry(value, h.leases._next())
        for step in range(int(S.lease_s / S.poll_s) + 4):
            if step % 8 == 0:
                h.member("x")
                await h.own.heartbeat_once()
            await h.rounds(1, advance=S.poll_s)
        assert h.own.owned() == set(range(P)) and h.own.suspects() == ("x",)
        h.member("x", started_unix=1.0)  # x restarted (same id): a new incarnation
        await h.own.heartbeat_once()
        await h.rounds(3)
        x_share = {p for p, m in assign(P, ["a", "x"]).items() if m == "x"}
        assert h.own.suspects() == ()
        assert h.own.owned() == set(range(P)) - x_share

    run(main())


def test_callback_errors_are_counted_and_do_not_stop_ownership(clock: MockClock) -> None:
    def boom(p: int) -> None:
        raise RuntimeError("callback failed")

    async def main() -> None:
        h = Harness(clock, on_gained=boom)
        await h.own.heartbeat_once()
        await h.rounds()
        assert h.own.owned() == set(range(P))
        assert h.own.statistics().callback_errors == P

    run(main())


@pytest.mark.parametrize("release", [True, False])
def test_stop_releases_only_when_asked(clock: MockClock, release: bool) -> None:
    async def main() -> None:
        h = Harness(clock)
        await h.own.heartbeat_once()
        await h.rounds()
        await h.own.stop(release=release)
        if release:
            assert not h.leases.data and member_key("a") not in h.members.data
            assert sorted(p for e, p in h.log if e == "lost") == list(range(P))
        else:  # a crash: every key stays and lapses
            assert len(h.leases.data) == P and member_key("a") in h.members.data

    run(main())
