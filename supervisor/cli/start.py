"""Start the daemon. Detaches and returns once it is ready, printing its pid and socket;
with --foreground it stays attached (for systemd: READY=1 goes to $NOTIFY_SOCKET)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modcoord.supervisor.cli._common import runtime_dir

HELP = "start the daemon"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config-dir", type=Path, default=None,
                   help="config directory (default: the packaged configs/)")
    p.add_argument("--mode", default=None, help="initial mode: MANUAL, HYBRID or FULLY_AUTO")
    p.add_argument("--log-dir", type=Path, default=None,
                   help="log directory (default: the runtime directory)")
    p.add_argument("--foreground", action="store_true", help="stay attached")
    p.add_argument("--allow-fault-injection", action="store_true",
                   help="honour 'modcoord debug crash' (for testing)")


def run(args: argparse.Namespace) -> int:
    from modcoord.actors.errors import ConfigError
    from modcoord.supervisor.daemon.config import normalize_mode
    from modcoord.supervisor.daemon.process import DaemonOptions, spawn
    from modcoord.supervisor.daemon.process import run as run_daemon

    if args.mode is not None:
        try:
            normalize_mode(args.mode)
        except ConfigError as exc:
            print(f"modcoord start: {exc.problem}", file=sys.stderr)
            return 2
    options = DaemonOptions(
        runtime_dir=runtime_dir(args), config_dir=args.config_dir, mode=args.mode,
        log_dir=args.log_dir, allow_fault_injection=args.allow_fault_injection,
    )
    if args.foreground:
        return run_daemon(options)
    code, text = spawn(options)
    if code == 0:
        pid, sock = text.split(" ", 1)
        print(f"modcoord started: pid {pid}, socket {sock}")
    else:
        print(f"modcoord: {text}", file=sys.stderr)
    return code
