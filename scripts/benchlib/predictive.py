"""Figures 19-20: refresh-ahead on the real daemon, against the same run without it.

Two daemons start with the packaged configs except HYBRID's cache: ``ttl_ms`` 400, and
``refresh_ahead`` on (``before_ms`` 150, ``min_hits`` 2, ``max_in_flight`` 4) for one, off
for the other (the baseline). Each gets one real module process whose ``on_mode_change``
takes 30 ms (a real computation; the client answers callbacks one at a time, so the six
contexts keep it busy 180 ms of every 400 ms TTL). This process then coordinates the
hot contexts in turn, one blocking call at a time with a short pause, for several
seconds (many TTLs), on each daemon in alternating rounds. The first three TTLs of each
round are warm-up (each context's first computation, and the hits that make it hot);
every later answer counts: its ``cached`` flag (hit rate) and the round trip (p99).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from .common import BenchError, Result, percentile, row, us
from .daemons import Daemon, make_config_dir

ROW_HIT_RATE = "refresh-ahead: cache hit rate, hot contexts across many TTLs"
ROW_P99 = "refresh-ahead: coordinate p99, hot contexts across many TTLs"
TTL_MS = 400.0
LEAD_MS = 150.0  # refresh_ahead.before_ms (at most half the TTL)
HOT_CONTEXTS = 6
COMPUTE_S = 0.03
PAUSE_S = 0.004
WARMUP_TTLS = 3

_MODULE = textwrap.dedent("""
    import sys, time
    from modcoord.supervisor.client import connect

    class Planner:
        module_id = "planner"
        name = "bench planner"
        supported_modes = ["HYBRID"]
        subscribe = []

        def on_mode_change(self, mode, strategy, context):
            time.sleep(float(sys.argv[2]))
            return {"doc": context.get("doc")}

        def on_batch(self, batch):
            pass

    with connect(runtime_dir=sys.argv[1], timeout=30, reconnect=False) as client:
        client.register(Planner()).get(30)
        print("ready", flush=True)
        sys.stdin.readline()
""")


def _module(d: Daemon) -> subprocess.Popen[str]:
    """Start the module process for ``d`` and wait until it registered.

    Raises:
        BenchError: it did not say ready.
    """
    proc = subprocess.Popen([sys.executable, "-c", _MODULE, d.runtime_str, str(COMPUTE_S)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise BenchError(f"the module process for {d.name} did not register: "
                         f"{proc.communicate()[1][-2000:]}")
    return proc


def _round(d: Daemon, duration: float, tag: str) -> list[tuple[float, bool]]:
    """Coordinate the hot contexts for ``duration`` s after a warm-up of ``WARMUP_TTLS``
    TTLs (the first computation of each, and the hits that make it hot); (round trip in
    seconds, cached) of each call of the measured part.

    Raises:
        BenchError: a module reported an error.
    """
    client = d.client()
    contexts = [{"doc": f"{tag}-{i}"} for i in range(HOT_CONTEXTS)]
    out: list[tuple[float, bool]] = []
    clock = time.perf_counter
    measure_from = time.monotonic() + WARMUP_TTLS * TTL_MS / 1000.0
    end = measure_from + duration
    i = 0
    while time.monotonic() < measure_from:
        client.coordinate("HYBRID", contexts[i % HOT_CONTEXTS]).get(timeout=30)
        i += 1
        time.sleep(PAUSE_S)
    while time.monotonic() < end:
        t0 = clock()
        result = client.coordinate("HYBRID", contexts[i % HOT_CONTEXTS]).get(timeout=30)
        out.append((clock() - t0, bool(result.cached)))
        if result.errors:
            raise BenchError(f"module errors during the run: {result.errors}")
        i += 1
        time.sleep(PAUSE_S)
    return out


def fig_refresh_ahead(root: Path, start: Any, quick: bool) -> list[Result]:
    """Figures 19 and 20; ``start(name, config_dir)`` starts a daemon (the bench's)."""
    cache = {"ttl_ms": TTL_MS, "refresh_ahead": {
        "enabled": True, "before_ms": LEAD_MS, "min_hits": 2, "max_in_flight": 4}}
    off = {"ttl_ms": TTL_MS, "refresh_ahead": {"enabled": False}}
    on_d = start("refresh", make_config_dir(root, "refresh", {"cache": cache}))
    off_d = start("norefresh", make_config_dir(root, "norefresh", {"cache": off}))
    modules = [_module(on_d), _module(off_d)]
    rounds = 2 if quick else 4
    duration = 3.0 if quick else 5.0
    on: list[tuple[float, bool]] = []
    base: list[tuple[float, bool]] = []
    try:
        for r in range(rounds):
            base += _round(off_d, duration, f"r{r}")
            on += _round(on_d, duration, f"r{r}")
        stats = on_d.status()["cache_stats"]
    finally:
        for proc in modules:
            try:
                proc.communicate("\n", timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        on_d.stop()
        off_d.stop()
    if not on or not base:
        raise BenchError("no coordinations measured")
    rate_on = sum(c for _, c in on) / len(on)
    rate_off = sum(c for _, c in base) / len(base)
    t_on, t_off = [t for t, _ in on], [t for t, _ in base]
    p99_on, p99_off = percentile(t_on, 0.99), percentile(t_off, 0.99)
    base_hits = [t for t, c in base if c] or t_off
    spent = rounds * duration
    note = (f"real daemons, one module process each (on_mode_change {COMPUTE_S * 1000:g} ms); "
            f"{HOT_CONTEXTS} hot contexts in turn, a call every ~{PAUSE_S * 1000:g} ms, "
            f"{rounds} alternating rounds of {duration:g} s after {WARMUP_TTLS} TTLs of "
            f"warm-up ({spent / (TTL_MS / 1000):.0f} TTLs measured per daemon); "
            f"cache.ttl_ms {TTL_MS:g}, refresh_ahead before_ms {LEAD_MS:g} min_hits 2 "
            f"max_in_flight 4 vs refresh_ahead off; {len(on)} and {len(base)} lookups; "
            f"refreshes {stats.get('refreshes')}, failures {stats.get('refresh_failures')}, "
            f"skipped for budget {stats.get('refresh_skipped_budget')}, joined a flight "
            f"{stats.get('joined')}")
    return [
        row(ROW_HIT_RATE, round(rate_on, 4), "fraction", ">= 0.98", round(rate_off, 4), note),
        row(ROW_P99, us(p99_on), "µs", "<= 0.2x", us(p99_off),
            f"p99 {us(p99_on)} µs with refresh-ahead, {us(p99_off)} µs without (p50 "
            f"{us(percentile(t_on, 0.5))} / {us(percentile(t_off, 0.5))} µs; the baseline's "
            f"hits alone: p99 {us(percentile(base_hits, 0.99))} µs)"),
    ]
