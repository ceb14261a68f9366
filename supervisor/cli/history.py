"""The performance history: series of the daemon's figures, as JSON, CSV or, on a
terminal, one sparkline per metric."""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from typing import Any

from modcoord.supervisor.cli._common import UsageError, client, emit, user_error

HELP = "the performance history (series of the key figures)"

#: The blocks of a sparkline, lowest first.
SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
#: Sparkline width on a terminal (points are averaged down to it).
SPARK_WIDTH = 60


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_since(text: str) -> int:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"7d"`` (or plain seconds) → whole seconds.

    Raises:
        argparse.ArgumentTypeError: not a positive duration, or longer than the history's
            longest retention (30 days); argparse then exits 2 with the message.
    """
    from modcoord.supervisor.protocol.calls import HISTORY_MAX_SINCE_S

    raw = text.strip().lower()
    unit = _UNITS.get(raw[-1:]) if raw else None
    try:
        seconds = float(raw[:-1] if unit is not None else raw) * (unit or 1)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= HISTORY_MAX_SINCE_S:
        raise argparse.ArgumentTypeError(
            f"duration {text!r} must be a positive number of s, m, h or d (e.g. 90s, 15m, "
            f"1h, 7d) of at most {HISTORY_MAX_SINCE_S // 86_400}d")
    return math.ceil(seconds)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", action="append", default=None, metavar="M",
                   help="a metric to show (repeatable; default: all)")
    p.add_argument("--since", type=parse_since, default=3600, metavar="DURATION",
                   help="how far back: 90s, 15m, 1h, 7d (default 1h, at most 30d)")
    p.add_argument("--csv", action="store_true",
                   help="print CSV rows: metric,ts,min,max,mean,last")


def sparkline(values: Sequence[float], width: int = SPARK_WIDTH) -> str:
    """``values`` as unicode blocks, averaged down to at most ``width`` characters; a flat
    series is drawn at the lowest block, an empty one as ``""``."""
    if not values:
        return ""
    if len(values) > width:
        step = len(values) / width
        values = [sum(chunk) / len(chunk) for i in range(width)
                  if (chunk := values[int(i * step):max(int((i + 1) * step), int(i * step) + 1)])]
    lo, hi = min(values), max(values)
    span = hi - lo
    top = len(SPARK_BLOCKS) - 1
    return "".join(SPARK_BLOCKS[0 if span <= 0 else round((v - lo) / span * top)]
                   for v in values)


def _fmt(value: float) -> str:
    if abs(value) >= 1e6:
        return f"{value / 1e6:.1f}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.1f}k"
    return f"{value:.3g}"


def spark_lines(result: dict[str, Any], width: int = SPARK_WIDTH, brief: bool = False
                ) -> list[str]:
    """The terminal lines of a ``history`` answer: per metric, its name, sparkline of the
    bucket means, and min / last / max (``brief``: the last value only, as ``top`` draws
    it)."""
    series = result.get("series") or {}
    name_width = max((len(m) for m in series), default=0)
    lines = []
    for metric, points in series.items():
        means = [p[3] for p in points]
        if not means:
            lines.append(f"{metric:<{name_width}}  (no data)")
            continue
        if brief:
            lines.append(f"{metric:<{name_width}}  {sparkline(means, width)}  "
                         f"{_fmt(points[-1][4])}")
            continue
        lo = min(p[1] for p in points)
        hi = max(p[2] for p in points)
        lines.append(f"{metric:<{name_width}}  {sparkline(means, width)}  "
                     f"min {_fmt(lo)}  last {_fmt(points[-1][4])}  max {_fmt(hi)}")
    return lines


def run(args: argparse.Namespace) -> int:
    from modcoord.actors.errors import ModcoordError

    if args.csv and args.json:
        raise UsageError("choose one of --json and --csv")
    try:
        with client(args) as c:
            result = c.history(metrics=args.metric, since_s=float(args.since)
                               ).get(timeout=30)
    except ModcoordError as exc:
        raise user_error(exc) from None
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["metric", *result["columns"]])
        for metric, points in result["series"].items():
            for point in points:
                writer.writerow([metric, *point])
        return 0
    header = (f"history: last {args.since} s at {result['resolution_s']} s resolution "
              f"(store {result['state']})")
    emit(args, result, [header, *spark_lines(result)])
    return 0
