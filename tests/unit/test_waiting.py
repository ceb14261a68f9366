"""The waiting strategy (:class:`~modcoord.supervisor.protocol.waiting.SpinPolicy`): spin
only when it pays — never when no CPU is idle, and not for a while after spins that did
not pay. Deterministic: a MockClock and a fake idle-CPU probe."""

from __future__ import annotations

import math

import pytest

from modcoord.actors.clock import MockClock
from modcoord.supervisor.protocol import waiting
from modcoord.supervisor.protocol.waiting import (
    BACKOFF_MAX_S,
    BACKOFF_MIN_S,
    MISSES_TO_BACK_OFF,
    PROBE_INTERVAL_S,
    SPIN_S,
    SpinPolicy,
    WaitStatistics,
)


class FakeProbe:
    """Idle CPUs as the test says; counts its samples."""

    def __init__(self, idle: float) -> None:
        self.idle = idle
        self.samples = 0

    def __call__(self) -> float:
        self.samples += 1
        return self.idle


def policy(idle: float = 1.0) -> tuple[SpinPolicy, MockClock, FakeProbe]:
    clock, probe = MockClock(), FakeProbe(idle)
    return SpinPolicy(clock=clock.monotonic, probe=probe), clock, probe


def test_an_idle_machine_spins() -> None:
    p, _, _ = policy(idle=1.0)
    assert p.spin_budget() == SPIN_S
    assert p.statistics() == WaitStatistics(spins=1, idle_probes=1)


def test_no_idle_cpu_blocks_at_once() -> None:
    p, _, _ = policy(idle=0.0)
    assert [p.spin_budget() for _ in range(5)] == [0.0] * 5
    assert p.statistics().blocked_busy == 5
    assert p.statistics().spins == 0


def test_the_probe_is_sampled_at_most_once_per_interval() -> None:
    p, clock, probe = policy(idle=0.0)
    for _ in range(1000):
        p.spin_budget()
    assert probe.samples == 1
    clock.advance(PROBE_INTERVAL_S / 2)
    p.spin_budget()
    assert probe.samples == 1
    clock.advance(PROBE_INTERVAL_S / 2)
    p.spin_budget()
    assert probe.samples == 2
    assert p.statistics().idle_probes == 2


def test_the_decision_follows_the_machine_between_samples() -> None:
    p, clock, probe = policy(idle=0.0)
    assert p.spin_budget() == 0.0
    probe.idle = 1.0  # the burners stopped: the old sample still holds until the next
    assert p.spin_budget() == 0.0
    clock.advance(PROBE_INTERVAL_S)
    assert p.spin_budget() == SPIN_S
    probe.idle = -1.0  # busier than the CPUs
    clock.advance(PROBE_INTERVAL_S)
    assert p.spin_budget() == 0.0


def test_unknown_idle_counts_as_idle_and_a_failing_probe_breaks_nothing() -> None:
    clock = MockClock()
    assert SpinPolicy(clock=clock.monotonic, probe=lambda: math.inf).spin_budget() == SPIN_S

    def broken() -> float:
        raise OSError("no /proc")

    assert SpinPolicy(clock=clock.monotonic, probe=broken).spin_budget() == SPIN_S


def test_spins_that_do_not_pay_make_waits_block_for_a_while() -> None:
    p, clock, _ = policy(idle=4.0)
    for _ in range(MISSES_TO_BACK_OFF):
        assert p.spin_budget() == SPIN_S
        p.spun(False)
    # backing off: blocks at once although CPUs are idle
    assert p.spin_budget() == 0.0
    clock.advance(BACKOFF_MIN_S / 2)
    assert p.spin_budget() == 0.0
    assert p.statistics().blocked_backoff == 2
    clock.advance(BACKOFF_MIN_S / 2)
    assert p.spin_budget() == SPIN_S  # the back-off is over: try spinning again


def test_one_paid_spin_breaks_a_streak_of_misses() -> None:
    p, _, _ = policy()
    for _ in range(MISSES_TO_BACK_OFF - 1):
        p.spin_budget()
        p.spun(False)
    p.spin_budget()
    p.spun(True)
    for _ in range(MISSES_TO_BACK_OFF - 1):
        p.spin_budget()
        p.spun(False)
    assert p.spin_budget() == SPIN_S
    assert p.statistics().spins_paid == 1


STEP = 0.001


def backoff_after_streak(p: SpinPolicy, clock: MockClock) -> float:
    """Miss a streak, then measure (in MockClock steps of 1 ms) how long waits block."""
    for _ in range(MISSES_TO_BACK_OFF):
        assert p.spin_budget() == SPIN_S
        p.spun(False)
    blocked = 0.0
    while p.spin_budget() == 0.0:
        clock.advance(STEP)
        blocked += STEP
    return blocked


