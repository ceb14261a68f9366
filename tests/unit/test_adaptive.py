"""Adaptive debouncing and batching on a MockClock: a trace in, effective values and
deliveries out. The real debouncer and batcher actors run as in the daemon (the batcher
delivering to a recording sink); time moves from timer to timer, each actor drained before
it moves on, so every timing is exact. Through the real daemon: ``integration/
test_adaptive_daemon.py``."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest
from actor_harness import actor_logs, edited, packaged
from pydantic import ValidationError

from modcoord.actors import ActorContext, ActorHandle, MockClock, Shared, Statistics, Update
from modcoord.actors.adaptive import (
    GAP_RATIO,
    BatchTuner,
    DebounceTuner,
    DecayedGapHistogram,
)
from modcoord.actors.batcher import BatcherActor, QueueDepth, Subscribe
from modcoord.actors.debouncer import DebouncerActor, Pending, PublishMany
from modcoord.actors.errors import ConfigError
from modcoord.actors.rules import AdaptationRule, AdaptiveBoundRule, rule_snapshot
from modcoord.actors.settings import ModeSettings, Tuned, actor_settings
from modcoord.actors.update import Batch
from modcoord.supervisor.daemon.config import default_config_dir, load_config_dir

Trace = list[tuple[float, str, str, str]]  # (time, module, key, priority)


class Pipe:
    """The debouncer and the batcher on a MockClock, delivering to a recording sink."""

    def __init__(self, debounce: Any, batch: Any, start: float = 0.0) -> None:
        self.clock = MockClock(start)
        self.deliveries: list[tuple[float, Batch]] = []
        clock = self.clock

        def deliver(subscriber: str, batch_: Batch) -> None:
            self.deliveries.append((clock.monotonic(), batch_))

        shared = Shared.create(clock, deliver=deliver)
        self.handles = {n: ActorHandle(n) for n in ("debouncer", "batcher")}
        ctx = ActorContext(clock, self.handles, shared=shared)
        self.handles["batcher"].install(BatcherActor.start(batch, ctx))
        self.handles["debouncer"].install(DebouncerActor.start(debounce, ctx))
        self.handles["batcher"].ask(Subscribe("sink", ("*",)), timeout=5)
        self.seq = 0

    @classmethod
    def of(cls, settings: ModeSettings, mode: str = "HYBRID") -> Pipe:
        return cls(actor_settings(settings, "debounce", mode),
                   actor_settings(settings, "batch", mode))

    def drain(self) -> None:
        self.handles["debouncer"].ask(Pending(), timeout=5)
        self.handles["batcher"].ask(QueueDepth(), timeout=5)

    def advance_to(self, t: float) -> None:
        clock = self.clock
        while True:
            due = clock.next_deadline()
            if due is None or due > t:
                break
            clock.advance(max(0.0, due - clock.monotonic()))
            self.drain()
        clock.advance(max(0.0, t - clock.monotonic()))
        self.drain()

    def publish(self, module: str, key: str, priority: str = "medium") -> None:
        self.seq += 1
        now = self.clock.monotonic()
        update = Update(module, key, {"n": self.seq}, priority, self.seq, now)
        self.handles["debouncer"].tell(PublishMany((update,)))
        self.drain()

    def replay(self, trace: Trace, tail: float = 5.0) -> None:
        for at, module, key, priority in trace:
            self.advance_to(at)
            self.publish(module, key, priority)
        self.advance_to(self.clock.monotonic() + tail)

    def stats(self, actor: str) -> Any:
        return self.handles[actor].ask(Statistics(), timeout=5)

    def delivered(self) -> list[tuple[float, str, str, int, str]]:
        """(time, module, key, seq, reason) of every delivered update."""
        return [(t, u.module_id, u.key, u.seq, b.reason)
                for t, b in self.deliveries for u in b.updates]

    def latencies(self) -> list[float]:
        return [t - u.published_at for t, b in self.deliveries for u in b.updates]


def typing(module: str, key: str, start: float, gaps: Sequence[float],
           priority: str = "medium") -> Trace:
    out: Trace = []
    t = start
    for gap in (0.0, *gaps):
        t += gap
        out.append((t, module, key, priority))
    return out


def bursts(module: str, key: str, lo: float, hi: float, n_bursts: int, per_burst: int,
           seed: int, start: float = 0.0, pause: float = 2.0) -> Trace:
    rng = random.Random(seed)
    out: Trace = []
    t = start
    for _ in range(n_bursts):
        for _ in range(per_burst):
            out.append((t, module, key, "medium"))
            t += rng.uniform(lo, hi)
        t += pause
    return out


# -- the estimator ---------------------------------------------------------------------------


def test_the_decayed_histogram_gives_the_quantile_and_forgets_old_gaps() -> None:
    rng = random.Random(1)
    hist = DecayedGapHistogram(half_life_samples=50)
    for _ in range(400):
        hist.add(rng.uniform(40.0, 80.0))
    assert 76.0 / GAP_RATIO <= hist.quantile(0.9) <= 76.0 * GAP_RATIO
    assert 60.0 / GAP_RATIO <= hist.quantile(0.5) <= 60.0 * GAP_RATIO
    for _ in range(400):  # the typist slows down: eight half-lives later, old gaps weigh 1/256
        hist.add(rng.uniform(150.0, 200.0))
    assert 195.0 / GAP_RATIO <= hist.quantile(0.9) <= 195.0 * GAP_RATIO
    assert hist.quantile(0.05) > 100.0  # the fast gaps are all but forgotten


def test_the_histogram_survives_weights_growing_past_the_rescale_point() -> None:
    hist = DecayedGapHistogram(half_life_samples=2)  # weights double every 2 samples
    for _ in range(2000):  # 2**1000 would overflow without rescaling
        hist.add(100.0)
    assert 100.0 / GAP_RATIO <= hist.quantile(0.9) <= 100.0 * GAP_RATIO
    assert hist.total < 1e120


# -- adaptive debouncing ---------------------------------------------------------------------


def test_a_fast_typist_gets_a_shorter_delay_and_its_bursts_still_collapse() -> None:
    settings = packaged("HYBRID")
    pipe = Pipe.of(edited(settings, batch={"enabled": False}))
    trace = bursts("editor", "text", 0.050, 0.070, n_bursts=6, per_burst=10, seed=3)
    pipe.replay(trace)
    delivered = pipe.delivered()
    deb = pipe.stats("debouncer")
    param = deb.adaptive.parameters["debounce.delay_ms"]
    assert param.configured == 300.0
    # p90 of gaps in [50, 70] ms is ~68 ms; x 1.2 ~ 82 ms (bucket precision 12 %).
    assert 70.0 <= param.effective <= 95.0, param
    assert param.reason.startswith("publish gap p90"), param
    assert len(delivered) == 6  # every burst collapsed to its last keystroke
    assert deb.collapsed == 54
    last_of_bursts = [trace[i * 10 + 9][0] for i in range(6)]
    waits = [t - last for (t, *_), last in zip(delivered, last_of_bursts, strict=True)]
    # Ten keystrokes are nine gaps, past min_samples (8): learnt within the first burst.
    for w in waits:
        assert 0.060 <= w <= 0.095, waits  # not the configured 300 ms
    assert waits[-1] == pytest.approx(param.effective / 1000.0, abs=0.001)


def test_a_new_key_uses_its_module_estimate_until_it_has_its_own() -> None:
    pipe = Pipe.of(edited(packaged(), batch={"enabled": False}))
    pipe.replay(typing("editor", "text", 0.0, [0.05] * 20))
    pipe.deliveries.clear()
    module_ms = pipe.stats("debouncer").adaptive.modules[0].effective
    assert module_ms < 100.0
    start = pipe.clock.monotonic()
    pipe.publish("editor", "title")  # a new key of a known module
    pipe.advance_to(start + 1.0)
    (at, _, key, _, _), = pipe.delivered()
    assert key == "title"
    assert at - start == pytest.approx(module_ms / 1000.0, abs=0.001)
    pipe.publish("viewer", "page")  # a new module: the configured delay
    t0 = pipe.clock.monotonic()
    pipe.advance_to(t0 + 1.0)
    assert pipe.delivered()[-1][0] - t0 == pytest.approx(0.300)


def test_the_delay_is_clamped_and_a_bound_that_holds_it_is_named() -> None:
    settings = edited(packaged(), batch={"enabled": False})
    pipe = Pipe.of(settings)
    pipe.replay(typing("slow", "text", 0.0, [0.55] * 16))  # p90 x 1.2 > max_ms 600
    pipe.replay(typing("fast", "text", 20.0, [0.005] * 16))  # p90 x 1.2 < min_ms 60
    deb = pipe.stats("debouncer").adaptive
    mods = {m.module: m for m in deb.modules}
    assert mods["slow"].effective == 600.0
    assert mods["slow"].pinned == "adaptive.debounce.max_ms"
    assert "pinned at adaptive.debounce.max_ms" in mods["slow"].reason
    assert mods["fast"].effective == 60.0
    assert mods["fast"].pinned == "adaptive.debounce.min_ms"
    # The insight rule says which bound holds which module back.
    snapshot = rule_snapshot({}, {}, 60.0, adaptive=[pipe.stats("debouncer").adaptive])
    reading = AdaptiveBoundRule().read(snapshot, settings.monitor)
    assert reading is not None and reading.breached
    assert reading.recommendation is not None
    assert ("debounce delay pinned at max_ms for slow: raise adaptive.debounce.max_ms"
            in reading.recommendation)
    assert ("debounce delay pinned at min_ms for fast: lower adaptive.debounce.min_ms"
            in reading.recommendation)
    explained = AdaptationRule().read(snapshot, settings.monitor)
    assert explained is not None and explained.breached
    assert explained.recommendation is not None
    assert "debounce.delay_ms 300 ->" in explained.recommendation


def test_never_past_max_wait_and_the_bounds_are_validated() -> None:
    with pytest.raises(ValidationError, match="min_ms must not exceed max_ms"):
        edited(packaged(), adaptive={"debounce": {"min_ms": 700.0}})
    # Bounds past debounce.max_wait_ms are cut to it, and the status names the key.
    settings = edited(packaged(), debounce={"max_wait_ms": 400.0},
                      adaptive={"debounce": {"min_ms": 500.0, "max_ms": 900.0}})
    tuner = DebounceTuner(settings.debounce, settings.adaptive)
    assert (tuner.min_ms, tuner.max_ms, tuner.max_key) == (400.0, 400.0,
                                                           "debounce.max_wait_ms")
    batch = BatchTuner(settings.batch, edited(
        settings, adaptive={"batch": {"min_window_ms": 500.0}}).adaptive, now=0.0)
    assert batch.min_ms == settings.batch.window_ms
    # A stream that never pauses still goes out max_wait after its first publish.
    pipe = Pipe.of(edited(packaged(), batch={"enabled": False}))
    pipe.replay(typing("editor", "text", 0.0, [0.03] * 100), tail=2.0)
    times = [t for t, *_ in pipe.delivered()]
    assert times[0] == pytest.approx(1.0)  # debounce.max_wait_ms 1000


def test_a_bad_adaptive_value_in_a_mode_file_names_file_key_and_problem(tmp_path: Any
                                                                        ) -> None:
    import shutil
    for f in default_config_dir().glob("*.yaml"):
        shutil.copy(f, tmp_path / f.name)
    hybrid = tmp_path / "hybrid.yaml"
    hybrid.write_text(hybrid.read_text().replace("quantile: 0.9", "quantile: 2"))
    with pytest.raises(ConfigError) as err:
        load_config_dir(tmp_path)
    assert err.value.file == str(hybrid) and err.value.key == "adaptive.debounce.quantile"
    assert "less than or equal to 0.999" in err.value.problem
    hybrid.write_text(hybrid.read_text().replace("quantile: 2", "quantile: 0.9"))
    manual = tmp_path / "manual.yaml"
    manual.write_text(manual.read_text().replace("enabled: false\n  log_change",
                                                 "enabled: true\n  log_change"))
    with pytest.raises(ConfigError) as err:
        load_config_dir(tmp_path)
    assert err.value.key == "adaptive.enabled" and "MANUAL" in err.value.problem


def test_the_critical_fast_path_is_untouched() -> None:
    pipe = Pipe.of(edited(packaged(), batch={"enabled": False}))
    pipe.replay(typing("editor", "text", 0.0, [0.05] * 20))
    gaps_before = pipe.stats("debouncer").adaptive.keys[0].gaps
    pipe.deliveries.clear()
    t0 = pipe.clock.monotonic() + 3.0
    pipe.replay(typing("editor", "text", t0, [0.01] * 5, priority="critical"), tail=1.0)
    deb = pipe.stats("debouncer").adaptive
    assert deb.keys[0].gaps == gaps_before  # criticals are not observed
    (at, *_), = pipe.delivered()
    assert at == pytest.approx(t0 + 0.05 + 0.050)  # critical_delay_ms 50 after the last


def test_idle_keys_are_forgotten_and_the_key_cap_is_counted_and_logged() -> None:
    settings = edited(packaged(), batch={"enabled": False},
                      adaptive={"debounce": {"max_keys": 2, "forget_after_ms": 10_000.0}})
    with_logs = actor_logs("debouncer")
    records = next(with_logs)
    try:
        pipe = Pipe.of(settings)
        for key in ("a", "b", "c", "d"):
            pipe.publish("editor", key)
        deb = pipe.stats("debouncer").adaptive
        assert deb.tracked_keys == 2 and deb.untracked == 2
        warnings = [r for r in records if "adaptive.debounce.max_keys" in r["message"]]
        assert warnings and warnings[0]["extra"]["max_keys"] == 2
        assert len(warnings) == 1  # logged once while at the cap
        pipe.advance_to(pipe.clock.monotonic() + 11.0)
        deb = pipe.stats("debouncer").adaptive
        assert deb.tracked_keys == 0 and deb.tracked_modules == 0
        assert deb.forgotten == 2
    finally:
        with pytest.raises(StopIteration):
            next(with_logs)


def test_a_change_beyond_the_threshold_is_logged_once() -> None:
    with_logs = actor_logs("debouncer")
    records = next(with_logs)
    try:
        pipe = Pipe.of(edited(packaged(), batch={"enabled": False}))
        pipe.replay(typing("editor", "text", 0.0, [0.05] * 60))
        changes = [r for r in records if r["extra"].get("event") == "adaptive"]
        assert len(changes) == 1, [r["message"] for r in changes]
        assert changes[0]["message"] == "debounce delay adapted"
        extra = changes[0]["extra"]
        assert extra["module"] == "editor" and extra["previous_ms"] == 300.0
        assert extra["delay_ms"] < 300.0 and "publish gap p90" in extra["why"]
    finally:
        with pytest.raises(StopIteration):
            next(with_logs)


# -- the modes and adaptive.enabled: false ----------------------------------------------------


def _mixed_trace() -> Trace:
    trace = (bursts("editor", "text", 0.04, 0.08, 5, 8, seed=5)
             + bursts("chat", "msg", 0.12, 0.2, 4, 6, seed=6, start=0.3)
             + typing("editor", "save", 2.0, [0.02] * 3, priority="critical")
             + typing("chat", "ping", 4.0, [0.3] * 10, priority="high"))
    return sorted(trace)


@pytest.mark.parametrize("mode", ["HYBRID", "FULLY_AUTO"])
def test_adaptive_disabled_reproduces_the_fixed_path_exactly(mode: str) -> None:
    settings = edited(packaged(mode), adaptive={"enabled": False})
    today = Pipe(settings.debounce, settings.batch)  # what the actors took before
    frozen = Pipe.of(settings, mode)
    for pipe in (today, frozen):
        pipe.replay(_mixed_trace())
    assert today.delivered() == frozen.delivered()
    assert [b.batch_id for _, b in today.deliveries] == [
        b.batch_id for _, b in frozen.deliveries]
    assert today.stats("debouncer").collapsed == frozen.stats("debouncer").collapsed
    assert frozen.stats("debouncer").adaptive.enabled is False
    # ... and adapting does change them (the comparison can fail).
    adapting = Pipe.of(packaged(mode), mode)
    adapting.replay(_mixed_trace())
    assert adapting.delivered() != today.delivered()


def test_manual_never_adapts_even_with_adaptive_enabled() -> None:
    settings = edited(packaged("MANUAL"), adaptive={"enabled": True})
    assert isinstance(actor_settings(settings, "debounce", "MANUAL"), Tuned)
    assert actor_settings(settings, "debounce", "MANUAL").adaptive.enabled is False
    manual = Pipe.of(settings, "MANUAL")
    fixed = Pipe(settings.debounce, settings.batch)
    for pipe in (manual, fixed):
        pipe.replay(_mixed_trace())
    assert manual.delivered() == fixed.delivered()
    adaptive = manual.stats("debouncer").adaptive
    assert adaptive.enabled is False
    assert adaptive.parameters["debounce.delay_ms"].effective == 300.0
    batch = manual.stats("batcher").adaptive
    assert batch.parameters["batch.window_ms"].effective == 100.0


def test_hybrid_adapts_within_tighter_bounds_than_fully_auto() -> None:
    hybrid = packaged("HYBRID").adaptive
    auto = packaged("FULLY_AUTO").adaptive
    assert hybrid.enabled and auto.enabled
    assert hybrid.debounce.min_ms > auto.debounce.min_ms
    assert hybrid.batch.min_window_ms > auto.batch.min_window_ms
    assert packaged("MANUAL").adaptive.enabled is False


# -- adaptive batching ---------------------------------------------------------------------


def _poisson(rate: float, start: float, seconds: float, seed: int, first: int = 0) -> Trace:
    rng = random.Random(seed)
    out: Trace = []
    t = start
    n = first
    while True:
        t += rng.expovariate(rate)
        if t >= start + seconds:
            return out
        n += 1
        out.append((t, f"m{n % 7}", f"k{n}", "medium"))


def test_the_batch_window_follows_the_load_light_heavy_light() -> None:
    settings = edited(packaged(), debounce={"enabled": False})
    pipe = Pipe.of(settings)
    fixed = Pipe(actor_settings(settings, "debounce"), settings.batch)  # no adaptation
    windows = []
    phases = [(5.0, 0.0, 10.0), (800.0, 10.0, 5.0), (5.0, 15.0, 10.0)]
    for i, (rate, start, seconds) in enumerate(phases):
        trace = _poisson(rate, start, seconds, seed=i, first=i * 100_000)
        for p in (pipe, fixed):
            p.replay(trace, tail=0.0)
        windows.append(pipe.stats("batcher").adaptive.parameters["batch.window_ms"])
    light1, heavy, light2 = (w.effective for w in windows)
    assert light1 == 20.0 and light2 == 20.0  # adaptive.batch.min_window_ms
    assert heavy == 100.0  # load 1.6: the largest window, batch.window_ms
    assert windows[1].pinned == "batch.window_ms" and windows[0].pinned is None
    assert windows[1].configured == 100.0 and "arrival rate" in windows[1].reason
    pipe.advance_to(40.0)
    fixed.advance_to(40.0)
    assert sorted(pipe.delivered(), key=lambda d: d[3])[-1][3] == \
        sorted(fixed.delivered(), key=lambda d: d[3])[-1][3]  # every update delivered
    assert len(pipe.delivered()) == len(fixed.delivered())

    def light_median(p: Pipe) -> float:
        lat = sorted(t - u.published_at for t, b in p.deliveries for u in b.updates
                     if u.published_at < 10.0)
        return lat[len(lat) // 2]

    assert light_median(fixed) == pytest.approx(0.100, abs=0.001)
    assert light_median(pipe) <= 0.5 * light_median(fixed)


def test_the_window_has_a_dead_band() -> None:
    tuner = BatchTuner(packaged().batch, packaged().adaptive, now=0.0)
    tuner.rate.rate = 300.0  # a batch of 50 every 100 ms would be 500/s: load 0.6
    first = tuner.window_s(0, 0.0)
    assert first == pytest.approx(0.060)
    tuner.rate.rate = 320.0  # 64 ms: inside the 10 % dead band
    assert tuner.window_s(0, 0.0) == first
    tuner.rate.rate = 400.0
    assert tuner.window_s(0, 0.0) == pytest.approx(0.080)


def test_the_debounce_tuner_alone_is_pure_and_bounded() -> None:
    settings = packaged()
    tuner = DebounceTuner(settings.debounce, settings.adaptive)
    t = 0.0
    for i in range(10_000):  # many keys, each seen once: at most max_keys tracked
        tuner.delay_for("m", f"k{i}", t)
        t += 0.001
    assert len(tuner.keys) == settings.adaptive.debounce.max_keys
    assert tuner.untracked == 10_000 - settings.adaptive.debounce.max_keys
    summary = tuner.summary(t)
    assert len(summary.keys) == settings.adaptive.summary_top_n
    assert tuner.summary(t + 61.0).tracked_keys == 0
