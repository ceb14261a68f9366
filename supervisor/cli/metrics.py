"""Print the daemon's metrics in the Prometheus text format (what `promtool check metrics`
accepts; the daemon renders them with prometheus_client, the CLI only prints them)."""

from __future__ import annotations

import argparse
import sys

from modcoord.supervisor.cli._common import client

HELP = "the metrics in the Prometheus text format"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    with client(args) as c:
        sys.stdout.write(c.metrics().get(timeout=10))
    return 0
