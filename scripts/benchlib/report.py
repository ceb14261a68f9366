"""The command: parse the flags, run the bench, print a table or the JSON rows."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator

from .common import BenchError, Plan, Result
from .figures import Bench

# -- output --------------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def print_table(results: list[Result], elapsed: float) -> None:
    """Print the rows as a table (rich when available), then their notes."""
    headers = ["figure", "value", "unit", "baseline", "ratio", "target", "met"]
    cells = [[r.name, _fmt(r.value), r.unit, _fmt(r.baseline), _fmt(r.ratio), r.target,
              "yes" if r.met else "NO"] for r in results]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(line[i]) for line in cells))
                  for i, h in enumerate(headers)]
        print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
        for line in cells:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
    else:
        table = Table(title=f"modcoord bench ({elapsed:.1f} s)")
        for i, h in enumerate(headers):
            table.add_column(h, justify="left" if i in (0, 2, 5) else "right")
        for line in cells:
            table.add_row(*line)
        Console(width=max(120, shutil.get_terminal_size().columns)).print(table)
    print()
    for i, r in enumerate(results, 1):
        if r.notes:
            print(f"{i:>2}. {r.name}: {r.notes}")


@contextlib.contextmanager
def _progress_printer(enabled: bool) -> Iterator[Callable[[str], None]]:
    started = time.monotonic()
    if not enabled:
        yield lambda text: None
        return
    width = [0]

    def show(text: str) -> None:
        line = f"[bench {time.monotonic() - started:5.1f} s] {text}"
        sys.stderr.write("\r" + line.ljust(width[0]))
        sys.stderr.flush()
        width[0] = len(line)

    try:
        yield show
    finally:
        sys.stderr.write("\r" + " " * width[0] + "\r")
        sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Run the bench; returns the exit status described in ``scripts/bench``."""
    parser = argparse.ArgumentParser(description="Measure modcoord against same-run "
                                                 "baselines.")
    parser.add_argument("--quick", action="store_true",
                        help="fewer iterations (under a minute)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--only", default="",
                        help="comma-separated figure numbers to measure (default: all)")
    parser.add_argument("--engine", choices=("local", "nats"), default="local",
                        help="nats: the NATS engine's figures N1-N6 on a real 3-node "
                             "cluster (needs nats-server) instead of the local ones")
    args = parser.parse_args(argv)
    try:
        import modcoord.supervisor.client  # noqa: F401
    except ImportError as exc:
        print(f"bench: cannot import modcoord ({exc}); run with the Python that has it "
              "installed (pip install -e .)", file=sys.stderr)
        return 1
    # SIGTERM unwinds like Ctrl-C, so the daemons are stopped and the directory removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    plan = Plan.of(args.quick)
    started = time.monotonic()
    show = sys.stderr.isatty() and not args.json
    with _progress_printer(show) as progress:
        try:
            if args.engine == "nats":
                from .nats_figures import NatsBench

                with NatsBench(plan, progress, args.quick) as nats_bench:
                    nats_bench.only = {x.strip().lstrip("N") for x in args.only.split(",")
                                       if x.strip()}
                    results = nats_bench.run()
                    failed = nats_bench.failed
            else:
                with Bench(plan, progress) as bench:
                    bench.only = {x.strip() for x in args.only.split(",") if x.strip()}
                    results = bench.run()
                    failed = bench.failed
        except (BenchError, OSError) as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench: interrupted", file=sys.stderr)
            return 130
    if args.json:
        json.dump({"results": [r.as_json() for r in results]}, sys.stdout, indent=2,
                  ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print_table(results, time.monotonic() - started)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
