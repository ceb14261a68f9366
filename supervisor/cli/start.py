"""Start the daemon. Detaches and returns once it is ready, printing its pid and socket;
with --foreground it stays attached (for systemd: READY=1 goes to $NOTIFY_SOCKET)."""

from __future__ import annotations

import argparse
from pathlib import Path

from modcoord.supervisor.cli._common import CliError, UsageError, emit, mode_name, runtime_dir

HELP = "start the daemon"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config-dir", type=Path, default=None,
                   help="config directory (default: the packaged configs/)")
    from modcoord.actors.modes import MODES

    p.add_argument("--mode", default=None, type=mode_name, choices=MODES,
                   help="initial mode: MANUAL, HYBRID or FULLY_AUTO (any case)")
    p.add_argument("--log-dir", type=Path, default=None,
                   help="log directory (default: the runtime directory)")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="state directory for the history database (default: "
                        "$MODCOORD_STATE_DIR, $XDG_STATE_HOME/modcoord or "
                        "~/.local/state/modcoord)")
    p.add_argument("--foreground", action="store_true", help="stay attached")
    p.add_argument("--allow-fault-injection", action="store_true",
                   help="honour 'modcoord debug crash' (for testing)")


def run(args: argparse.Namespace) -> int:
    from modcoord.supervisor.daemon.process import DaemonOptions, spawn
    from modcoord.supervisor.daemon.process import run as run_daemon

    if args.foreground and args.json:
        raise UsageError("--json goes with a detached start; with --foreground the daemon "
                         "stays attached and prints nothing on stdout")
    options = DaemonOptions(
        runtime_dir=runtime_dir(args), config_dir=args.config_dir, mode=args.mode,
        log_dir=args.log_dir, allow_fault_injection=args.allow_fault_injection,
        state_dir=args.state_dir,
    )
    if args.foreground:
        return run_daemon(options)
    code, text = spawn(options)
    if code != 0:
        raise CliError(text, code)
    pid, sock = text.split(" ", 1)
    emit(args, {"pid": int(pid), "socket": sock, "runtime_dir": str(options.runtime_dir)},
         f"modcoord started: pid {pid}, socket {sock}")
    return 0
