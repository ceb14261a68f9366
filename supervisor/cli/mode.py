"""Print the system mode, or switch it (MANUAL, HYBRID, FULLY_AUTO)."""

from __future__ import annotations

import argparse

from modcoord.supervisor.cli._common import client

HELP = "print or switch the system mode"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("mode", nargs="?", help="MANUAL, HYBRID or FULLY_AUTO")


def run(args: argparse.Namespace) -> int:
    with client(args) as c:
        if not args.mode:
            print(c.status().get(timeout=10)["mode"])
            return 0
        result = c.set_mode(args.mode).get(timeout=30)
    print(f"mode {result['previous']} -> {result['mode']} (strategy {result['strategy']}); "
          f"{len(result['results'])} modules notified, {len(result['errors'])} errors")
    for module_id, error in sorted(result["errors"].items()):
        print(f"  {module_id}: {error}")
    return 0
