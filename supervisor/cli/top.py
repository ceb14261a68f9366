"""A live view of the daemon: throughput, latency percentiles, queue depths, cache hit
rate, memory, modules and restarts, and the monitor's insights, refreshed every second
until ``q`` (or Ctrl-C).

On a terminal the keyboard is read a key at a time (cbreak mode: no echo, no Enter
needed; Ctrl-C still interrupts); the terminal's settings are put back on every exit, a
Ctrl-C or an error included."""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import time
from collections.abc import Iterator
from typing import Any

from modcoord.supervisor.cli._common import UsageError, client, format_uptime

#: The keys that quit.
QUIT_KEYS = frozenset("qQ")

HELP = "live view of the metrics"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    p.add_argument("--iterations", type=int, default=0,
                   help="stop after N refreshes (0 = until Ctrl-C)")


#: The figures ``top`` draws as sparklines, over the last :data:`SPARK_SINCE_S` seconds.
SPARK_METRICS = ("coordination_p99_ms", "updates_in_per_s", "updates_delivered_per_s",
                 "cache_hit_rate", "batch_queue_depth", "memory_rss_bytes")
SPARK_SINCE_S = 300.0


def render(status: dict[str, Any], previous: dict[str, Any] | None, elapsed: float,
           insights: list[dict[str, Any]] | None = None, keys: bool = True,
           history: dict[str, Any] | None = None, height: int | None = None,
           width: int | None = None) -> Any:
    """Build the rich renderable for one refresh (pure: testable without a terminal): the
    metrics table, the last minutes of each figure as a sparkline (from ``history``, the
    ``history`` call's answer, if given), then the insights section (then the quit hint,
    if ``keys`` are read).

    With ``height`` (the terminal's rows; ``width`` its columns) it fits them: the
    sparklines go first, then the insights are cut to the rows left with a line saying how
    many more there are (so the quit hint is always on screen); the table is never cut."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from modcoord.supervisor.cli.insights import insight_lines

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
                        f"up {format_uptime(status['uptime_s'])}", expand=False)
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
    lines = insight_lines(insights or [])

    def assemble(lines: list[str], sparks_on: bool) -> Any:
        body = "\n".join(lines) if lines else "  none: every rule is within its threshold"
        section = Text()
        section.append(f"insights ({len(insights or [])})\n", style="bold")
        section.append(body)
        parts: list[Any] = [table]
        if history is not None and sparks_on:
            from modcoord.supervisor.cli.history import spark_lines

            shown = {m: p for m, p in history.get("series", {}).items() if m in SPARK_METRICS}
            sparks = Text()
            sparks.append(f"last {SPARK_SINCE_S / 60:g} min\n", style="bold")
            drawn = spark_lines({"series": shown}, 40, brief=True)
            sparks.append("\n".join(drawn) or "  no history yet")
            parts.append(sparks)
        parts.append(section)
        if keys:
            parts.append(Text("press q to quit", style="dim"))
        return Group(*parts)

    view = assemble(lines, True)
    if height is None or _rows(view, width) <= height:
        return view
    view = assemble(lines, False)  # the sparklines go first
    if _rows(view, width) <= height:
        return view

    def cut(shown: int) -> Any:
        return assemble([*lines[:shown],
                         f"  … {len(lines) - shown} more lines: modcoord insights"], False)

    fits, too_many = 0, len(lines)  # the most insight lines that fit: a binary search
    while too_many - fits > 1:
        middle = (fits + too_many) // 2
        if _rows(cut(middle), width) <= height:
            fits = middle
        else:
            too_many = middle
    return cut(fits)


def _rows(renderable: Any, width: int | None) -> int:
    """How many terminal rows ``renderable`` takes at ``width`` columns (wrapping
    included), measured by rendering it off screen."""
    import io

    from rich.console import Console

    console = Console(width=width or 80, file=io.StringIO(), color_system=None)
    return len(console.render_lines(renderable, console.options, pad=False))


@contextlib.contextmanager
def keyboard() -> Iterator[int | None]:
    """Stdin in cbreak mode while inside (its fd), restored on the way out whatever
    happens; ``None`` when stdin is not a terminal (then only Ctrl-C or ``--iterations``
    end the view)."""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    if fd < 0 or not os.isatty(fd):
        yield None
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def wait_key(fd: int | None, timeout: float) -> bool:
    """Wait up to ``timeout`` s for a key; whether a quit key was pressed."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if fd is None:
            time.sleep(left)
            return False
        readable, _, _ = select.select([fd], [], [], left)
        if readable:
            data = os.read(fd, 64)
            if not data:  # the terminal went away
                return True
            if QUIT_KEYS.intersection(data.decode(errors="replace")):
                return True


def run(args: argparse.Namespace) -> int:
    if not args.interval > 0:
        raise UsageError(f"--interval must be more than 0 seconds (got {args.interval:g})")
    if args.iterations < 0:
        raise UsageError(f"--iterations must not be negative (got {args.iterations})")
    try:
        return _view(args)
    finally:
        if not sys.stdout.isatty():
            sys.stdout.write("\n")  # rich leaves the last line of a non-terminal open


def _history(c: Any) -> dict[str, Any] | None:
    """The last minutes of history, or ``None`` when the daemon keeps none (off)."""
    from modcoord.actors.errors import InvalidMessageError

    try:
        result: dict[str, Any] = c.history(since_s=SPARK_SINCE_S).get(timeout=10)
    except InvalidMessageError:  # history.enabled: false
        return None
    return result


def _view(args: argparse.Namespace) -> int:
    from rich.live import Live

    previous: dict[str, Any] | None = None
    last = time.monotonic()
    count = 0
    with client(args) as c, keyboard() as keys, \
            Live(refresh_per_second=4, auto_refresh=False) as live:
        try:
            while True:
                status = c.status().get(timeout=10)
                insights = c.insights().get(timeout=10)["insights"]
                history = _history(c)
                now = time.monotonic()
                screen = live.console.is_terminal  # a pipe or file gets it all
                live.update(render(status, previous, now - last, insights, keys is not None,
                                   history, height=live.console.height if screen else None,
                                   width=live.console.width), refresh=True)
                previous, last = status, now
                count += 1
                if args.iterations and count >= args.iterations:
                    return 0
                if wait_key(keys, args.interval):
                    return 0
        except KeyboardInterrupt:
            return 0
