"""Check a config directory without applying it (validate), or print the effective
config of the running daemon (show)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from modcoord.actors.errors import ConfigError
from modcoord.supervisor.cli._common import client, print_json

HELP = "validate or show configuration"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    v = sub.add_parser("validate", help="check a config directory without applying it")
    v.add_argument("directory", nargs="?", type=Path, default=None,
                   help="config directory (default: the packaged configs/)")
    sub.add_parser("show", help="print the running daemon's effective config")


def run(args: argparse.Namespace) -> int:
    from modcoord.supervisor.daemon.config import load_config_dir

    if args.action == "validate":
        try:
            config = load_config_dir(args.directory)
        except ConfigError as exc:
            print(f"invalid: {exc}", file=sys.stderr)
            return 1
        print(f"valid: {config.directory} (modes {', '.join(config.modes)})")
        return 0
    with client(args) as c:
        print_json(c.config().get(timeout=10))
    return 0


__all__ = ["add_arguments", "json", "run"]
