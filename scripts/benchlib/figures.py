"""The figures: :class:`Bench` owns the temporary directory, the daemons, the agents and the
baseline servers, measures each figure and returns its rows (see ``scripts/bench`` for what
a row means). The update pipeline's figures are in ``pipeline.py`` (a mixin of ``Bench``).

What each figure measures (``N`` and round counts are smaller with ``--quick``):

1. cached ``coordinate`` p50 from a module process (samples answered from the cache only)
   vs a ``multiprocessing.managers`` proxy call that echoes its argument (server in
   another process, over a Unix socket). Rounds alternate coordinate, manager echo and raw
   echo, in short rounds (so that load from elsewhere hits every variant alike);
   samples are pooled.
2. the same coordinate samples, p99, vs a raw length-prefixed msgpack echo over a Unix
   socket (one request at a time; the echo server decodes and re-encodes every frame).
3. ``publish`` throughput from one module process vs a raw pipelined msgpack echo
   (``pipeline.py`` in this package, as are 4, 6, 7 and 9: what each measures is there).
4. updates delivered to a subscriber per second (HYBRID, debounce delay 1 ms).
5. with 10 module processes registered: 1 - cached p50 / uncached p50, where uncached
   calls use a fresh context each time (a cache miss, so every module's
   ``on_mode_change`` runs in its process).
6. delivery-stage throughput, batched vs unbatched (a flush of pending updates).
7. publish-to-delivery latency of ``critical`` vs ``medium`` updates (HYBRID not adapting).
8. memory reclaimed by cleanup: a daemon whose HYBRID config has ``inactive_after_ms: 300``
   and a 10-min TTL is warmed up, its RSS read; then 500 modules register from 5
   processes and 1,000 distinct coordinations fill the cache (``max_entries``); RSS read;
   once the modules are inactive, ``optimize`` (flush, cache clear, forced cleanup with
   the ``balanced`` strategy); RSS read. Value: (loaded - after) / (loaded - before).
9. debounce timer lateness p99 at full publish load vs a light load.
10. cached ``coordinate`` p99 with 1,000 modules registered and 100,000 keys pending (a
    10-min debounce delay) vs with 10 modules and nothing pending; same daemon, the
    phases alternate (the full run goes back to 10 modules between loaded phases).
11. the resident memory of a freshly started, idle daemon (psutil).
12. ``modcoord start`` (detached) to ready: the wall time of the command, median over
    every daemon this run starts, with byte-code caches as a user has them (the
    environment of figure 13: ``PYTHONDONTWRITEBYTECODE`` dropped; the first start writes
    the ``.pyc`` files that the later ones read).
13. what ``from modcoord.supervisor import connect`` — all a module process needs — adds to
    an interpreter's start: R rounds each run a bare ``python -c pass`` and ``python -c
    "from modcoord.supervisor import connect"`` (same interpreter, environment and
    working directory; the order rotates each round, after one warm-up run of each).
    Measured as a user runs it, with byte-code caches: the runs' environment drops
    ``PYTHONDONTWRITEBYTECODE`` (a CI or test environment often sets it; then every run
    would compile each changed module anew and measure the compiler, not the import),
    and the warm-up run writes the ``.pyc`` files that the measured runs read.
    Value: median over the rounds of (import run − bare run), in ms; baseline: the median
    bare run; ratio = value / baseline, i.e.
    ``(t(import connect) − t(python -c pass)) / t(python -c pass) <= 1.5``.
14. ``modcoord status --json`` against the running daemon of figures 1-11 (the console
    script beside the interpreter, or ``python -m modcoord.supervisor`` without one),
    wall time, median of the same R rounds as figure 13; baseline: the same median bare
    run; ratio = ``t(modcoord status --json) / t(python -c pass) <= 4.0``.
15-18. adaptive debouncing and batching (``adaptive.py`` in this package: the real
    debouncer and batcher actors in this process, each against ``adaptive.enabled: false``
    on the same input): 15 updates collapsed and 16 median publish-to-delivery latency on a
    synthetic typing trace, 17 median latency in the light phases of a light → heavy →
    light load, all three in simulated time (a stepped ``MockClock``); 18 throughput at
    heavy load on the real clock.
19-20. refresh-ahead (``predictive.py`` in this package): two real daemons with
    ``cache.ttl_ms`` 400, one with ``cache.refresh_ahead`` on and one without (the
    baseline), each with a module process whose ``on_mode_change`` takes 30 ms; six
    hot contexts coordinated in turn for several seconds (many TTLs), rounds alternating:
    19 the hit rate after each context's first computation (``>= 0.98``), 20 the
    coordinate round-trip p99 (``<= 0.2x`` of the baseline's).
21. cached ``coordinate`` p50 and p99 with one CPU-burning process per core beside the
    daemon of figures 1-2 and the module, vs the ``multiprocessing.managers`` echo under
    the same burners (``contention.py`` in this package): medians of per-round
    percentiles, ``<= 1.0x`` (p50) and ``<= 2.0x`` (p99).
22. what the performance history costs (``history_cost.py`` in this package): publish
    throughput from one process at full speed on a daemon with the history on vs one
    with it off (``history.enabled: false``), rounds alternating; the median of the
    paired ratios (``>= 0.98``).
23. the dashboard page's first load with a day of history (``dashboard.py`` in this
    package): a history database filled with a simulated day on a fake clock, a real
    daemon serving the page, headless chromium loading it with the 1-day range until the
    page says it is drawn (``data-ready``); median of rounds, ``<= 1000 ms``; baseline:
    the same page on a daemon with an empty history.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import adaptive, contention, dashboard, history_cost, predictive
from .agents import Agent
from .baselines import echo_server_main, manager_server_main
from .common import (
    CLI_TIMEOUT,
    COORD_CONTEXT,
    MB,
    BenchError,
    Plan,
    Result,
    median,
    percentile,
    row,
    us,
    user_env,
)
from .daemons import Daemon, make_config_dir
from .pipeline import PipelineFigures

MIN_START_SAMPLES = 3  # figure 12 is a median of at least this many starts


class Bench(PipelineFigures):
    """Runs every figure; owns the temporary directory, the daemons and the agents. The
    update pipeline's figures (3, 4, 6, 7, 9) come from :class:`PipelineFigures`.

    Args:
        plan: how much to measure.
        progress: called with a line of progress text (or a no-op).
    """

    def __init__(self, plan: Plan, progress: Callable[[str], None]) -> None:
        self.plan = plan
        self.only: set[str] = set()
        self.progress = progress
        self.root = Path(tempfile.mkdtemp(prefix="modcoord-bench-"))
        self.ctx = mp.get_context("spawn")
        self.daemons: list[Daemon] = []
        self.agents: list[Agent] = []
        self.results: list[Result] = []
        self.failed = False
        self.start_times: list[float] = []
        self.echo_path = str(self.root / "echo.sock")
        self.manager_path = str(self.root / "manager.sock")
        self._servers: list[tuple[Any, Any]] = []
        self._pipelined_echo: list[float] = []

    # -- infrastructure --

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every daemon, agent and baseline server; remove the temporary directory."""
        for daemon in self.daemons:
            daemon.stop()
        for agent in self.agents:
            with contextlib.suppress(Exception):
                agent.close()
        for proc, _ in self._servers:
            proc.kill()
            proc.join(5)
        shutil.rmtree(self.root, ignore_errors=True)

    def start_infrastructure(self, agents: int) -> None:
        """Spawn the agents and the two baseline servers (in parallel)."""
        self.progress("starting module processes and baseline servers")
        self.agents = [Agent(self.ctx, i) for i in range(agents)]
        for target, path in ((echo_server_main, self.echo_path),
                             (manager_server_main, self.manager_path)):
            ready = self.ctx.Event()
            proc = self.ctx.Process(target=target, args=(path, ready), daemon=True)
            proc.start()
            self._servers.append((proc, ready))
        for proc, ready in self._servers:
            if not ready.wait(30):
                raise BenchError(f"baseline server {proc.name} did not start within 30 s")

    def daemon(self, name: str, config_dir: Path, *extra: str) -> Daemon:
        """Start a daemon (its start time is a sample of figure 12)."""
        d = Daemon(self.root, name, config_dir, *extra)
        self.daemons.append(d)
        self.start_times.append(d.start())
        return d

    def measure(self, label: str, fn: Callable[[], list[Result]],
                placeholders: list[tuple[str, str, str]], daemons: tuple[Daemon, ...] = ()
                ) -> None:
        """Run one figure group; on failure add null rows for it and remember the failure.

        Afterwards every agent's connection to ``daemons`` is closed, whatever happened.
        """
        self.progress(label)
        try:
            self.results.extend(fn())
        except Exception:
            self.failed = True
            sys.stderr.write(f"bench: {label} failed:\n{traceback.format_exc()}\n")
            for name, unit, target in placeholders:
                self.results.append(Result(name, None, unit, None, None, target, False,
                                           "measurement failed"))
        finally:
            for daemon in daemons:
                self._release(daemon.runtime_str, *self.agents)

    def _release(self, runtime: str, *agents: Agent) -> None:
        """Close these agents' connections to ``runtime`` (best effort: never raises)."""
        for agent in agents:
            with contextlib.suppress(BenchError):
                if agent.busy:
                    agent.result(60)
            with contextlib.suppress(BenchError):
                agent.call("release", timeout=30, runtime=runtime)

    def _parallel(self, jobs: list[tuple[Agent, str, dict[str, Any]]],
                  timeout: float = 120.0) -> list[Any]:
        for agent, task, kwargs in jobs:
            agent.submit(task, **kwargs)
        return [agent.result(timeout) for agent, _, _ in jobs]

    # -- figures --

    def fig_latency(self, d: Daemon) -> list[Result]:
        """Figures 1 and 2 (and 3's pipelined echo rounds are separate)."""
        p = self.plan
        a = self.agents[0]
        a.call("register", runtime=d.runtime_str, module_ids=["coord-0"])
        coord: list[float] = []
        manager: list[float] = []
        raw: list[float] = []
        misses = 0
        for _ in range(p.latency_rounds):
            out = a.call("coordinate_loop", runtime=d.runtime_str, n=p.coord_n,
                         context=COORD_CONTEXT, warmup=10)
            coord += out["samples"]
            misses += out["misses"]
            manager += a.call("manager_loop", address=self.manager_path, n=p.coord_n,
                              warmup=10)
            raw += a.call("raw_echo_loop", path=self.echo_path, n=p.coord_n, warmup=10)
        a.call("release", runtime=d.runtime_str)
        c50, c99 = percentile(coord, 0.50), percentile(coord, 0.99)
        m50, r99 = percentile(manager, 0.50), percentile(raw, 0.99)
        note = (f"{len(coord)} cached samples ({misses} uncached dropped); manager p99 "
                f"{us(percentile(manager, 0.99))} µs; raw echo p50 {us(percentile(raw, 0.5))} µs")
        return [
            row("cached coordinate round trip p50", us(c50), "µs", "<= 1.0x", us(m50),
                f"baseline: multiprocessing.managers echo p50; {note}"),
            row("cached coordinate round trip p99", us(c99), "µs", "<= 4.0x", us(r99),
                "baseline: raw msgpack echo over a Unix socket, p99"),
        ]

    def fig_coordination_cache(self, d: Daemon) -> list[Result]:
        """Figure 5: 10 module processes registered."""
        p = self.plan
        agents = self.agents[:10]
        runtime = d.runtime_str
        self._parallel([(a, "register", {"runtime": runtime, "module_ids": [f"mod-{a.index}"]})
                        for a in agents])
        d.wait_for(lambda s: s["modules"] == 10, "10 modules registered")
        a = agents[0]
        a.call("coordinate_uncached", runtime=runtime, n=20, tag="warm")
        cached: list[float] = []
        uncached: list[float] = []
        errors = 0
        for r in range(p.rounds):
            out = a.call("coordinate_loop", runtime=runtime, n=p.cached_n,
                         context={"bench": "ten"}, warmup=10)
            cached += out["samples"]
            out = a.call("coordinate_uncached", runtime=runtime, n=p.uncached_n, tag=f"u{r}")
            uncached += out["samples"]
            errors += out["errors"]
        for agent in agents:
            agent.call("release", runtime=runtime)
        c50, u50 = percentile(cached, 0.5), percentile(uncached, 0.5)
        if errors:
            raise BenchError(f"{errors} module callbacks failed during uncached coordination")
        value = 1.0 - c50 / u50
        return [row("cached vs uncached coordination, 10 module processes: less latency",
                    round(value, 4), "fraction", ">= 0.90", None,
                    f"cached p50 {us(c50)} µs, uncached p50 {us(u50)} µs "
                    f"(p99 {us(percentile(uncached, 0.99))} µs)")]

    def fig_many(self, d: Daemon) -> list[Result]:
        """Figure 10: cached coordinate p99 with 1,000 modules and 100,000 pending keys."""
        p = self.plan
        runtime = d.runtime_str
        q, base = self.agents[0], self.agents[1]
        loaders = self.agents[2:7]
        q.call("register", runtime=runtime, module_ids=["base-0"])
        base.call("register", runtime=runtime, module_ids=[f"base-{i}" for i in range(1, 10)])
        d.wait_for(lambda s: s["modules"] == 10, "10 modules registered")
        small: list[float] = []
        large: list[float] = []
        context = {"bench": "many"}
        pending = rss = 0
        for r in range(p.many_rounds):
            small += q.call("coordinate_loop", runtime=runtime, n=p.many_cached_n,
                            context=context)["samples"]
            per = 990 // len(loaders)
            # They do not take part in HYBRID coordinations, so the cached answer is the
            # same 10-module result in both phases: what differs is the daemon's size.
            self._parallel([(a, "register", {
                "runtime": runtime, "module_ids": [f"load-{a.index}-{i}" for i in range(per)],
                "hybrid_first": 0}) for a in loaders])
            out = base.call("publish_pipelined", runtime=runtime, module_id="base-1",
                            n=100_000, prefix=f"pending{r}-", timeout=300)
            if out["errors"]:
                raise BenchError(f"publishes refused: {out['errors']}")
            status = d.wait_for(
                lambda s: s["modules"] == 1000 and s["debouncer"]["pending"] >= 100_000,
                "1,000 modules and 100,000 pending keys")
            pending = status["debouncer"]["pending"]
            rss = d.rss()
            large += q.call("coordinate_loop", runtime=runtime, n=p.many_cached_n,
                            context=context)["samples"]
            for a in loaders:
                a.call("release", runtime=runtime)
            d.client().debouncer.flush().get(timeout=60)
            d.wait_for(lambda s: s["modules"] == 10 and s["debouncer"]["pending"] == 0
                       and s["batch_queue"]["pending"] == 0,
                       "back to 10 modules, nothing pending or queued", timeout=60)
        q.call("release", runtime=runtime)
        base.call("release", runtime=runtime)
        s99, l99 = percentile(small, 0.99), percentile(large, 0.99)
        return [row("cached coordinate p99, 1,000 modules + 100,000 pending keys",
                    us(l99), "µs", "<= 2.0x", us(s99),
                    f"baseline: 10 modules, nothing pending; p50 {us(percentile(large, .5))}"
                    f" vs {us(percentile(small, .5))} µs; {pending} keys pending, daemon RSS "
                    f"{rss / MB:.0f} MB; the 990 extra modules are MANUAL-only")]

    def fig_memory(self, d: Daemon) -> list[Result]:
        """Figure 8: memory the workload added, reclaimed by cleanup."""
        runtime = d.runtime_str
        warm = self.agents[0]
        loaders = self.agents[1:6]
        # Warm the daemon up (one of everything) so one-time allocations are not counted.
        warm.call("register", runtime=runtime, module_ids=["mem-warm"], subscribe=["x"])
        warm.call("fill_cache", runtime=runtime, n=20, pad=16)
        warm.call("publish_pipelined", runtime=runtime, module_id="mem-warm", n=200,
                  prefix="w")
        warm.call("release", runtime=runtime)
        d.wait_for(lambda s: s["modules"] == 0, "warm-up module gone")
        d.client().optimize().get(timeout=60)
        time.sleep(0.3)
        before, kinds_before = d.rss(), d.rss_by_kind()
        per = 100
        self._parallel([(a, "register", {
            "runtime": runtime, "module_ids": [f"mem-{a.index}-{i}" for i in range(per)],
            "subscribe": ["mem-src", "mem-other"], "result_size": 256, "hybrid_first": 1})
            for a in loaders])
        max_entries = d.status()["cache_stats"]["max_size"]
        errors = loaders[0].call("fill_cache", runtime=runtime, n=max_entries, pad=256)
        status = d.wait_for(lambda s: s["modules"] == 500, "500 modules registered")
        size = status["cache_stats"]["size"]
        if errors or size < max_entries:
            raise BenchError(f"cache not filled: {size} of {max_entries} ({errors} errors)")
        loaded, kinds_loaded = d.rss(), d.rss_by_kind()
        time.sleep(0.5)  # inactive_after_ms is 300 in this config
        report = d.client().optimize().get(timeout=60)
        time.sleep(0.3)
        after, kinds_after = d.rss(), d.rss_by_kind()
        swept = report["memory"].get("modules_swept", "?") if isinstance(
            report.get("memory"), dict) else "?"
        for a in loaders:
            a.call("release", runtime=runtime)
        added = loaded - before
        if added <= 0:
            raise BenchError(f"the workload added no memory ({before} -> {loaded} bytes)")
        value = (loaded - after) / added
        return [row("memory added by 500 modules + full cache, reclaimed by cleanup",
                    round(value, 4), "fraction", ">= 0.50", None,
                    f"RSS before {before / MB:.1f} MB, loaded {loaded / MB:.1f} MB, after "
                    f"cleanup {after / MB:.1f} MB; swept {swept}; by kind (MB) before "
                    f"{kinds_before}, loaded {kinds_loaded}, after {kinds_after}")]

    def fig_idle_rss(self, d: Daemon) -> list[Result]:
        """Figure 11 (the daemon just started; nothing connected)."""
        time.sleep(0.3)
        rss = d.rss() / MB
        return [row("daemon resident memory when idle", round(rss, 1), "MB", "<= 50 MB", None,
                    "fresh daemon, no client")]

    def fig_start(self, config_dir: Path) -> list[Result]:
        """Figure 12: every start this run made, plus ``extra_starts`` more (and at least
        ``MIN_START_SAMPLES`` in all, when ``--only`` left few daemons to start)."""
        extra = max(self.plan.extra_starts, MIN_START_SAMPLES - len(self.start_times))
        for i in range(extra):
            d = self.daemon(f"start-{i}", config_dir)
            d.stop()
        value = median(self.start_times)
        return [row("start to ready (modcoord start, detached)", round(value, 3), "s",
                    "<= 0.5 s", None,
                    f"median of {len(self.start_times)}: "
                    f"{sorted(round(x, 3) for x in self.start_times)}")]

    def _timed_run(self, label: str, cmd: list[str]) -> tuple[float, str]:
        """Run ``cmd`` to completion in the bench directory; its wall time and stdout.

        Raises:
            BenchError: it exited non-zero or did not finish within ``CLI_TIMEOUT``.
        """
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CLI_TIMEOUT,
                                  cwd=self.root, env=user_env())
        except subprocess.TimeoutExpired:
            raise BenchError(f"{label} took over {CLI_TIMEOUT} s") from None
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise BenchError(f"{label} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
        return elapsed, proc.stdout

    def fig_startup(self, d: Daemon) -> list[Result]:
        """Figures 13 and 14: the client import and ``status --json`` against a bare start."""
        script = Path(sys.executable).parent / "modcoord"
        if script.is_file() and os.access(script, os.X_OK):
            status_cmd, how = [str(script)], "console script"
        else:
            status_cmd, how = [sys.executable, "-m", "modcoord.supervisor"], "python -m"
        commands: dict[str, list[str]] = {
            "bare": [sys.executable, "-c", "pass"],
            "import": [sys.executable, "-c", "from modcoord.supervisor import connect"],
            "status": [*status_cmd, "status", "--json", "--runtime-dir", d.runtime_str],
        }
        probe = ("import sys\nfrom modcoord.supervisor import connect\n"
                 "print(','.join(sorted({m.split('.')[0] for m in sys.modules}"
                 " & {'pykka', 'pydantic', 'loguru', 'yaml', 'msgspec', 'psutil', 'asyncio',"
                 " 'dataclasses', 'logging'})))")
        _, heavy = self._timed_run("import probe", [sys.executable, "-c", probe])
        for name, cmd in commands.items():  # warm-up: writes the .pyc files, page cache
            self._timed_run(name, cmd)
        times: dict[str, list[float]] = {name: [] for name in commands}
        names = list(commands)
        for r in range(self.plan.startup_rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                elapsed, out = self._timed_run(name, commands[name])
                if name == "status" and json.loads(out).get("pid") != d.pid:
                    raise BenchError(f"status --json did not describe daemon {d.pid}: "
                                     f"{out[:200]}")
                times[name].append(elapsed)
        added = [i - b for i, b in zip(times["import"], times["bare"], strict=True)]
        bare, status = median(times["bare"]), median(times["status"])

        def ms(seconds: float) -> float:
            return round(seconds * 1e3, 2)

        def spread(name: str) -> str:
            xs = times[name]
            return f"{ms(median(xs))} ms ({ms(min(xs))}-{ms(max(xs))})"

        rounds = (f"median (min-max) of {self.plan.startup_rounds} rounds: bare "
                  f"{spread('bare')}")
        return [
            row("import of modcoord.supervisor.connect, added to a bare start",
                ms(median(added)), "ms", "<= 1.5x", ms(bare),
                f"{rounds}, import {spread('import')}; added = import - bare per round; "
                f"heavy modules it imports: {heavy.strip() or 'none'}"),
            row("modcoord status --json against a running daemon", ms(status), "ms",
                "<= 4.0x", ms(bare), f"{rounds}, status {spread('status')} ({how})"),
        ]

    # -- the run --

    def run(self) -> list[Result]:
        """Measure every figure; returns the rows in the order of the figure list above."""
        root = self.root

        def wanted(*figures: int) -> bool:
            return not self.only or bool({str(f) for f in figures} & self.only)

        if wanted(*range(1, 11), 21, 22):  # figures 11-14 need no agents or baseline servers
            self.start_infrastructure(10)
        default_cfg = make_config_dir(root, "default")
        fast_cfg = make_config_dir(root, "fast", {
            "debounce": {"delay_ms": 1.0, "critical_delay_ms": 1.0},
            "batch": {"max_queue": 1_000_000}})
        long_delay = {"delay_ms": 600_000.0, "max_wait_ms": 600_000.0}
        flush_cfg = make_config_dir(root, "flush", {
            "debounce": long_delay, "batch": {"max_queue": 1_000_000},
            "cache": {"ttl_ms": 600_000.0}})
        unbatched_cfg = make_config_dir(root, "unbatched", {
            "debounce": long_delay, "batch": {"max_queue": 1_000_000, "enabled": False},
            "cache": {"ttl_ms": 600_000.0}})
        fixed_cfg = make_config_dir(root, "fixed", {"adaptive": {"enabled": False}})
        memory_cfg = make_config_dir(root, "memory", {
            "memory": {"inactive_after_ms": 300.0, "cleanup_interval_ms": 600_000.0},
            "cache": {"ttl_ms": 600_000.0}})

        rows: dict[str, list[Result]] = {}

        def measure(key: str, label: str, fn: Callable[[], list[Result]],
                    placeholders: list[tuple[str, str, str]], *daemons: Daemon) -> None:
            if not wanted(*map(int, key.split("-"))):
                return
            before = len(self.results)
            self.measure(label, fn, placeholders, daemons)
            rows[key] = self.results[before:]

        # A daemon is started only when a figure measured on it is wanted (``--only``).
        if wanted(1, 2, 3, 5, 9, 11, 13, 14, 21):
            self.progress("starting the daemon (packaged configs)")
            self.figures_on_main(self.daemon("main", default_cfg), measure)
        if wanted(4):
            self.progress("starting the daemon (debounce delay 1 ms)")
            fast_d = self.daemon("fast", fast_cfg)
            measure("4", "updates delivered per second", lambda: self.fig_delivered(fast_d),
                    [("updates delivered to a subscriber per second (HYBRID, distinct keys)",
                      "updates/s", ">= 0.3x")], fast_d)
            fast_d.stop()
        if wanted(6, 10):
            self.progress("starting the batched and unbatched daemons")
            flush_d = self.daemon("flush", flush_cfg)
            if wanted(6):
                unbatched_d = self.daemon("unbatched", unbatched_cfg)
                measure("6", "batched vs unbatched",
                        lambda: self.fig_batching(flush_d, unbatched_d),
                        [("batched vs unbatched delivery throughput (flush of pending "
                          "updates)", "updates/s", ">= 10x")], flush_d, unbatched_d)
                unbatched_d.stop()
            measure("10", "1,000 modules + 100,000 pending keys",
                    lambda: self.fig_many(flush_d),
                    [("cached coordinate p99, 1,000 modules + 100,000 pending keys", "µs",
                      "<= 2.0x")], flush_d)
            flush_d.stop()
        if wanted(7):
            self.progress("starting the daemon (HYBRID with its configured values)")
            fixed_d = self.daemon("fixed", fixed_cfg)
            measure("7", "critical vs normal latency", lambda: self.fig_priority(fixed_d),
                    [("critical vs normal publish-to-delivery latency: less latency",
                      "fraction", ">= 0.85")], fixed_d)
            fixed_d.stop()
        if wanted(8):
            self.progress("starting the daemon (short inactivity)")
            memory_d = self.daemon("memory", memory_cfg)
            measure("8", "memory reclaimed by cleanup", lambda: self.fig_memory(memory_d),
                    [("memory added by 500 modules + full cache, reclaimed by cleanup",
                      "fraction", ">= 0.50")], memory_d)
            memory_d.stop()

        measure("12", "start to ready", lambda: self.fig_start(default_cfg),
                [("start to ready (modcoord start, detached)", "s", "<= 0.5 s")])
        self.adaptive_figures(measure)
        measure("19-20", "refresh-ahead (real daemons, TTL 200 ms)",
                lambda: predictive.fig_refresh_ahead(
                    root, self.daemon, self.plan.rounds < Plan.of(False).rounds),
                [(predictive.ROW_HIT_RATE, "fraction", ">= 0.98"),
                 (predictive.ROW_P99, "µs", "<= 0.2x")])
        measure("22", "history sampling cost (history on vs off)",
                lambda: history_cost.fig_history_cost(
                    root, self.daemon, self.agents[0], self.plan.rounds,
                    self.plan.pipelined_n),
                [(history_cost.ROW, "ratio", ">= 0.98")])
        measure("23", "dashboard first load (headless chromium, a day of history)",
                lambda: dashboard.fig_dashboard_first_load(
                    root, self.daemon, self.plan.rounds < Plan.of(False).rounds),
                [(dashboard.ROW, "ms", "<= 1000 ms")])
        order = ["1-2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13-14",
                 "15-16", "17", "18", "19-20", "21", "22", "23"]
        return [r for key in order for r in rows.get(key, [])]

    def adaptive_figures(self, measure: Callable[..., None]) -> None:
        """Figures 15-18: in this process, on the actors (no daemon, no agents)."""
        quick = self.plan.rounds < Plan.of(False).rounds
        measure("15-16", "adaptive debouncing (simulated typing trace)",
                lambda: adaptive.fig_adaptive_debounce(quick),
                [(adaptive.ROW_COLLAPSED, "updates", ">= 0.9x"),
                 (adaptive.ROW_DEBOUNCE_LATENCY, "ms", "<= 0.6x")])
        measure("17", "adaptive batching, light load (simulated)",
                lambda: adaptive.fig_adaptive_batch_light(quick),
                [(adaptive.ROW_LIGHT, "ms", "<= 0.5x")])
        measure("18", "adaptive batching, heavy load",
                lambda: adaptive.fig_adaptive_batch_heavy(quick),
                [(adaptive.ROW_HEAVY, "updates/s", ">= 0.95x")])

    def figures_on_main(self, main_d: Daemon, measure: Callable[..., None]) -> None:
        """The figures measured on the daemon with the packaged configs; stops it after."""
        measure("11", "idle memory", lambda: self.fig_idle_rss(main_d),
                [("daemon resident memory when idle", "MB", "<= 50 MB")], main_d)
        measure("1-2", "coordinate round trips", lambda: self.fig_latency(main_d),
                [("cached coordinate round trip p50", "µs", "<= 1.0x"),
                 ("cached coordinate round trip p99", "µs", "<= 4.0x")], main_d)
        measure("21", "cached coordinate under contention (one CPU burner per core)",
                lambda: contention.fig_contention(
                    self.ctx, self.agents[0], main_d, self.manager_path,
                    max(self.plan.rounds // 2, 5), self.plan.coord_n),
                [(contention.ROW_P50, "µs", "<= 1.0x"), (contention.ROW_P99, "µs", "<= 2.0x")],
                main_d)
        measure("3", "publish throughput", lambda: self.fig_publish(main_d),
                [("publish throughput, one process, pipelined", "msg/s", ">= 0.5x")], main_d)
        measure("5", "cached vs uncached, 10 modules",
                lambda: self.fig_coordination_cache(main_d),
                [("cached vs uncached coordination, 10 module processes: less latency",
                  "fraction", ">= 0.90")], main_d)
        measure("9", "debounce lateness", lambda: self.fig_lateness(main_d),
                [("debounce timer lateness p99 at full publish load", "ms", "<= 2 ms")], main_d)
        measure("13-14", "client import and status --json vs a bare start",
                lambda: self.fig_startup(main_d),
                [("import of modcoord.supervisor.connect, added to a bare start", "ms",
                  "<= 1.5x"),
                 ("modcoord status --json against a running daemon", "ms", "<= 4.0x")],
                main_d)
        main_d.stop()
