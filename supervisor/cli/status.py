"""Show whether the daemon runs (exit 0), is dead with a stale pidfile (exit 1), or does
not run (exit 3), with its state; the uptime reads as ``up 2h 03m 14s``.

With ``--json`` the answer is one JSON object on stdout either way: the daemon's status
(``"running": true``, ``uptime_s`` in seconds) or, when no daemon answers,
``{"running": false, "runtime_dir", "socket", "reason", "stale_pidfile"}`` (``"ok":
false``, ``"error"``, ``"exit_code"`` 3, or 1 when ``stale_pidfile`` is not null); the
reason is also the one line on stderr.

A stale pidfile is one that no live daemon holds locked (the kernel drops the lock when
the process dies, so a daemon killed with SIGKILL leaves it behind): ``stale_pidfile`` is
``{"path", "pid", "pid_alive"}``.
"""

from __future__ import annotations

import argparse
from typing import Any

from modcoord.actors.errors import NotRunningError
from modcoord.supervisor.cli._common import (
    CliError,
    ExitCode,
    client,
    emit,
    format_uptime,
    runtime_dir,
)

HELP = "show the daemon's status (exit 3 when not running)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass  # --json: added by the parser builder


def stale_pidfile(args: argparse.Namespace) -> dict[str, Any] | None:
    """The runtime directory's pidfile when no live daemon holds it (a daemon that died
    without cleaning up, e.g. killed with SIGKILL): ``{"path", "pid", "pid_alive"}``;
    ``None`` when there is none, a daemon holds it, or it is no daemon's (a symlink, not a
    regular file, no pid in it)."""
    from modcoord.supervisor.cli.stop import alive
    from modcoord.supervisor.daemon.process import is_locked, read_pid
    from modcoord.supervisor.protocol.paths import pidfile_path

    path = pidfile_path(runtime_dir(args))
    pid = read_pid(path)  # None too for a symlink or a non-regular file: not a daemon's
    if pid is None or is_locked(path):
        return None
    return {"path": str(path), "pid": pid, "pid_alive": alive(pid)}


def not_running(args: argparse.Namespace, exc: NotRunningError) -> CliError:
    """The failure when no daemon answers on the runtime directory: exit 3, or exit 1
    (LSB "dead and pid file exists") with a stale pidfile."""
    from modcoord.supervisor.protocol.paths import socket_path

    where = runtime_dir(args)
    stale = stale_pidfile(args)
    details = {"running": False, "runtime_dir": str(where),
               "socket": str(socket_path(where)), "stale_pidfile": stale}
    if stale is None:
        return CliError(str(exc), ExitCode.NOT_RUNNING, reason=str(exc), **details)
    pid = stale["pid"]
    still = (f" (pid {pid} now belongs to another process)" if stale["pid_alive"]
             else "")
    message = (f"modcoord is dead: pid {pid} left the pidfile {stale['path']} but no daemon "
               f"holds it{still}; run 'modcoord start' to start a new daemon (it replaces "
               f"the stale files), or remove {stale['path']}")
    return CliError(message, ExitCode.FAILURE, reason=message, **details)


def run(args: argparse.Namespace) -> int:
    try:
        with client(args) as c:
            status = c.status().get(timeout=10)
    except NotRunningError as exc:
        raise not_running(args, exc) from None
    perf = status["performance_metrics"]
    lat = perf["coordination_latency_ms"]
    if args.json:
        emit(args, status)
        return 0
    print(f"modcoord running: pid {status['pid']}, up {format_uptime(status['uptime_s'])}, "
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
    own = [(n, a) for n, a in status["actors"].items() if a.get("process") == "own"]
    if own:  # the actors in processes of their own (the rest share the daemon's pid)
        print("  actor processes: " + ", ".join(
            f"{n} pid {a['pid']} {(a.get('rss_bytes') or 0) / 1048576:.1f} MiB "
            f"{a.get('cpu_seconds') or 0:.2f} s CPU" for n, a in own))
    line = engine_line(status.get("engine") or {})
    if line is not None:
        print(f"  {line}")
    if status.get("last_reload_error"):
        print(f"  last reload error: {status['last_reload_error']}")
    return 0


def engine_line(engine: dict[str, Any]) -> str | None:
    """The one line of the cluster (``status.engine`` of the NATS engine; also printed by
    ``insights``), or ``None`` for the local engine."""
    if engine.get("kind") != "nats":
        return None
    agent = engine.get("agent", {})
    partitions = engine.get("partitions", {})
    unowned = partitions.get("unowned") or []
    return (f"engine: nats, instance {engine.get('instance_id')}, "
            f"{'connected' if engine.get('connected') else 'DISCONNECTED'}, "
            f"{len(engine.get('instances', []))} instances, partitions owned "
            f"{len(partitions.get('owned', []))}/{partitions.get('total')}"
            + (f" ({len(unowned)} unowned)" if unowned else "")
            + f", agent buffered {agent.get('buffered')}/{agent.get('max_buffered')}")
