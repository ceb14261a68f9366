"""Flush pending debounces and batches (nothing is dropped), clear the cache, and run a
memory cleanup."""

from __future__ import annotations

import argparse

from modcoord.supervisor.cli._common import client, emit

HELP = "flush pending work, clear the cache, clean up memory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass  # --json: added by the parser builder


def run(args: argparse.Namespace) -> int:
    with client(args) as c:
        report = c.optimize().get(timeout=30)
    emit(args, report, f"flushed {report['debounces_flushed']} debounced updates, delivered "
                       f"{report['updates_delivered']} queued updates, cleared "
                       f"{report['cache_cleared']} cache entries")
    return 0
