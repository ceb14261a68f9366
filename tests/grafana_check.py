"""What the Grafana dashboard's tests share: every PromQL expression of the shipped
dashboard, made concrete (the Grafana variables replaced by values Prometheus accepts),
and the metric names each one reads."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

__all__ = ["DASHBOARD", "PROMETHEUS_ADDED", "concrete", "exprs", "load", "metric_names"]

DASHBOARD = (Path(__file__).resolve().parent.parent / "supervisor" / "daemon" / "data" /
             "grafana" / "modcoord.json")
#: Metrics Prometheus adds to every scrape target itself (not in the daemon's /metrics).
PROMETHEUS_ADDED = frozenset({"up"})
#: Grafana's variables and the values they take in a test (what Grafana substitutes).
SUBSTITUTIONS = {"$__rate_interval": "1m", "$instance": ".*"}
_FUNCTIONS = frozenset({"sum", "rate", "increase", "histogram_quantile", "count", "vector",
                        "by", "or", "and", "le", "instance", "actor"})


def load() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return doc


def exprs(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """``(panel id/refId, expr)`` of every query, variables as Grafana writes them."""
    return [(f"{panel['id']}{target['refId']}", target["expr"])
            for panel in doc["panels"] for target in panel.get("targets", ())]


def concrete(expr: str) -> str:
    for variable, value in SUBSTITUTIONS.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable left unsubstituted in {expr}"
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects (identifiers followed by a selector or a range,
    not the functions, keywords and label names)."""
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?=\{|\[)", expr))
    return names - _FUNCTIONS
