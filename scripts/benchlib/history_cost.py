"""Figure 22: what the performance history costs the publish path, against the same run
with it off.

Two daemons start with the packaged configs, but for ``daemon.yaml``'s ``history.enabled``:
true for one (sampling every second into SQLite in its own state directory, counting each
module's publishes for the busiest modules' rates), false for the other (the baseline).
One module process publishes at full speed (pipelined, keys cycling over 1,000, as in
figure 3) for long enough that the sampler runs several times each round; the rounds
alternate between the two daemons and the order flips every round, so that drift and
load from elsewhere hit both alike. At full load the daemon is CPU-bound, so its
throughput is publishes per second of its CPU time (its process's user + system time over
the round: the sampler and writer threads included); that, unlike the wall-clock rate,
does not move with what else the machine runs. Value: the median over the rounds of the
paired ratio (history on / history off, same round) of publishes per daemon CPU second;
the spread is the ratios' range; the wall-clock rates are in the notes, and so is the
share of the history-on daemon's CPU its sampler and writer threads used (their own
thread CPU time, ``status`` ``history.cpu_s``: a direct reading of the cost, beside the
difference of two noisy rates).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from .agents import Agent
from .common import BenchError, Result, median, row
from .daemons import Daemon, make_config_dir

ROW = "publish throughput with the history sampling vs without"
KEYS = 1000
MIN_ROUNDS = 5
ROUND_SCALE = 8
"""Publishes per round: ``Plan.pipelined_n`` times this (seconds at full speed, so that
the once-a-second sampler runs inside every round)."""


def fig_history_cost(root: Path, start: Callable[[str, Path], Daemon], agent: Agent,
                     rounds: int, n: int) -> list[Result]:
    """Figure 22 (see the module docstring).

    Raises:
        BenchError: a publish was refused, or the history-on daemon's history is not ok.
    """
    on = start("history-on", make_config_dir(root, "history-on",
                                             daemon={"history": {"enabled": True}}))
    off = start("history-off", make_config_dir(root, "history-off",
                                               daemon={"history": {"enabled": False}}))
    n *= ROUND_SCALE
    rounds = max(rounds, MIN_ROUNDS)
    try:
        for d in (on, off):
            agent.call("register", runtime=d.runtime_str, module_ids=["hist-pub"])
            agent.call("publish_pipelined", runtime=d.runtime_str, module_id="hist-pub",
                       n=n // 5, prefix="warm", keys=KEYS)
        rates: dict[str, list[float]] = {"on": [], "off": []}
        per_cpu: dict[str, list[float]] = {"on": [], "off": []}
        share: list[float] = []  # the history threads' part of the on-daemon's CPU
        for r in range(rounds):
            pair = [("on", on), ("off", off)]
            for name, d in pair if r % 2 == 0 else pair[::-1]:
                cpu0, history0 = d.cpu_seconds(), _history_cpu(d)
                out = agent.call("publish_pipelined", runtime=d.runtime_str,
                                 module_id="hist-pub", n=n, prefix=f"h{r}-", keys=KEYS,
                                 timeout=300)
                cpu = d.cpu_seconds() - cpu0
                if name == "on" and cpu > 0:
                    share.append((_history_cpu(d) - history0) / cpu)
                if out["errors"]:
                    raise BenchError(f"publishes refused ({name}): {out['errors']}")
                if cpu <= 0:
                    raise BenchError(f"no daemon CPU time measured ({name}, round {r})")
                rates[name].append(out["rate"])
                per_cpu[name].append(n / cpu)
        history = on.status()["history"]
        if history["state"] != "ok" or history["rows"] == 0:
            raise BenchError(f"the history-on daemon's history is not working: {history}")
        if off.status()["history"]["state"] != "off":
            raise BenchError("the history-off daemon has a history")
    finally:
        for d in (on, off):
            agent.call("release", runtime=d.runtime_str)
            d.stop()
    count_s = _count_cost_s()
    counting = median([count_s * rate for rate in per_cpu["on"]])  # s of counting per CPU s
    threads = median(share)
    ratios = [a / b for a, b in zip(per_cpu["on"], per_cpu["off"], strict=True)]
    wall = [a / b for a, b in zip(rates["on"], rates["off"], strict=True)]
    value = median(ratios)
    return [row(ROW, round(value, 4), "ratio", ">= 0.98", None,
                f"median of {rounds} paired rounds (on/off, order alternating) of publishes "
                f"per daemon CPU second, ratios {min(ratios):.3f}-{max(ratios):.3f}; on "
                f"{round(median(per_cpu['on'])):,}/s, off {round(median(per_cpu['off'])):,}/s"
                f" (medians); wall clock: on {round(median(rates['on'])):,} msg/s, off "
                f"{round(median(rates['off'])):,} msg/s, paired ratio {median(wall):.3f} "
                f"({min(wall):.3f}-{max(wall):.3f}); {n:,} publishes a round, {KEYS:,} keys; "
                f"{history['rows']:,} history rows; measured directly: the sampler and "
                f"writer threads used {threads:.2%} of the daemon's CPU (median, "
                f"{min(share):.2%}-{max(share):.2%}; status history.cpu_s) and counting each "
                f"publish {counting:.2%} ({count_s * 1e9:.0f} ns a publish), so history "
                f"on / off throughput = {1 / (1 + threads + counting):.4f}")]


def _count_cost_s(batch: int = 256, repeat: int = 400) -> float:
    """Seconds :meth:`ModuleRates.count` takes per publish item (one module's batch of
    ``batch`` items, as a pipelined publisher sends), timed in this process."""
    from modcoord.supervisor.daemon.sampling import ModuleRates

    rates = ModuleRates()
    items = [("hist-pub", f"k{i}", {"n": i}, "medium") for i in range(batch)]
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeat):
            rates.count(items)
        best = min(best, (time.perf_counter() - t0) / (repeat * batch))
    return best


def _history_cpu(d: Daemon) -> float:
    """The CPU seconds the daemon's history threads used (``status`` ``history.cpu_s``;
    0 with the history off)."""
    return float(d.status()["history"].get("cpu_s", 0.0))
