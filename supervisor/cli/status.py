"""Show whether the daemon runs (exit 0) or not (exit 3), with its state.

With ``--json`` the answer is one JSON object on stdout either way: the daemon's status
(``"running": true``) or, when no daemon answers, ``{"running": false, "runtime_dir",
"socket", "reason"}`` with exit 3 (the reason is also the one line on stderr).
"""

from __future__ import annotations

import argparse
from typing import Any

from modcoord.actors.errors import NotRunningError
from modcoord.supervisor.cli._common import client, print_json, runtime_dir

HELP = "show the daemon's status (exit 3 when not running)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")


def not_running(args: argparse.Namespace, exc: NotRunningError) -> dict[str, Any]:
    """The ``status --json`` object when no daemon answers on the runtime directory."""
    from modcoord.supervisor.protocol.paths import socket_path

    where = runtime_dir(args)
    return {"running": False, "runtime_dir": str(where), "socket": str(socket_path(where)),
            "reason": str(exc)}


def run(args: argparse.Namespace) -> int:
    try:
        with client(args) as c:
            status = c.status().get(timeout=10)
    except NotRunningError as exc:
        if not args.json:
            raise
        print_json(not_running(args, exc))
        raise
    if args.json:
        print_json(status)
        return 0
    perf = status["performance_metrics"]
    lat = perf["coordination_latency_ms"]
    print(f"modcoord running: pid {status['pid']}, up {status['uptime_s']:.1f} s, "
          f"mode {status['mode']}")
    print(f"  modules: {status['modules']}   subscriptions: {perf['active_subscriptions']}")
    print(f"  coordination latency ms: p50 {lat['p50']:.3f}  p95 {lat['p95']:.3f}  "
          f"p99 {lat['p99']:.3f}")
    cache = status["cache_stats"]
    print(f"  cache: {cache.get('size', 0)}/{cache.get('max_size', 0)}"
          f" entries, hit rate {perf['cache_hit_rate']:.2f}"
          + (f", refreshed {cache.get('refreshes', 0)} ahead"
             f" ({cache.get('refresh_failures', 0)} failed), pre-warmed"
             f" {cache.get('prewarmed', 0)}"
             if any(cache.get(k) for k in ("refreshes", "refresh_failures", "prewarmed"))
             else ""))
    print(f"  batch queue: {status['batch_queue']['pending']} pending, "
          f"efficiency {perf['batch_efficiency']:.1f} updates/ms")
    print(f"  memory: {perf['memory_usage_bytes'] / 1048576:.1f} MiB")
    actors = ", ".join(f"{n} {'up' if a['alive'] else 'DOWN'} ({a['restarts']} restarts)"
                       for n, a in status["actors"].items())
    print(f"  actors: {actors}")
    if status.get("last_reload_error"):
        print(f"  last reload error: {status['last_reload_error']}")
    return 0
