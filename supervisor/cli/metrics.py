"""Print the daemon's metrics in the Prometheus text exposition format."""

from __future__ import annotations

import argparse
import sys

from modcoord.supervisor.cli._common import client

HELP = "Prometheus text exposition"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    with client(args) as c:
        sys.stdout.write(c.metrics().get(timeout=10))
    return 0
