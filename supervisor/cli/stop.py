"""Stop the daemon gracefully: pending updates are flushed to subscribers, then it exits."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from modcoord.actors.errors import ConnectionLostError, NotRunningError
from modcoord.supervisor.cli._common import (
    CliError,
    UsageError,
    client,
    emit,
    quiet_client_log,
    runtime_dir,
)

HELP = "stop the daemon gracefully"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for the daemon to exit (default 30)")


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs. A zombie (exited, not yet reaped by its parent — for
    a detached daemon that is init, which may be slow or, in a container, never reap)
    has exited: it counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def run(args: argparse.Namespace) -> int:
    from modcoord.supervisor.daemon.process import is_locked, read_pid
    from modcoord.supervisor.protocol.paths import pidfile_path

    if not args.timeout > 0:
        raise UsageError(f"--timeout must be more than 0 seconds (got {args.timeout:g})")
    pidfile = pidfile_path(runtime_dir(args))
    if not is_locked(pidfile):
        raise NotRunningError(f"modcoord is not running on {runtime_dir(args)} (no daemon "
                              f"holds {pidfile}); nothing to stop")
    pid = read_pid(pidfile)
    quiet_client_log()  # the daemon hangs up once it has answered: expected here
    try:
        with client(args) as c:
            c.stop().get(timeout=args.timeout)
    except ConnectionLostError:
        pass
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not is_locked(pidfile) and (pid is None or not alive(pid)):
            emit(args, {"stopped": True, "pid": pid}, f"modcoord stopped (pid {pid})")
            return 0
        time.sleep(0.05)
    raise CliError(f"pid {pid} did not exit within {args.timeout:g} s (--timeout); it may "
                   f"still be flushing: wait, or 'kill -TERM {pid}' again", pid=pid,
                   stopped=False)
