"""Figures 15-18: adaptive debouncing and batching, on the real actors, in this process.

The debouncer and batcher actors (``modcoord.actors``) run as in the daemon, with the
packaged HYBRID settings; only the clock differs:

- figures 15, 16 and 17 replay a synthetic trace in **simulated time** (a ``MockClock``
  stepped from timer to timer, each actor drained before time moves on), so latencies are
  the trace's own, free of this machine's load. The same trace is replayed with
  ``adaptive.enabled: true`` and, as the same-run baseline, ``adaptive.enabled: false``
  (the fixed values: ``debounce.delay_ms`` 300, ``batch.window_ms`` 100);
- figure 18 (throughput) runs on the real clock: N updates pushed as fast as possible
  through the debouncer (``debounce.enabled: false``) and the batcher, wall time until the
  last delivery; adaptive vs the fixed maximum window, rounds alternating.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from typing import Any

from loguru import logger

from modcoord.actors import ActorContext, ActorHandle, MockClock, MonotonicClock, Shared
from modcoord.actors.batcher import BatcherActor, BatcherStatistics, QueueDepth, Subscribe
from modcoord.actors.clock import Clock
from modcoord.actors.debouncer import (
    DebouncerActor,
    DebouncerStatistics,
    Pending,
    PublishMany,
)
from modcoord.actors.settings import ModeSettings, actor_settings
from modcoord.actors.update import Batch, Update
from modcoord.supervisor.daemon.config import default_config_dir, load_config_dir

from .common import BenchError, Result, median, row

TYPISTS: tuple[tuple[str, float, float], ...] = (
    ("editor-fast", 0.040, 0.080),
    ("editor-steady", 0.070, 0.130),
    ("chat-slow", 0.120, 0.200),
    ("search-mixed", 0.040, 0.200),
)
"""Modules of the typing trace: (module, shortest, longest gap within a burst), seconds."""
KEYS = ("text", "cursor")  # each keystroke publishes both
ROW_COLLAPSED = "adaptive debounce: updates collapsed vs fixed 300 ms (typing trace)"
ROW_DEBOUNCE_LATENCY = "adaptive debounce: median publish-to-delivery latency vs fixed 300 ms"
ROW_LIGHT = "adaptive batch: median delivery latency at light load vs fixed window"
ROW_HEAVY = "adaptive batch: throughput at heavy load vs fixed maximum window"


class Pipeline:
    """A debouncer and a batcher on ``clock``; the batcher delivers to one subscriber that
    records ``(clock reading, batch)``."""

    def __init__(self, settings: ModeSettings, clock: Clock, mode: str = "HYBRID") -> None:
        self.clock = clock
        self.deliveries: list[tuple[float, Batch]] = []
        self.delivered = 0
        self.done = threading.Event()
        self.expect = -1
        self.last_stats: tuple[DebouncerStatistics, BatcherStatistics] | None = None

        def deliver(subscriber: str, batch: Batch) -> None:
            self.deliveries.append((clock.monotonic(), batch))
            self.delivered += len(batch.updates)
            if self.delivered == self.expect:
                self.done.set()

        shared = Shared.create(clock, settings, deliver=deliver)
        self.handles = {n: ActorHandle(n) for n in ("debouncer", "batcher")}
        ctx = ActorContext(clock, self.handles, shared=shared)
        self.refs = {
            "batcher": BatcherActor.start(actor_settings(settings, "batch", mode), ctx),
            "debouncer": DebouncerActor.start(actor_settings(settings, "debounce", mode),
                                              ctx)}
        for name, ref in self.refs.items():
            self.handles[name].install(ref)
        self.handles["batcher"].ask(Subscribe("sink", ("*",)), timeout=5.0)
        self.seq = 0

    def publish(self, updates: Sequence[tuple[str, str]], at: float) -> None:
        out = []
        for module, key in updates:
            self.seq += 1
            out.append(Update(module, key, {"n": self.seq}, "medium", self.seq, at))
        self.handles["debouncer"].tell(PublishMany(tuple(out)))

    def drain(self) -> None:
        """Wait until both actors handled everything sent so far."""
        self.handles["debouncer"].ask(Pending(), timeout=30.0)
        self.handles["batcher"].ask(QueueDepth(), timeout=30.0)

    def statistics(self, actor: str) -> Any:
        from modcoord.actors import Statistics
        return self.handles[actor].ask(Statistics(), timeout=10.0)

    def stop(self) -> None:
        for name in ("debouncer", "batcher"):  # the debouncer flushes into the batcher
            self.refs[name].stop(timeout=10.0)


def replay(settings: ModeSettings, trace: list[tuple[float, list[tuple[str, str]]]],
           tail_s: float = 10.0) -> tuple[Pipeline, list[float], int]:
    """Replay ``trace`` (time, publishes) in simulated time; return the pipeline, the
    publish-to-delivery latencies (s) of the delivered updates and the collapsed count."""
    clock = MockClock(0.0)
    p = Pipeline(settings, clock)
    logger.disable("modcoord")  # the actors log each adaptation; not the bench's output

    def advance_to(t: float) -> None:
        while True:
            due = clock.next_deadline()
            if due is None or due > t:
                break
            clock.advance(max(0.0, due - clock.monotonic()))
            p.drain()
        clock.advance(max(0.0, t - clock.monotonic()))
        p.drain()

    try:
        for at, publishes in trace:
            advance_to(at)
            p.publish(publishes, at)
            p.drain()  # its timers armed before time moves on
        advance_to(clock.monotonic() + tail_s)
        latencies = [t - u.published_at for t, b in p.deliveries for u in b.updates]
        collapsed = int(p.statistics("debouncer").collapsed)
        p.last_stats = (p.statistics("debouncer"), p.statistics("batcher"))
    finally:
        p.stop()
        logger.enable("modcoord")
    return p, latencies, collapsed


def typing_trace(seconds: float, seed: int) -> list[tuple[float, list[tuple[str, str]]]]:
    """Bursts (gaps per :data:`TYPISTS`) separated by pauses of 1-5 s, several modules."""
    rng = random.Random(seed)
    events: list[tuple[float, list[tuple[str, str]]]] = []
    for module, lo, hi in TYPISTS:
        t = rng.uniform(0.0, 2.0)
        while t < seconds:
            for _ in range(rng.randint(4, 12)):
                events.append((t, [(module, k) for k in KEYS]))
                t += rng.uniform(lo, hi)
            t += rng.uniform(1.0, 5.0)
    events.sort(key=lambda e: e[0])
    return events


def load_trace(phases: Sequence[tuple[float, float]], seed: int, modules: int = 20
               ) -> list[tuple[float, list[tuple[str, str]]]]:
    """Poisson arrivals of distinct keys: ``(seconds, rate per second)`` per phase."""
    rng = random.Random(seed)
    events: list[tuple[float, list[tuple[str, str]]]] = []
    start = 0.0
    n = 0
    for seconds, rate in phases:
        t = start
        while True:
            t += rng.expovariate(rate)
            if t >= start + seconds:
                break
            n += 1
            events.append((t, [(f"m{n % modules}", f"k{n}")]))
        start += seconds
    return events


def _with(settings: ModeSettings, **sections: dict[str, Any]) -> ModeSettings:
    data = settings.model_dump()
    for name, values in sections.items():
        data[name] = {**data[name], **values}
    return ModeSettings.model_validate(data)


def hybrid() -> ModeSettings:
    return load_config_dir(default_config_dir()).mode("HYBRID")


def fig_adaptive_debounce(quick: bool) -> list[Result]:
    """Figures 15 and 16."""
    base = _with(hybrid(), batch={"enabled": False})  # isolate the debounce stage
    adaptive = base
    fixed = _with(base, adaptive={"enabled": False})
    trace = typing_trace(60.0 if quick else 240.0, seed=11)
    _, lat_fixed, col_fixed = replay(fixed, trace)
    p, lat_adapt, col_adapt = replay(adaptive, trace)
    assert p.last_stats is not None
    deb = p.last_stats[0].adaptive
    mods = ", ".join(f"{m.module} {m.effective:.0f} ms" for m in deb.modules)
    n = sum(len(e[1]) for e in trace)
    if not lat_fixed or not lat_adapt:
        raise BenchError("no deliveries in the replay")
    m_fixed, m_adapt = median(lat_fixed) * 1000, median(lat_adapt) * 1000
    note = (f"simulated time (MockClock) on the real debouncer and batcher actors, "
            f"packaged HYBRID config with batch.enabled: false; {n} publishes of "
            f"{len(TYPISTS)} modules x {len(KEYS)} keys, gaps 40-200 ms, pauses 1-5 s; "
            f"baseline adaptive.enabled: false (delay 300 ms); learnt delays: {mods}")
    return [
        row(ROW_COLLAPSED, float(col_adapt), "updates", ">= 0.9x", float(col_fixed), note),
        row(ROW_DEBOUNCE_LATENCY, round(m_adapt, 1), "ms", "<= 0.6x", round(m_fixed, 1),
            f"simulated time; fixed median {m_fixed:.1f} ms, adaptive {m_adapt:.1f} ms"),
    ]


def fig_adaptive_batch_light(quick: bool) -> list[Result]:
    """Figure 17: median latency in the light phases of light -> heavy -> light."""
    base = _with(hybrid(), debounce={"enabled": False})  # isolate the batch stage
    fixed = _with(base, adaptive={"enabled": False})
    light_s = 20.0 if quick else 60.0
    phases = [(light_s, 5.0), (5.0 if quick else 10.0, 2000.0), (light_s, 5.0)]
    trace = load_trace(phases, seed=17)
    heavy_start, heavy_end = light_s, light_s + phases[1][0]

    def light_latencies(p: Pipeline) -> list[float]:
        return [t - u.published_at for t, b in p.deliveries for u in b.updates
                if not heavy_start <= u.published_at < heavy_end + 3.0]

    pf, _, _ = replay(fixed, trace)
    pa, _, _ = replay(base, trace)
    lf, la = light_latencies(pf), light_latencies(pa)
    mf, ma = median(lf) * 1000, median(la) * 1000
    heavy_sizes = [len(b.updates) for t, b in pa.deliveries if heavy_start + 1 <= t < heavy_end]
    return [row(
        ROW_LIGHT, round(ma, 1), "ms", "<= 0.5x", round(mf, 1),
        f"simulated time (MockClock), real batcher; light {phases[0][1]:g}/s -> heavy "
        f"{phases[1][1]:g}/s -> light; packaged HYBRID (window 100 ms, min_window 20 ms), "
        f"debounce.enabled: false; light phases only (3 s after the heavy one excluded); "
        f"adaptive mean batch in the heavy phase "
        f"{(sum(heavy_sizes) / len(heavy_sizes)) if heavy_sizes else 0:.1f}")]


def _throughput(settings: ModeSettings, n: int, chunk: int) -> float:
    clock = MonotonicClock()
    p = Pipeline(settings, clock)
    p.expect = n
    logger.disable("modcoord")
    try:
        started = time.perf_counter()
        sent = 0
        while sent < n:
            size = min(chunk, n - sent)
            p.publish([(f"m{(sent + i) % 20}", f"k{sent + i}") for i in range(size)],
                      clock.monotonic())
            sent += size
        if not p.done.wait(120.0):
            raise BenchError(f"only {p.delivered} of {n} updates delivered within 120 s")
        return n / (time.perf_counter() - started)
    finally:
        p.stop()
        clock.close()
        logger.enable("modcoord")


def fig_adaptive_batch_heavy(quick: bool) -> list[Result]:
    """Figure 18: throughput at heavy load, adaptive vs the fixed maximum window."""
    base = _with(hybrid(), debounce={"enabled": False}, batch={"max_queue": 10_000_000})
    fixed = _with(base, adaptive={"enabled": False})
    n = 30_000 if quick else 100_000
    rounds = 5 if quick else 9
    rates_a: list[float] = []
    rates_f: list[float] = []
    for _ in range(rounds):
        rates_f.append(_throughput(fixed, n, 100))
        rates_a.append(_throughput(base, n, 100))
    a, f = median(rates_a), median(rates_f)
    return [row(
        ROW_HEAVY, round(a), "updates/s", ">= 0.95x", round(f),
        f"real clock, in-process debouncer (disabled) and batcher; {n} updates in "
        f"chunks of 100 as fast as possible, median of {rounds} alternating rounds; "
        "baseline adaptive.enabled: false (batch.window_ms 100)")]
