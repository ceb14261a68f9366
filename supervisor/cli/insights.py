"""Insights and recommendations from the monitor's rules."""

from __future__ import annotations

import argparse

from modcoord.supervisor.cli._common import client, print_json

HELP = "insights and recommendations"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help='print {"insights": [...], "recommendations": [...]}')


def run(args: argparse.Namespace) -> int:
    with client(args) as c:
        result = c.insights().get(timeout=10)
    if args.json:
        print_json(result)
        return 0
    for insight in result["insights"]:
        print(f"[{insight['severity']}] {insight['id']}: {insight['message']}")
        if insight.get("threshold") is not None:
            print(f"    observed {insight['observed']} vs threshold {insight['threshold']} "
                  f"over {insight['window_s']} s")
        if insight.get("recommendation"):
            print(f"    → {insight['recommendation']}")
    return 0
