"""The shipped Grafana dashboard: up to date with its builder, a valid dashboard
(unique ids, a grid without overlaps, the ``datasource`` variable), every query valid
PromQL by ``promtool`` and reading only metrics the daemon exports (a real daemon's
scrape: ``integration/test_grafana_daemon.py``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from grafana_check import DASHBOARD, PROMETHEUS_ADDED, concrete, exprs, load, metric_names
from tools import tool_or_skip

from modcoord.supervisor.daemon.exposition import METRICS
from modcoord.supervisor.daemon.grafana import SCHEMA_VERSION, render


def test_the_shipped_file_is_what_the_builder_makes() -> None:
    assert DASHBOARD.read_text(encoding="utf-8") == render(), (
        "run: python -m modcoord.supervisor.daemon.grafana")


def test_the_dashboard_model_is_sane() -> None:
    doc = load()
    assert doc["schemaVersion"] == SCHEMA_VERSION >= 39
    assert doc["uid"] == "modcoord-daemon" and doc["title"] and doc["refresh"] == "30s"
    assert doc["time"]["from"].startswith("now-") and doc["timepicker"]["refresh_intervals"]
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["datasource"]["uid"] == "${datasource}"
    panels = doc["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    cells: dict[tuple[int, int], int] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = p["id"]
        if p["type"] == "row":
            continue
        assert p["type"] in ("stat", "timeseries") and p["title"] and p["targets"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            assert '{instance=~"$instance"' in t["expr"], t["expr"]
    titles = {p["title"] for p in panels}
    for wanted in ("Coordinating", "Mode", "Active modules", "Coordination latency p50 / p99",
                   "Publish-to-delivery p99", "Updates in / delivered per second",
                   "Collapse ratio", "Cache hit rate", "Cache size", "Batch efficiency",
                   "Batch queue depth", "Memory (RSS)", "Restarts per actor",
                   "Adaptive delays", "Resource pressure"):
        assert wanted in titles, wanted


def test_every_query_reads_exported_metrics() -> None:
    exported = set(PROMETHEUS_ADDED)
    for name, spec in METRICS.items():
        if spec.kind == "histogram":
            exported |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        else:
            exported.add(name)
    for ref, expr in exprs(load()):
        names = metric_names(expr)
        assert names, f"{ref}: no metric in {expr}"
        assert names <= exported, f"{ref}: {sorted(names - exported)} not exported ({expr})"
        for name in names:
            found = METRICS.get(name)
            if name.endswith("_bucket") or (found is not None and found.kind == "counter"):
                assert f"rate({name}" in expr or f"increase({name}" in expr, (
                    f"{ref}: the counter {name} is read without rate() ({expr})")


def _check_rules(promtool: str, tmp_path: Path, rules: list[dict[str, str]]
                 ) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "grafana", "rules": rules}]}))
    return subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.timeout(90)
def test_every_query_is_valid_promql_by_promtool(tmp_path: Path) -> None:
    promtool = tool_or_skip("promtool")
    queries = exprs(load())
    rules = [{"record": f"modcoord:grafana_panel_{ref}", "expr": concrete(expr)}
             for ref, expr in queries]
    done = _check_rules(promtool, tmp_path, rules)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout, done.stdout
    # The check is real: one broken query among them fails it.
    broken = [*rules, {"record": "modcoord:broken", "expr": "sum by (instance (rate(x[1m]))"}]
    assert _check_rules(promtool, tmp_path, broken).returncode != 0
