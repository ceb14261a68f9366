"""Resource awareness (``adaptive.resources``) on a MockClock with fake readers: the real
memory manager actor checks every second; resident memory, available memory and CPU time
are what the test says. Escalation one step at a time, the cache cap (evictions counted
and logged), hysteresis and hold time, CPU widening within bounds, MANUAL and
``adaptive.enabled: false``. Through the real daemon: ``integration/
test_resources_daemon.py``."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from actor_harness import ActorRig, edited, packaged
from actor_harness import actor_logs as _actor_logs
from pydantic import ValidationError

from modcoord.actors._base import Handover, Reconfigure, Statistics
from modcoord.actors.adaptive import BatchTuner, DebounceTuner
from modcoord.actors.clock import MockClock
from modcoord.actors.memory import MemoryHandover, MemoryManagerActor, MemoryStatistics
from modcoord.actors.resources import ResourceGovernor, escalated
from modcoord.actors.rules import ResourcePressureRule, rule_snapshot
from modcoord.actors.settings import ModeSettings, actor_settings
from modcoord.actors.shared.pressure import Widening

MB = 1024 * 1024
actor_logs = contextlib.contextmanager(_actor_logs)


def hybrid(**resources: Any) -> ModeSettings:
    """HYBRID with a conservative strategy (two steps to escalate), checks every second,
    no sweeps in the way, and ``resources`` over the packaged ``adaptive.resources``."""
    return edited(packaged(), memory={"strategy": "conservative", "check_interval_ms": 1000.0,
                                      "cleanup_interval_ms": 3_600_000.0, "max_rss_mb": 100.0},
                  adaptive={"resources": {"hold_ms": 5000.0, "cpu_window_ms": 4000.0,
                                          **resources}})


class Machine(ActorRig[MockClock]):
    """The memory manager with fake readers: ``rss`` and ``available`` (bytes) and ``cpu``
    (seconds used) are what the next check reads; ``cpu_rate`` CPU seconds accrue per
    second of clock time; one CPU."""

    def __init__(self, settings: ModeSettings, mode: str = "HYBRID") -> None:
        self.rss = 20 * MB
        self.available = 8000 * MB
        self.cpu = 0.0
        self.cpu_rate = 0.0
        self.mode = mode
        super().__init__(
            MockClock(), "memory", MemoryManagerActor,
            actor_settings(settings, "memory", mode), others=("cache", "batcher", "monitor"),
            rss_reader=lambda: self.rss, available_reader=lambda: self.available,
            cpu_reader=lambda: self.cpu, cpu_capacity=1)
        self.store = self.context.shared.cache_store
        self.store.reconfigure(settings.cache)
        self.start()

    def fill(self, n: int) -> None:
        for i in range(n):
            self.store.put(f"k{i}", i)

    def stats(self) -> MemoryStatistics:
        stats: MemoryStatistics = self.ask(Statistics())
        return stats

    def seconds(self, n: int) -> MemoryStatistics:
        """Let ``n`` checks run, one a second."""
        for _ in range(n):
            self.cpu += self.cpu_rate
            self.clock.advance(1.0)
            self.stats()
        return self.stats()

    def reload(self, settings: ModeSettings) -> None:
        self.ask(Reconfigure(actor_settings(settings, "memory", self.mode)))


def levels(stats: MemoryStatistics) -> tuple[str, Any, int]:
    r = stats.resources
    assert r.strategy is not None and r.cache_cap is not None
    return str(r.strategy.effective), r.cache_cap.effective, r.memory_level


# -- memory ----------------------------------------------------------------------------------


def test_memory_pressure_escalates_one_step_per_hold_and_caps_the_cache() -> None:
    m = Machine(hybrid())
    m.fill(1000)
    assert levels(m.seconds(2)) == ("conservative", 1000, 0)
    with actor_logs("memory") as records:
        m.rss = 95 * MB  # above 0.9 x memory.max_rss_mb 100
        stats = m.seconds(1)
        assert levels(stats) == ("balanced", 500, 1)  # the first step is immediate
        assert stats.strategy == "balanced"  # what a cleanup runs now
        assert len(m.store) == 500 and m.store.statistics().max_size == 500
        assert stats.resources.cache_evicted == 500  # counted ...
        evicted = [r for r in records if r["message"].startswith("cache capped")]
        assert evicted and evicted[0]["extra"]["entries_evicted"] == 500  # ... and logged
        assert levels(m.seconds(4)) == ("balanced", 500, 1)  # held hold_ms 5000
        stats = m.seconds(1)
        assert levels(stats) == ("aggressive", 250, 2)
        assert levels(m.seconds(20)) == ("aggressive", 250, 2)  # two steps at most
        steps = [r for r in records if r["message"].startswith("memory pressure: strategy")]
        assert [r["extra"]["strategy"] for r in steps] == ["balanced", "aggressive"]
        assert steps[0]["extra"]["previous_strategy"] == "conservative"
        assert "rss 95.0 MB above 0.9 of memory.max_rss_mb 100" in steps[0]["extra"]["why"]
    assert stats.resources.escalations == 2 and stats.resources.cache_evicted == 750
    assert m.store.statistics().evictions_size == 750
    param = stats.resources.strategy
    assert param is not None and param.configured == "conservative"
    assert "memory pressure (rss 95.0 MB" in param.reason


def test_no_flapping_between_the_thresholds_and_relaxing_waits_for_the_hold() -> None:
    m = Machine(hybrid())
    m.rss = 91 * MB
    assert levels(m.seconds(1))[2] == 1
    for rss in (89, 91, 80, 88, 76, 90) * 3:  # between exit 75 and enter 90, or just over
        m.rss = rss * MB
        m.seconds(1)
    stats = m.stats()
    # 18 s hovering: a step up at most every 5 s, and never a step down above 75 MB.
    assert stats.resources.relaxations == 0 and levels(stats)[2] == 2
    m.rss = 60 * MB
    stats = m.seconds(1)  # the last change was long enough ago: one step down
    assert levels(stats) == ("balanced", 500, 1)
    assert levels(m.seconds(4)) == ("balanced", 500, 1)  # held
    stats = m.seconds(1)
    assert levels(stats) == ("conservative", 1000, 0)
    assert m.store.cap_limit is None and m.store.statistics().max_size == 1000
    assert stats.resources.relaxations == 2
    assert "pressure gone: rss 60.0 MB below 0.75" in stats.resources.memory_reason


def test_low_available_memory_escalates_and_must_recover_past_the_exit_floor() -> None:
    m = Machine(hybrid(available_enter_mb=256.0, available_exit_mb=512.0))
    m.available = 200 * MB
    stats = m.seconds(1)
    assert levels(stats)[2] == 1
    assert "available memory 200 MB below adaptive.resources.available_enter_mb 256" \
        in stats.resources.memory_reason
    m.available = 400 * MB  # above the entry floor, not past the exit one
    assert levels(m.seconds(10))[2] == 1
    m.available = 600 * MB
    assert levels(m.seconds(1))[2] == 0


def test_a_live_reload_raising_the_limit_relaxes() -> None:
    settings = hybrid(hold_ms=0.0)
    m = Machine(settings)
    m.rss = 150 * MB
    assert levels(m.seconds(2))[2] == 2
    m.reload(edited(settings, memory={"max_rss_mb": 400.0}))
    assert levels(m.seconds(2)) == ("conservative", 1000, 0)


def test_a_failing_reader_is_logged_once_and_judges_nothing() -> None:
    m = Machine(hybrid(available_enter_mb=256.0, available_exit_mb=512.0))

    def broken() -> int:
        raise OSError("no /proc")

    m.available = 100 * MB
    assert levels(m.seconds(1))[2] == 1
    with actor_logs("memory") as records:
        object.__setattr__(m.context.shared, "available_reader", broken)
        stats = m.seconds(3)
    failures = [r for r in records if r["message"] == "cannot read a resource"]
    assert len(failures) == 1 and failures[0]["extra"]["resource"] == "available memory"
    assert levels(stats)[2] == 1  # not relaxed on a reading it could not make


# -- CPU -------------------------------------------------------------------------------------


def test_cpu_saturation_widens_within_bounds_and_relaxes_with_hysteresis() -> None:
    settings = hybrid(cpu_widen_factor=2.0)
    m = Machine(settings)
    widening = m.context.shared.widening
    m.cpu_rate = 0.95  # 95% of the one CPU
    stats = m.seconds(1)
    assert widening.factor == 1.0 and stats.resources.cpu_fraction is None  # measuring
    stats = m.seconds(2)  # half of cpu_window_ms 4000 covered
    assert stats.resources.cpu_fraction == pytest.approx(0.95)
    assert widening.factor == 2.0 and stats.resources.widening
    widen = stats.resources.widen
    assert widen is not None and (widen.configured, widen.effective) == (1.0, 2.0)
    assert "daemon CPU 95% of 1 CPU" in widen.reason
    m.cpu_rate = 0.7  # between exit 0.6 and enter 0.9: stays widened
    assert m.seconds(10).resources.widening
    m.cpu_rate = 0.1
    stats = m.seconds(6)
    assert not stats.resources.widening and widening.factor == 1.0
    # The tuners multiply by the shared factor, never past their bounds.
    deb = DebounceTuner(settings.debounce, settings.adaptive, widening=widening)
    bat = BatchTuner(settings.batch, settings.adaptive, now=0.0, widening=widening)
    assert deb.delay_for("m", "k", 0.0) == pytest.approx(0.300)  # configured, learning
    assert bat.window_s(1, 0.0) == pytest.approx(0.020)  # light load: min_window_ms
    widening.set(2.0, "test")
    assert deb.delay_for("m", "k", 0.5) == pytest.approx(0.600)  # = adaptive max_ms 600
    widening.set(3.0, "test")
    assert deb.delay_for("m", "k", 1.0) == pytest.approx(0.600)  # never past max_ms
    assert bat.window_s(0, 1.0) == pytest.approx(0.060)
    widening.set(10.0, "test")
    assert bat.window_s(0, 2.0) == pytest.approx(0.100)  # never past batch.window_ms
    summary = deb.summary(2.0).parameters["debounce.delay_ms"]
    assert summary.effective == 600.0 and "widened x10" in summary.reason


def test_the_governor_alone_needs_half_a_window_and_restarts_on_a_reset_reader() -> None:
    gov = ResourceGovernor(hybrid().adaptive.resources, capacity=2)
    memory = hybrid().memory
    assert gov.observe(0.0, memory, None, None, 10.0).cpu_step == 0
    assert gov.observe(1.0, memory, None, None, 11.9).cpu_step == 0  # 1 s < 2 s
    assert gov.observe(2.0, memory, None, None, 13.8).cpu_step == 1  # 3.8 / 2 s / 2 CPUs
    assert gov.cpu_fraction == pytest.approx(0.95)
    assert gov.observe(3.0, memory, None, None, 0.5).cpu_step == 0  # went back: start over
    assert escalated("aggressive", 1) == "aggressive" and escalated("balanced", 1) == \
        "aggressive"


# -- what never adapts -----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["MANUAL", "adaptive.enabled false",
                                 "adaptive.resources.enabled false"])
def test_manual_and_disabled_never_adapt(how: str) -> None:
    if how == "MANUAL":
        settings, mode = edited(packaged("MANUAL"), memory={"check_interval_ms": 1000.0}), \
            "MANUAL"
    elif how == "adaptive.enabled false":
        settings, mode = edited(hybrid(), adaptive={"enabled": False}), "HYBRID"
    else:
        settings, mode = edited(hybrid(), adaptive={"resources": {"enabled": False}}), \
            "HYBRID"
    m = Machine(settings, mode)
    m.fill(1000)
    m.rss = 500 * MB
    m.cpu_rate = 1.0
    stats = m.seconds(12)
    assert not stats.resources.enabled
    assert stats.strategy == settings.memory.strategy
    assert len(m.store) == 1000 and m.store.cap_limit is None
    assert m.context.shared.widening.factor == 1.0
    strategy = stats.resources.strategy
    assert strategy is not None and strategy.effective == strategy.configured
    assert "false" in strategy.reason
    assert rule_snapshot({}, {}, 60.0, adaptive=[stats.resources]).resources is None


def test_turning_adaptation_off_by_reload_restores_the_configured_values() -> None:
    settings = hybrid()
    m = Machine(settings)
    m.rss = 95 * MB
    assert levels(m.seconds(1))[2] == 1 and m.store.cap_limit == 500
    m.reload(edited(settings, adaptive={"enabled": False}))
    stats = m.stats()
    assert not stats.resources.enabled and stats.strategy == "conservative"
    assert m.store.cap_limit is None


# -- settings and the insight ----------------------------------------------------------------


@pytest.mark.parametrize(("resources", "message"), [
    ({"memory_exit_fraction": 0.95}, "memory_exit_fraction must be below"),
    ({"cpu_exit_fraction": 0.9}, "cpu_exit_fraction must be below"),
    ({"available_enter_mb": 512.0, "available_exit_mb": 256.0},
     "available_exit_mb must be above"),
    ({"cpu_widen_factor": 0.5}, "greater than or equal to 1"),
    ({"bogus": 1}, "Extra inputs are not permitted"),
])
def test_bad_resource_settings_are_refused(resources: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        edited(packaged(), adaptive={"resources": resources})


def test_the_packaged_modes_watch_resources_except_manual() -> None:
    assert packaged("HYBRID").adaptive.resources.enabled
    assert packaged("FULLY_AUTO").adaptive.resources.cache_cap_fraction < \
        packaged("HYBRID").adaptive.resources.cache_cap_fraction
    assert not packaged("MANUAL").adaptive.resources.enabled


def test_the_insight_says_what_escalated_and_which_key_to_raise() -> None:
    m = Machine(hybrid())
    m.rss = 95 * MB
    m.cpu_rate = 0.99
    stats = m.seconds(3)
    snapshot = rule_snapshot({}, {}, 60.0, adaptive=[stats.resources])
    reading = ResourcePressureRule().read(snapshot, packaged().monitor)
    assert reading is not None and reading.breached and reading.observed == 2.0
    assert reading.recommendation is not None
    assert "strategy escalated to balanced, cache capped at 500 of 1000 entries: raise " \
        "memory.max_rss_mb" in reading.recommendation
    assert "widened x1.5" in reading.recommendation
    m.rss, m.cpu_rate = 10 * MB, 0.0
    stats = m.seconds(12)
    calm = ResourcePressureRule().read(
        rule_snapshot({}, {}, 60.0, adaptive=[stats.resources]), packaged().monitor)
    assert calm is not None and not calm.breached and calm.recovered


def test_widening_is_clamped_to_at_least_one() -> None:
    w = Widening()
    w.set(0.2, "odd")
    assert w.factor == 1.0


def test_a_successor_takes_over_the_memory_level_and_keeps_the_cap() -> None:
    m = Machine(hybrid())
    m.fill(1000)
    m.rss = 95 * MB
    m.seconds(6)
    assert levels(m.stats())[2] == 2 and len(m.store) == 250
    pending = m.ask(Handover())
    assert isinstance(pending, MemoryHandover) and pending.pressure_level == 2
    for source in (pending, pending.as_dict()):
        m.handle.suspend()
        m.start(source)
        stats = m.stats()
        assert levels(stats) == ("aggressive", 250, 2)
        assert m.store.cap_limit == 250
        assert m.ask(Handover()) is not None  # stop it for the next round
    m.handle.suspend()
    m.start()  # a restart without a handover starts at level 0: the cap is lifted
    assert levels(m.stats()) == ("conservative", 1000, 0) and m.store.cap_limit is None


def test_the_cap_follows_a_reloaded_cache_max_entries() -> None:
    settings = hybrid()
    m = Machine(settings)
    m.rss = 95 * MB
    m.seconds(1)
    assert m.store.cap_limit == 500
    m.store.reconfigure(edited(settings, cache={"max_entries": 400}).cache)  # the cache actor
    stats = m.seconds(1)  # held: no step, but the cap follows the new size
    assert m.store.cap_limit == 200 and levels(stats) == ("balanced", 200, 1)
