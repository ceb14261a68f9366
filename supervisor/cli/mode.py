"""Print the system mode, or switch it (MANUAL, HYBRID, FULLY_AUTO)."""

from __future__ import annotations

import argparse

from modcoord.supervisor.cli._common import client, emit, mode_name

HELP = "print or switch the system mode"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from modcoord.actors.modes import MODES

    p.add_argument("mode", nargs="?", type=mode_name, choices=MODES,
                   help="MANUAL, HYBRID or FULLY_AUTO (any case)")


def run(args: argparse.Namespace) -> int:
    with client(args) as c:
        if not args.mode:
            mode = c.status().get(timeout=10)["mode"]
            emit(args, {"mode": mode}, mode)
            return 0
        result = c.set_mode(args.mode).get(timeout=30)
    lines = [f"mode {result['previous']} -> {result['mode']} (strategy {result['strategy']}); "
             f"{len(result['results'])} modules notified, {len(result['errors'])} errors"]
    lines += [f"  {module_id}: {error}" for module_id, error in sorted(result["errors"].items())]
    emit(args, result, lines)
    return 0
