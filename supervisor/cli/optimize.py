"""Flush pending debounces and batches (nothing is dropped), clear the cache, and run a
memory cleanup."""

from __future__ import annotations

import argparse

from modcoord.supervisor.cli._common import client, print_json

HELP = "flush pending work, clear the cache, clean up memory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    with client(args) as c:
        report = c.optimize().get(timeout=30)
    if args.json:
        print_json(report)
    else:
        print(f"flushed {report['debounces_flushed']} debounced updates, delivered "
              f"{report['updates_delivered']} queued updates, cleared "
              f"{report['cache_cleared']} cache entries")
    return 0
