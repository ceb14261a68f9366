"""Read and follow the structured log (<log-dir>/modcoord.jsonl): coloured lines on a
terminal (never with NO_COLOR), raw JSON with --json; -f follows across rotation until
Ctrl-C, or until whoever reads its output goes away (``modcoord logs -f | head -2``).
With no log at all it says so and exits 1."""

from __future__ import annotations

import argparse
import json
import os
import select
import stat
import sys
import threading
from pathlib import Path

from modcoord.supervisor.cli._common import CliError, ExitCode, UsageError, runtime_dir

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
    p.add_argument("--lnav-format-path", action="store_true",
                   help="print the path of the packaged lnav format file (lnav -i PATH)")


def log_dir_of(args: argparse.Namespace) -> Path:
    if args.log_dir is not None:
        return Path(args.log_dir)
    runtime = runtime_dir(args)
    try:
        state = json.loads((runtime / "daemon.json").read_text())
        return Path(state["log_dir"])
    except (OSError, ValueError, KeyError):
        return runtime


def _watch_reader(stop: threading.Event, gone: threading.Event) -> None:
    """When stdout is a pipe or socket, set ``gone`` and ``stop`` once its reader closes
    it, so that ``-f`` ends even while no record comes (it would otherwise notice only at
    its next write). Runs in a daemon thread; on a terminal or file it does nothing."""
    try:
        fd = sys.stdout.fileno()
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError, AttributeError):
        return
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return
    poller = select.poll()
    poller.register(fd, 0)  # POLLERR/POLLHUP are always reported
    while not stop.is_set():
        for _, events in poller.poll(250):
            if events & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                gone.set()
                stop.set()
                return


def run(args: argparse.Namespace) -> int:
    from modcoord.supervisor.daemon.log_format import (
        LOG_FILE,
        color_wanted,
        format_record,
        level_number,
        lnav_format_path,
    )
    from modcoord.supervisor.daemon.log_reader import follow_records, iter_records, log_files
    if args.lnav_format_path:
        print(lnav_format_path())
        return 0
    directory = log_dir_of(args)
    if args.level:
        args.level = args.level.upper()
        try:
            level_number(args.level)
        except ValueError as exc:  # a usage error, not a crash
            raise UsageError(f"logs: {exc}") from None
    if args.n is not None and args.n < 0:
        raise UsageError("logs: -n must not be negative")
    if not log_files(directory):
        raise CliError(f"logs: no log in {directory} (no {LOG_FILE} there): no daemon has "
                       "logged with this runtime directory; give the one it uses "
                       "(--runtime-dir, MODCOORD_RUNTIME_DIR) or its --log-dir")
    color = color_wanted(sys.stdout) and not args.json
    filters = {"level": args.level, "actor": args.actor, "module": args.module}

    def emit(rec: dict[str, object]) -> None:
        line = json.dumps(rec, default=str) if args.json else format_record(rec, color=color)
        sys.stdout.write(line + "\n")

    if not args.follow:
        for rec in iter_records(directory, n=args.n, **filters):
            emit(rec)
        return 0
    stop = threading.Event()
    gone = threading.Event()
    threading.Thread(target=_watch_reader, args=(stop, gone), daemon=True,
                     name="modcoord-logs-reader").start()
    try:
        backlog = args.n if args.n is not None else 10
        for rec in follow_records(directory, n=backlog, stop=stop, **filters):
            emit(rec)
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
    if gone.is_set():
        # Nothing more can be written: no flush error at exit either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.FAILURE
    return ExitCode.OK
