"""Read and follow the structured log (<log-dir>/modcoord.jsonl): coloured lines on a
terminal, raw JSON with --json; -f follows across rotation until Ctrl-C."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

from modcoord.supervisor.cli._common import runtime_dir

HELP = "read and follow the structured log"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    p.add_argument("-n", type=int, default=None, metavar="N", help="only the last N records")
    p.add_argument("--level", default=None, help="this level or more severe (e.g. WARNING)")
    p.add_argument("--actor", default=None, help="only records of this actor")
    p.add_argument("--module", default=None, help="only records about this module")
    p.add_argument("--json", action="store_true", help="raw JSON lines")
    p.add_argument("--log-dir", type=Path, default=None,
                   help="log directory (default: the running daemon's, else the runtime dir)")


def log_dir_of(args: argparse.Namespace) -> Path:
    if args.log_dir is not None:
        return Path(args.log_dir)
    runtime = runtime_dir(args)
    try:
        state = json.loads((runtime / "daemon.json").read_text())
        return Path(state["log_dir"])
    except (OSError, ValueError, KeyError):
        return runtime


def run(args: argparse.Namespace) -> int:
    from modcoord.supervisor.daemon.logs import (
        follow_records,
        format_record,
        iter_records,
        level_number,
    )

    directory = log_dir_of(args)
    if args.level:
        args.level = args.level.upper()
        try:
            level_number(args.level)
        except ValueError as exc:  # a usage error, not a crash
            print(f"modcoord logs: {exc}", file=sys.stderr)
            return 2
    if args.n is not None and args.n < 0:
        print("modcoord logs: -n must not be negative", file=sys.stderr)
        return 2
    color = sys.stdout.isatty() and not args.json
    filters = {"level": args.level, "actor": args.actor, "module": args.module}

    def emit(rec: dict[str, object]) -> None:
        line = json.dumps(rec, default=str) if args.json else format_record(rec, color=color)
        sys.stdout.write(line + "\n")

    if not args.follow:
        for rec in iter_records(directory, n=args.n, **filters):
            emit(rec)
        return 0
    stop = threading.Event()
    try:
        backlog = args.n if args.n is not None else 10
        for rec in follow_records(directory, n=backlog, stop=stop, **filters):
            emit(rec)
            sys.stdout.flush()
    except KeyboardInterrupt:
        stop.set()
    return 0
