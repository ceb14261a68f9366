"""Who is alive, seen from one instance (supervisor/daemon/nats/membership.py), on the
fake clock."""

from __future__ import annotations

import pytest

from modcoord.actors import MockClock
from modcoord.supervisor.daemon.nats.membership import MEMBER_TIMEOUT_S, MemberInfo, Membership


def info(instance_id: str, partitions: tuple[int, ...] = ()) -> MemberInfo:
    return MemberInfo(instance_id=instance_id, host="h", pid=1,
                      agent_subject=f"modcoord.dlv.{instance_id}", started_unix=0.0,
                      partitions=partitions)


def test_a_member_lives_while_its_revision_changes(clock: MockClock) -> None:
    m = Membership(clock)
    assert m.timeout_s == MEMBER_TIMEOUT_S
    m.observe("a", 1, info("a"))
    m.observe("b", 2, info("b"))
    assert m.live() == ("a", "b")
    for rev in range(3, 10):  # a keeps writing heartbeats, b is silent
        clock.advance(2.0)
        m.observe("a", rev * 10, info("a", (rev,)))
        m.observe("b", 2, info("b"))  # the same revision read again: no sign of life
    assert m.live() == ("a",)
    assert dict(m.members()) == {"a": info("a", (9,))}
    assert m.known() == ("a", "b")  # remembered, so that rereading rev 2 cannot revive b


def test_the_timeout_counts_on_the_local_clock_from_first_sight(clock: MockClock) -> None:
    m = Membership(clock, timeout_s=10.0)
    m.observe("a", 5, info("a"))
    clock.advance(9.99)
    assert m.live() == ("a",)
    clock.advance(0.01)
    assert m.live() == ()
    m.observe("a", 6, info("a"))  # a new heartbeat brings it back
    assert m.live() == ("a",)


def test_a_stale_older_revision_is_ignored(clock: MockClock) -> None:
    m = Membership(clock, timeout_s=10.0)
    m.observe("a", 5, info("a", (1,)))
    clock.advance(6)
    m.observe("a", 4, info("a", (2,)))
    assert dict(m.members()) == {"a": info("a", (1,))}
    clock.advance(4)
    assert m.live() == ()


def test_removed_forgets_a_member_and_unknown_ones_are_ignored(clock: MockClock) -> None:
    m = Membership(clock)
    m.observe("a", 1, info("a"))
    m.removed("a")
    m.removed("never-seen")
    assert m.live() == () and m.known() == ()
    m.observe("a", 1, info("a"))  # a new key (re-created after the delete)
    assert m.live() == ("a",)


def test_time_cut_off_from_the_bucket_does_not_count(clock: MockClock) -> None:
    """An instance that cannot read the members for longer than the timeout does not
    conclude that everyone died; afterwards a silent member still times out."""
    m = Membership(clock, timeout_s=10.0)
    m.observe("a", 1, info("a"))
    clock.advance(5)
    m.scan_failed()
    clock.advance(30)
    m.scan_failed()  # still blind: the start of the blind period is kept
    assert m.live() == ("a",)
    m.scan_succeeded()
    assert m.live() == ("a",)
    clock.advance(4.99)
    assert m.live() == ("a",)
    clock.advance(0.01)
    assert m.live() == ()
    m.scan_succeeded()  # not blind: nothing changes


def test_a_bad_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        Membership(MockClock(), timeout_s=0)
