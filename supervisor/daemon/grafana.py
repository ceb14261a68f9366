"""The Grafana dashboard over the daemon's Prometheus metrics: built here from
:data:`PANELS`, shipped as ``data/grafana/modcoord.json`` (what ``modcoord grafana``
prints; ``python -m modcoord.supervisor.daemon.grafana`` writes it again, and a test
keeps the file equal to what this module builds).

The dashboard has a ``datasource`` variable (any Prometheus data source) and an
``instance`` variable (``label_values(modcoord_build_info, instance)``, all by default),
and every query selects ``instance=~"$instance"``. Rates use ``$__rate_interval``;
latency percentiles are ``histogram_quantile`` over the exported ``le`` buckets. Every
metric a query names is one of :data:`~modcoord.supervisor.daemon.exposition.METRICS`
(or ``up``, which Prometheus adds to every scrape target).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = ["DASHBOARD_FILE", "PANELS", "SCHEMA_VERSION", "UID", "Panel", "Row", "dashboard", "main",
           "render"]

DASHBOARD_FILE: Final = Path(__file__).resolve().parent / "data" / "grafana" / "modcoord.json"
SCHEMA_VERSION: Final = 39
"""The dashboard JSON schema of Grafana 11."""
UID: Final = "modcoord-daemon"
GRID_WIDTH: Final = 24
SEL: Final = '{instance=~"$instance"}'
"""The selector every query carries (the ``instance`` variable)."""
RATE: Final = "[$__rate_interval]"
DATASOURCE: Final = {"type": "prometheus", "uid": "${datasource}"}


def _rate(metric: str, by: str = "instance") -> str:
    return f"sum by ({by}) (rate({metric}{SEL}{RATE}))"


def _quantile(q: float, histogram: str) -> str:
    return (f"histogram_quantile({q}, sum by (instance, le) "
            f"(rate({histogram}_bucket{SEL}{RATE})))")


@dataclass(frozen=True)
class Panel:
    """One panel: ``targets`` are ``(expr, legend)`` pairs; ``kind`` ``stat`` or
    ``timeseries``; ``unit`` a Grafana unit id; ``width``/``height`` in grid cells."""

    title: str
    description: str
    targets: tuple[tuple[str, str], ...]
    kind: str = "timeseries"
    unit: str = "short"
    width: int = 12
    height: int = 8
    options: dict[str, Any] = field(default_factory=dict)
    mappings: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Row:
    """A row header; the panels after it belong to it."""

    title: str


_UP_MAPPING = {"type": "value", "options": {
    "0": {"text": "stopping", "color": "red", "index": 0},
    "1": {"text": "coordinating", "color": "green", "index": 1}}}
_SCRAPE_MAPPING = {"type": "value", "options": {
    "0": {"text": "down", "color": "red", "index": 0},
    "1": {"text": "up", "color": "green", "index": 1}}}
_NAME = {"textMode": "name"}

PANELS: Final[tuple[Panel | Row, ...]] = (
    Row("Health"),
    Panel("Scrape", "Whether Prometheus reaches the daemon's /metrics (up).",
          ((f"up{SEL}", "{{instance}}"),), kind="stat", width=4, height=4,
          mappings=(_SCRAPE_MAPPING,)),
    Panel("Coordinating", "1 while the daemon accepts and coordinates work.",
          ((f"modcoord_coordinating{SEL}", "{{instance}}"),), kind="stat", width=4, height=4,
          mappings=(_UP_MAPPING,)),
    Panel("Mode", "The current system mode.",
          ((f"modcoord_mode{SEL} == 1", "{{mode}}"),), kind="stat", width=4, height=4,
          options=_NAME),
    Panel("Active modules", "Registered modules.",
          ((f"modcoord_modules{SEL}", "{{instance}}"),), kind="stat", width=4, height=4),
    Panel("Uptime", "Seconds since the daemon started.",
          ((f"modcoord_uptime_seconds{SEL}", "{{instance}}"),), kind="stat", unit="s",
          width=4, height=4),
    Panel("Actors down", "Actors not alive now (the supervisor restarts them).",
          ((f"count(modcoord_actor_up{SEL} == 0) or vector(0)", "down"),), kind="stat",
          width=4, height=4),
    Row("Latency"),
    Panel("Coordination latency p50 / p99",
          "Coordinate request to result in the daemon, from the histogram's buckets.",
          ((_quantile(0.5, "modcoord_coordination_seconds"), "p50 {{instance}}"),
           (_quantile(0.99, "modcoord_coordination_seconds"), "p99 {{instance}}")),
          unit="s"),
    Panel("Publish-to-delivery p99",
          "Publish accepted to batch handed to the subscriber's connection.",
          ((_quantile(0.99, "modcoord_publish_to_delivery_seconds"), "p99 {{instance}}"),
           (_quantile(0.5, "modcoord_publish_to_delivery_seconds"), "p50 {{instance}}")),
          unit="s"),
    Row("Throughput"),
    Panel("Updates in / delivered per second",
          "Updates received by the debouncer, and sent out in batches.",
          ((_rate("modcoord_debouncer_received_total"), "in {{instance}}"),
           (_rate("modcoord_batcher_updates_total"), "delivered {{instance}}")),
          unit="ops"),
    Panel("Collapse ratio", "Share of the updates replaced by a later one for the same key.",
          ((f"{_rate('modcoord_debouncer_collapsed_total')} / "
            f"{_rate('modcoord_debouncer_received_total')}", "{{instance}}"),),
          unit="percentunit"),
    Row("Cache"),
    Panel("Cache hit rate", "Coordinate requests answered from the cache: over the "
          "dashboard's rate interval, and since start.",
          ((f"{_rate('modcoord_cache_hits_total')} / ({_rate('modcoord_cache_hits_total')} "
            f"+ {_rate('modcoord_cache_misses_total')})", "recent {{instance}}"),
           (f"modcoord_cache_hit_ratio{SEL}", "since start {{instance}}")),
          unit="percentunit"),
    Panel("Cache size", "Entries in the coordination cache, and its capacity.",
          ((f"modcoord_cache_entries{SEL}", "entries {{instance}}"),
           (f"modcoord_cache_max_entries{SEL}", "capacity {{instance}}"))),
    Row("Batching"),
    Panel("Batch efficiency", "Updates sent out per second of batching work, and the mean "
          "batch size over the rate interval.",
          ((f"{_rate('modcoord_batcher_updates_total')} / "
            f"{_rate('modcoord_batcher_busy_seconds_total')}", "updates/s of work {{instance}}"),
           (f"{_rate('modcoord_batcher_updates_total')} / "
            f"{_rate('modcoord_batcher_batches_total')}", "updates per batch {{instance}}"))),
    Panel("Batch queue depth", "Updates waiting in the batch queue, its capacity, and "
          "publishes refused because it was full.",
          ((f"modcoord_batch_queue_pending{SEL}", "pending {{instance}}"),
           (f"modcoord_batch_queue_capacity{SEL}", "capacity {{instance}}"),
           (_rate("modcoord_batch_queue_rejected_total"), "refused/s {{instance}}"))),
    Row("Resources"),
    Panel("Memory (RSS)", "Resident memory, and the limit above which the memory manager "
          "cleans up (memory.max_rss_mb).",
          ((f"modcoord_memory_usage_bytes{SEL}", "RSS {{instance}}"),
           (f"modcoord_memory_limit_bytes{SEL}", "limit {{instance}}")),
          unit="bytes"),
    Panel("Resource pressure", "adaptive.resources: memory escalation steps (0-2), delays "
          "widened for CPU pressure (0/1), and the daemon's CPU share.",
          ((f"modcoord_resources_memory_level{SEL}", "memory level {{instance}}"),
           (f"modcoord_resources_delays_widened{SEL}", "delays widened {{instance}}"),
           (f"modcoord_resources_cpu_ratio{SEL}", "CPU share {{instance}}"))),
    Row("Actors"),
    Panel("Restarts per actor", "Restarts by the supervisor over the rate interval.",
          ((f"sum by (actor) (increase(modcoord_actor_restarts_total{SEL}{RATE}))",
            "{{actor}}"),),
          width=24),
    Row("Adaptive parameters"),
    Panel("Adaptive delays", "Debounce delay and batch window in force, and as configured.",
          ((f"modcoord_adaptive_effective_seconds{SEL}", "{{parameter}} effective"),
           (f"modcoord_adaptive_configured_seconds{SEL}", "{{parameter}} configured")),
          unit="s", width=10),
    Panel("Adaptive sizes and factors", "Batch size, cache capacity and the delay "
          "widening factor in force, and as configured.",
          ((f"modcoord_adaptive_effective{SEL}", "{{parameter}} effective"),
           (f"modcoord_adaptive_configured{SEL}", "{{parameter}} configured")),
          width=10),
    Panel("Memory strategy", "The memory strategy in force.",
          ((f"modcoord_adaptive_memory_strategy{SEL} == 1", "{{strategy}}"),), kind="stat",
          width=4, options=_NAME),
)


def _panel(panel: Panel, ident: int, x: int, y: int) -> dict[str, Any]:
    targets = [{"datasource": DATASOURCE, "expr": expr, "legendFormat": legend,
                "refId": chr(ord("A") + i), "range": True, "instant": False}
               for i, (expr, legend) in enumerate(panel.targets)]
    defaults: dict[str, Any] = {"unit": panel.unit, "mappings": list(panel.mappings)}
    options: dict[str, Any]
    if panel.kind == "stat":
        defaults["color"] = {"mode": "thresholds"}
        defaults["thresholds"] = {"mode": "absolute",
                                  "steps": [{"color": "green", "value": None}]}
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "colorMode": "value", "graphMode": "none", "justifyMode": "auto",
                   "orientation": "auto", "textMode": "auto", **panel.options}
    else:
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                              "showPoints": "never", "spanNulls": False}
        options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                   "tooltip": {"mode": "multi", "sort": "none"}, **panel.options}
    return {"id": ident, "type": panel.kind, "title": panel.title,
            "description": panel.description, "datasource": DATASOURCE,
            "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": options, "targets": targets}


def _layout(panels: tuple[Panel | Row, ...]) -> list[dict[str, Any]]:
    """Panels left to right, wrapping at the grid's width; a row starts a new line."""
    out: list[dict[str, Any]] = []
    x = y = line_height = 0
    for ident, item in enumerate(panels, start=1):
        if isinstance(item, Row):
            y += line_height
            out.append({"id": ident, "type": "row", "title": item.title, "collapsed": False,
                        "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y}, "panels": []})
            y, x, line_height = y + 1, 0, 0
            continue
        if x + item.width > GRID_WIDTH:
            y, x, line_height = y + line_height, 0, 0
        out.append(_panel(item, ident, x, y))
        x += item.width
        line_height = max(line_height, item.height)
    return out


def dashboard() -> dict[str, Any]:
    """The dashboard document (Grafana's JSON model)."""
    return {
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "description": "The modcoord daemon's Prometheus metrics (/metrics): health, "
                       "latency, throughput, cache, batching, memory, actors and the "
                       "adaptive parameters.",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "links": [],
        "panels": _layout(PANELS),
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["modcoord"],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "current": {}, "hide": 0, "includeAll": False,
             "multi": False, "options": [], "refresh": 1, "regex": ""},
            {"name": "instance", "label": "Instance", "type": "query",
             "datasource": DATASOURCE,
             "definition": "label_values(modcoord_build_info, instance)",
             "query": {"query": "label_values(modcoord_build_info, instance)",
                       "refId": "PrometheusVariableQueryEditor-VariableQuery", "qryType": 1},
             "current": {}, "hide": 0, "includeAll": True, "allValue": ".*", "multi": True,
             "options": [], "refresh": 2, "regex": "", "sort": 1},
        ]},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {"refresh_intervals": ["10s", "30s", "1m", "5m", "15m", "30m", "1h"]},
        "timezone": "browser",
        "title": "modcoord",
        "uid": UID,
        "version": 1,
        "weekStart": "",
    }


def render() -> str:
    """The dashboard as the shipped file holds it (sorted keys, two-space indent)."""
    return json.dumps(dashboard(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> int:
    """Write :data:`DASHBOARD_FILE` (run after changing :data:`PANELS`)."""
    DASHBOARD_FILE.parent.mkdir(parents=True, exist_ok=True)
    DASHBOARD_FILE.write_text(render(), encoding="utf-8")
    print(f"wrote {DASHBOARD_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
