"""Insights and recommendations from the monitor's rules."""

from __future__ import annotations

import argparse
from typing import Any

from modcoord.supervisor.cli._common import client, emit
from modcoord.supervisor.cli.status import engine_line

HELP = "insights and recommendations"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass  # --json (prints {"insights": [...], "recommendations": [...]}): the parser builder


def run(args: argparse.Namespace) -> int:
    with client(args) as c:
        result = c.insights().get(timeout=10)
    line = engine_line(result.get("engine") or {})
    emit(args, result, ([line] if line is not None else []) + insight_lines(result["insights"]))
    return 0


def insight_lines(insights: list[dict[str, Any]]) -> list[str]:
    """The human lines of ``insights`` (also drawn by ``top``)."""
    lines = []
    for insight in insights:
        lines.append(f"[{insight['severity']}] {insight['id']}: {insight['message']}")
        if insight.get("threshold") is not None:
            lines.append(f"    observed {insight['observed']} vs threshold "
                         f"{insight['threshold']} over {insight['window_s']} s")
        if insight.get("recommendation"):
            lines.append(f"    → {insight['recommendation']}")
    return lines
