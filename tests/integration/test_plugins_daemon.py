"""Plugins through the real daemon: each entry-point kind loaded by name from the example
package (examples/modcoord-example-plugins, installed by scripts/test), a real module
process, and failing plugins contained (counted, logged, disabled; the daemon carries on).
Units with fakes: ``unit/test_plugins.py``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonFactory, records, wait_for

pytest.importorskip("modcoord_example_plugins",
                    reason="pip install ./examples/modcoord-example-plugins (scripts/test does)")

# A module process: publishes three updates of one priority into one batch window and
# records the order it receives them in; coordinates contexts A, B, C (a cache of two,
# evicting one at a time), then A again; offers get_performance_metrics(). Prints one JSON
# line, then stays registered until its stdin closes.
_MODULE = textwrap.dedent("""
    import json, sys, threading
    from modcoord.supervisor import connect

    got, done = [], threading.Event()

    class Probe:
        module_id = "probe"
        name = "probe"
        supported_modes = ["HYBRID", "MANUAL", "FULLY_AUTO"]
        subscribe = ["probe"]

        def on_mode_change(self, mode, strategy, context):
            return {"seen": context.get("ctx")}

        def on_batch(self, batch):
            got.extend(u.key for u in batch.updates)
            if len(got) >= 3:
                done.set()

        def get_performance_metrics(self):
            return {"frames": 42, "ratio": 0.25, "label": "not a number", "flag": True}

    with connect(runtime_dir=sys.argv[1], timeout=10, reconnect=False) as client:
        client.register(Probe()).get(10)
        for k in ("k1", "k2", "k3"):
            client.publish("probe", k, {"k": k}).get(10)
        done.wait(10)
        cached = [client.coordinate("HYBRID", {"ctx": c}).get(10).cached
                  for c in ("A", "B", "C", "A")]
        print(json.dumps({"order": got, "cached": cached}), flush=True)
        sys.stdin.read()
