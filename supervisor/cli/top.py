"""A live view of the daemon: throughput, latency percentiles, queue depths, cache hit
rate, memory, modules and restarts, refreshed every second until Ctrl-C."""

from __future__ import annotations

import argparse
import time
from typing import Any

from modcoord.supervisor.cli._common import client

HELP = "live view of the metrics"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    p.add_argument("--iterations", type=int, default=0,
                   help="stop after N refreshes (0 = until Ctrl-C)")


def render(status: dict[str, Any], previous: dict[str, Any] | None, elapsed: float) -> Any:
    """Build the rich renderable for one refresh (pure: testable without a terminal)."""
    from rich.table import Table

    perf = status["performance_metrics"]
    lat = perf["coordination_latency_ms"]
    deb = status.get("debouncer") or {}
    bat = status.get("batcher") or {}

    def rate(section: str, key: str) -> str:
        if previous is None or elapsed <= 0:
            return "–"
        now = (status.get(section) or {}).get(key, 0)
        before = (previous.get(section) or {}).get(key, 0)
        return f"{(now - before) / elapsed:,.0f}/s"

    table = Table(title=f"modcoord pid {status['pid']} — mode {status['mode']} — "
                        f"up {status['uptime_s']:.0f} s", expand=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("updates in", f"{deb.get('received', 0):,}  ({rate('debouncer', 'received')})")
    table.add_row("updates delivered", f"{bat.get('updates', 0):,}  ({rate('batcher', 'updates')})")
    table.add_row("debounce pending", f"{deb.get('pending', 0):,}")
    table.add_row("batch queue", f"{status['batch_queue']['pending']:,} / "
                                 f"{status['batch_queue'].get('max_queue', 0):,}")
    table.add_row("coordination p50/p95/p99 ms",
                  f"{lat['p50']:.3f} / {lat['p95']:.3f} / {lat['p99']:.3f}")
    table.add_row("cache hit rate", f"{perf['cache_hit_rate']:.2%}")
    table.add_row("batch efficiency", f"{perf['batch_efficiency']:.1f} updates/ms")
    table.add_row("memory", f"{perf['memory_usage_bytes'] / 1048576:.1f} MiB")
    table.add_row("modules / subscriptions",
                  f"{status['modules']} / {perf['active_subscriptions']}")
    for name, actor in status["actors"].items():
        table.add_row(f"actor {name}",
                      f"{'up' if actor['alive'] else 'DOWN'}, {actor['restarts']} restarts")
    return table


def run(args: argparse.Namespace) -> int:
    from rich.live import Live

    previous: dict[str, Any] | None = None
    last = time.monotonic()
    count = 0
    with client(args) as c, Live(refresh_per_second=4, auto_refresh=False) as live:
        try:
            while True:
                status = c.status().get(timeout=10)
                now = time.monotonic()
                live.update(render(status, previous, now - last), refresh=True)
                previous, last = status, now
                count += 1
                if args.iterations and count >= args.iterations:
                    return 0
                time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0
