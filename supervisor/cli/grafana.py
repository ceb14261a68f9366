"""Print the Grafana dashboard over the daemon's Prometheus metrics (JSON; needs no
running daemon). Import it in Grafana (Dashboards → New → Import, or a provisioning
directory) and pick the Prometheus data source that scrapes the daemon's ``/metrics``
(``metrics.enabled: true`` in daemon.yaml): ``modcoord grafana > modcoord-dashboard.json``.
"""

from __future__ import annotations

import argparse
import sys

HELP = "print the Grafana dashboard (JSON) over the Prometheus metrics"

#: Where the dashboard is shipped, in the package ``modcoord.supervisor.daemon``.
RESOURCE = ("data", "grafana", "modcoord.json")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default=None, metavar="FILE",
                   help="write the dashboard to FILE rather than stdout")


def dashboard_text() -> str:
    """The shipped dashboard JSON.

    Raises:
        OSError: the package data is missing (a broken install: reinstall modcoord).
    """
    from importlib import resources

    node = resources.files("modcoord.supervisor.daemon")
    for part in RESOURCE:
        node = node / part
    return node.read_text(encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    from modcoord.supervisor.cli._common import CliError

    text = dashboard_text()
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:
        raise CliError(f"cannot write {args.output}: {exc.strerror}; choose another file"
                       ) from None
    print(f"wrote the Grafana dashboard to {args.output}", file=sys.stderr)
    return 0