""")


def _status(daemon: Any) -> dict[str, Any]:
    result = daemon.cli("status", "--json")
    assert result.code == 0, result.err
    status: dict[str, Any] = json.loads(result.out)
    return status


def _module(daemon: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _MODULE, str(daemon.runtime_dir)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str]) -> str:
    try:
        _, err = proc.communicate("", timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


_FAST = {"debounce": {"delay_ms": 0, "critical_delay_ms": 0, "max_wait_ms": 50},
         "batch": {"window_ms": 150, "max_size": 50},
         "adaptive": {"enabled": False},
         "monitor": {"evaluate_interval_ms": 200, "module_metrics_interval_ms": 200,
                     "module_metrics_max": 1}}


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_each_plugin_kind_from_the_example_package_works_in_the_daemon(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    daemon = daemon_factory(configs={"hybrid": {
        **_FAST,
        "cache": {"max_entries": 2, "evict_fraction": 0.5},
        "plugins": {"insight_rules": ["example_memory_share"], "cache_policy": "example_mru",
                    "batch_processors": ["priority", "example_reverse"],
                    "exporters": [{"name": "example_jsonl", "interval_ms": 100,
                                   "options": {"path": str(out)}}]}}})
    proc = _module(daemon)
    try:
        assert proc.stdout is not None
        result = json.loads(proc.stdout.readline())
        # batch processors: priority (one priority, one module: publish order), then the
        # example's reverse: newest first.
        assert result["order"] == ["k3", "k2", "k1"], result
        # cache policy: the example evicts the most recently used (B when C came in), so A
        # is still cached; the built-in LRU would have evicted A.
        assert result["cached"] == [False, False, False, True], result
        # insight rule: the plugin's insight, of the same shape as the built-in ones.
        insights = json.loads(daemon.cli("insights", "--json").out)
        mine = [i for i in insights["insights"] if i["id"] == "example_memory_share"]
        assert len(mine) == 1, insights
        assert set(mine[0]) == {"id", "severity", "observed", "threshold", "window_s",
                                "message", "recommendation"}
        assert 0.01 < mine[0]["observed"] < 10 and mine[0]["severity"] == "info"
        # exporter: real samples of the running daemon, pushed repeatedly (an export may
        # have been sampled before the cache hit above was counted: wait for a later one)
        def exported_hit() -> dict[str, Any] | None:
            lines = out.read_text().splitlines() if out.exists() else []
            if len(lines) < 2:
                return None
            sample = {s["name"]: s for s in json.loads(lines[-1])["samples"]}
            hits = sample["modcoord_cache_hits_total"]["value"]
            return sample if hits >= 1.0 else None

        sample = wait_for(exported_hit, timeout=10,
                          message="two exports, the latest with the cache hit")
        assert sample["modcoord_modules"]["value"] == 1.0
        # get_performance_metrics: numbers only, capped at module_metrics_max (1, by name).
        status = wait_for(lambda: (s := _status(daemon))["module_metrics"]["modules"].get(
            "probe") and s, timeout=10, message="module metrics in status")
        assert status["module_metrics"]["modules"] == {"probe": {"frames": 42.0}}
        counts = status["module_metrics"]["statistics"]
        assert counts["dropped_non_numeric"] >= 2 and counts["dropped_over_cap"] >= 1, counts
        assert records(daemon, event="module_metrics", module="probe")  # the drops logged
        metrics = daemon.cli("metrics").out
        assert 'modcoord_module_metric{module="probe",name="frames"} 42.0' in metrics
        assert 'modcoord_module_metrics_dropped_total{reason="non_numeric"}' in metrics
        plugins = status["plugins"]
        assert plugins["cache_policy"] == "example_mru" and plugins["failures"] == 0, plugins
        assert plugins["guards"]["modcoord.batch_processors:example_reverse"]["calls"] >= 1
        # A mode whose file names no plugins runs the built-ins only.
        assert daemon.cli("mode", "FULLY_AUTO").code == 0
        plugins = _status(daemon)["plugins"]
        assert (plugins["cache_policy"], plugins["batch_processors"], plugins["insight_rules"],
                plugins["exporters"]) == ("lru", ["priority"], [], [])
    finally:
        err = _finish(proc)
    assert proc.returncode == 0, err


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_failing_plugins_are_contained_and_disabled_while_the_daemon_carries_on(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(configs={"hybrid": {
        **_FAST,
        "plugins": {"insight_rules": ["example_hanging_rule", "example_raising_rule"],
                    "batch_processors": ["priority", "example_hanging_processor",
                                         "example_reverse"],
                    "exporters": [{"name": "example_raising_exporter", "interval_ms": 50}],
                    "timeout_ms": 100, "max_failures": 2}}})
    proc = _module(daemon)
    try:
        assert proc.stdout is not None
        result = json.loads(proc.stdout.readline())
        # The hanging processor was skipped (after its 100 ms), the next one still ran.
        assert result["order"] == ["k3", "k2", "k1"], result
        assert result["cached"] == [False, False, False, True]  # the built-in LRU, roomy

        def disabled() -> dict[str, Any] | None:
            p = _status(daemon)["plugins"]
            want = {"modcoord.insight_rules:example_hanging_rule",
                    "modcoord.insight_rules:example_raising_rule",
                    "modcoord.exporters:example_raising_exporter"}
            return p if want <= set(p["disabled"]) else None

        plugins = wait_for(disabled, timeout=20, interval=0.2, message="plugins disabled")
        guards = plugins["guards"]
        hang = guards["modcoord.insight_rules:example_hanging_rule"]
        assert hang["failures"] == 2 and hang["timeouts"] == 2 and hang["disabled"], hang
        boom = guards["modcoord.insight_rules:example_raising_rule"]
        assert boom["failures"] == 2 and "example rule failure" in boom["last_error"], boom
        exporter = guards["modcoord.exporters:example_raising_exporter"]
        assert exporter["failures"] == 2 and "collector unreachable" in exporter["last_error"]
        processor = guards["modcoord.batch_processors:example_hanging_processor"]
        assert processor["failures"] == 1 and processor["timeouts"] == 1, processor
        # Logged: each failure, and the disabling once per plugin.
        assert len(records(daemon, event="plugin", plugin="example_raising_rule",
                           level="WARNING")) == 2
        assert len(records(daemon, event="plugin", plugin="example_raising_rule",
                           level="ERROR")) == 1
        # The daemon carries on: the monitor still evaluates, built-in insights still come.
        insights = json.loads(daemon.cli("insights", "--json").out)
        assert insights["status"] in ("ok", "issues", "not_enough_data"), insights
        status = _status(daemon)
        assert all(a["alive"] for a in status["actors"].values()), status["actors"]
        assert status["batcher"]["processor_failures"] == 1
        metrics = daemon.cli("metrics").out
        assert ('modcoord_plugin_disabled{plugin="modcoord.insight_rules:example_raising_rule"}'
                ' 1.0') in metrics
    finally:
        err = _finish(proc)
    assert proc.returncode == 0, err


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_an_unknown_plugin_name_is_refused_naming_file_key_and_the_available_names(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(start=False, configs={"fully_auto": {
        "plugins": {"batch_processors": ["priority", "no_such_processor"]}}})
    result = daemon.cli("config", "validate", str(daemon.config_dir))
    text = result.out + result.err
    assert result.code != 0, text
    assert "fully_auto.yaml: plugins.batch_processors.1: unknown plugin 'no_such_processor'" \
        in text, text
    assert "example_reverse" in text and "priority" in text, text
