"""Figure 21: cached ``coordinate`` on a busy machine, against the ``multiprocessing.managers``
echo on the same busy machine.

One CPU-burning process per CPU (``os.cpu_count()``, busy loops at normal priority) runs
beside the daemon of figures 1-2 and a module process (an agent). Each round, with the
burners running, the agent alternates chunks of cached ``coordinate`` calls and of manager
echo calls (so that whatever the scheduler does hits both alike), and the round's p50 and
p99 of each are taken. Values: the median over the rounds of the per-round p50 (row 1)
and p99 (row 2); baselines: the same medians of the manager echo; the notes give the
rounds' spread (min-max) and the client's waiting counters (how many waits spun, and
how many blocked at once because no CPU was idle: ``protocol/waiting.py``).
"""

from __future__ import annotations

import os
from typing import Any

from .agents import Agent
from .common import COORD_CONTEXT, BenchError, Result, median, percentile, row, us
from .daemons import Daemon

ROW_P50 = "cached coordinate p50, one CPU burner per core"
ROW_P99 = "cached coordinate p99, one CPU burner per core"
CHUNKS = 4  # chunks of each variant per round, alternating


def _burn(stop: Any) -> None:
    """A CPU burner: busy loops until ``stop`` is set."""
    while not stop.is_set():
        for _ in range(10_000):
            pass


def fig_contention(ctx: Any, agent: Agent, d: Daemon, manager_path: str, rounds: int,
                   n: int) -> list[Result]:
    """Figure 21 (``rounds`` rounds of ``n`` calls of each variant).

    Raises:
        BenchError: a task failed or the agent's cached calls were not cached.
    """
    stop = ctx.Event()
    burners = [ctx.Process(target=_burn, args=(stop,), daemon=True)
               for _ in range(os.cpu_count() or 1)]
    runtime = d.runtime_str
    agent.call("register", runtime=runtime, module_ids=["contention-0"])
    coord50: list[float] = []
    coord99: list[float] = []
    man50: list[float] = []
    man99: list[float] = []
    waits: dict[str, int] = {}
    try:
        for p in burners:
            p.start()
        before = agent.call("client_statistics", runtime=runtime)
        chunk = max(n // CHUNKS, 10)
        for _ in range(rounds):
            coord: list[float] = []
            manager: list[float] = []
            for _ in range(CHUNKS):
                out = agent.call("coordinate_loop", runtime=runtime, n=chunk,
                                 context=COORD_CONTEXT, warmup=5, timeout=300)
                coord += out["samples"]
                manager += agent.call("manager_loop", address=manager_path, n=chunk,
                                      warmup=5, timeout=300)
            if len(coord) < chunk:
                raise BenchError(f"only {len(coord)} of {chunk * CHUNKS} calls were cached")
            coord50.append(percentile(coord, 0.5))
            coord99.append(percentile(coord, 0.99))
            man50.append(percentile(manager, 0.5))
            man99.append(percentile(manager, 0.99))
        after = agent.call("client_statistics", runtime=runtime)
        waits = {k: after[k] - before[k] for k in ("spins", "blocked_busy", "blocked_backoff")
                 if k in after}
    finally:
        stop.set()
        for p in burners:
            p.join(5)
            if p.is_alive():
                p.kill()
        agent.call("release", runtime=runtime)

    def spread(xs: list[float]) -> str:
        return f"{us(median(xs))} µs ({us(min(xs))}-{us(max(xs))})"

    rounds_note = (f"median (min-max) of {rounds} rounds of {chunk * CHUNKS} calls each, "
                   f"{len(burners)} burners")
    return [
        row(ROW_P50, us(median(coord50)), "µs", "<= 1.0x", us(median(man50)),
            f"baseline: managers echo p50 under the same burners, {spread(man50)}; "
            f"coordinate {spread(coord50)}; {rounds_note}; client waits {waits}"),
        row(ROW_P99, us(median(coord99)), "µs", "<= 2.0x", us(median(man99)),
            f"baseline: managers echo p99 under the same burners, {spread(man99)}; "
            f"coordinate {spread(coord99)}; {rounds_note}"),
    ]