def test_the_back_off_doubles_with_each_streak_up_to_its_bound_and_decays() -> None:
    p, clock, _ = policy()
    lengths = [backoff_after_streak(p, clock) for _ in range(12)]
    assert lengths[0] == pytest.approx(BACKOFF_MIN_S, abs=1.5 * STEP)
    assert lengths[1] == pytest.approx(2 * BACKOFF_MIN_S, abs=1.5 * STEP)
    assert lengths[2] == pytest.approx(4 * BACKOFF_MIN_S, abs=1.5 * STEP)
    assert max(lengths) == pytest.approx(BACKOFF_MAX_S, abs=1.5 * STEP)
    assert lengths[-1] == pytest.approx(BACKOFF_MAX_S, abs=1.5 * STEP)
    # decay: each paid spin halves the next back-off
    p.spun(True)
    p.spun(True)
    assert backoff_after_streak(p, clock) == pytest.approx(BACKOFF_MAX_S / 4, abs=1.5 * STEP)


def back_off_at_most(p: SpinPolicy, clock: MockClock) -> None:
    """Streaks of misses until the back-off is at its bound; leaves it backing off."""
    for _ in range(12):
        backoff_after_streak(p, clock)
    for _ in range(MISSES_TO_BACK_OFF):
        assert p.spin_budget() == SPIN_S
        p.spun(False)
    assert p.spin_budget() == 0.0


def test_fast_answers_while_backing_off_end_the_back_off_early() -> None:
    p, clock, _ = policy()
    back_off_at_most(p, clock)  # a run of slow answers: a back-off of BACKOFF_MAX_S
    p.blocked(SPIN_S / 4)
    for _ in range(MISSES_TO_BACK_OFF - 1):
        assert p.spin_budget() == 0.0  # still backing off, a fast answer each time
        p.blocked(SPIN_S / 4)
    assert p.spin_budget() == SPIN_S  # at once, not after a second: spins pay again
    # and the next back-off is half as long
    assert backoff_after_streak(p, clock) == pytest.approx(BACKOFF_MAX_S / 2, abs=1.5 * STEP)


def test_a_slow_answer_among_the_fast_ones_keeps_the_back_off() -> None:
    p, clock, _ = policy()
    back_off_at_most(p, clock)
    for _ in range(MISSES_TO_BACK_OFF - 1):
        p.blocked(SPIN_S / 4)
        assert p.spin_budget() == 0.0
    p.blocked(SPIN_S * 3)  # longer than a spin: spinning would not have paid
    for _ in range(MISSES_TO_BACK_OFF - 1):
        assert p.spin_budget() == 0.0
        p.blocked(SPIN_S / 4)
    assert p.spin_budget() == 0.0  # three fast in a row since the slow one: not yet
    p.blocked(SPIN_S / 4)
    assert p.spin_budget() == SPIN_S


def test_waits_blocked_for_lack_of_an_idle_cpu_do_not_end_anything() -> None:
    p, clock, probe = policy(idle=0.0)
    for _ in range(3 * MISSES_TO_BACK_OFF):
        assert p.spin_budget() == 0.0
        p.blocked(SPIN_S / 4)  # fast, but the CPUs are busy: blocking is the point
    assert p.statistics().blocked_busy == 3 * MISSES_TO_BACK_OFF
    probe.idle = 1.0
    clock.advance(PROBE_INTERVAL_S)
    assert p.spin_budget() == SPIN_S


def test_zero_spin_never_spins() -> None:
    clock = MockClock()
    assert SpinPolicy(clock=clock.monotonic, probe=lambda: 2.0, spin_s=0.0).spin_budget() == 0


def test_the_snapshot_is_immutable() -> None:
    p, _, _ = policy()
    snap = p.statistics()
    p.spin_budget()
    assert snap.spins == 0 and p.statistics().spins == 1
    with pytest.raises(AttributeError):
        snap.spins = 5  # type: ignore[misc]


def test_idle_cpus_reads_the_runnable_count(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: object) -> None:
    import os
    from pathlib import Path

    fake = Path(str(tmp_path)) / "loadavg"
    fake.write_bytes(b"3.10 2.00 1.00 5/180 4242\n")
    monkeypatch.setattr(waiting, "_LOADAVG", str(fake))
    monkeypatch.setattr(waiting, "_loadavg_fd", None)
    monkeypatch.setattr(waiting, "_cpus", 2)
    assert waiting.idle_cpus() == 2 - (5 - 1)
    fake.write_bytes(b"0.10 0.00 0.00 1/180 4242\n")
    assert waiting.idle_cpus() == 2.0  # the caller alone runs
    fake.write_bytes(b"garbage\n")
    assert waiting.idle_cpus() == math.inf
    os.close(waiting._loadavg_fd or -1)
    monkeypatch.setattr(waiting, "_loadavg_fd", None)
    monkeypatch.setattr(waiting, "_LOADAVG", str(fake) + ".missing")
    assert waiting.idle_cpus() == math.inf
