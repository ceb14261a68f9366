"""Tests of the metrics exposition, read back with prometheus_client's parsers (text and
OpenMetrics) and, where installed, ``promtool check metrics``."""

from __future__ import annotations

import math
import platform
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from metrics_check import (
    check_conventions,
    check_histogram,
    parse_openmetrics,
    parse_text,
    promtool_check,
    value_of,
)

from modcoord.actors.clock import MockClock
from modcoord.actors.shared.metrics import MetricsRegistry
from modcoord.supervisor.daemon.exposition import (
    CONTENT_TYPE,
    METRICS,
    OPENMETRICS_CONTENT_TYPE,
    Exposition,
)
from modcoord.supervisor.daemon.metrics_endpoint import MetricsHTTPServer
from modcoord.supervisor.protocol.calls import PROTOCOL_VERSION
from modcoord.supervisor.version import VERSION

# --------------------------------------------------------------------------- fixtures

def full_status() -> dict[str, Any]:
    return {
        "pid": 4242,
        "uptime_s": 12.5,
        "mode": "HYBRID",
        "is_coordinating": True,
        "actors": {name: {"alive": name != "memory", "restarts": i}
                   for i, name in enumerate(("debouncer", "cache", "batcher", "memory",
                                             "monitor"))},
        "modules": 3,
        "performance_metrics": {
            "coordination_latency_ms": {"p50": 0.25, "p95": 4.0, "p99": 12.5},
            "memory_usage_bytes": 52_428_800,
            "active_subscriptions": 7,
            "cache_hit_rate": 0.75,
            "batch_efficiency": 0.4,
        },
        "cache_stats": {"size": 10, "max_size": 1000, "hits": 30, "misses": 10,
                        "hit_rate": 0.75, "evictions_expired": 6, "evictions_size": 4,
                        "evictions_explicit": 0, "inflight": 1, "enabled": True,
                        "refreshes": 9, "refresh_failures": 2, "refresh_skipped_budget": 3,
                        "prewarmed": 5, "prewarm_failures": 1},
        "batch_queue": {"pending": 5, "rejected": 2, "max_queue": 10000},
        "last_reload_error": "hybrid.yaml: cache.ttl_ms: bad",
        "debouncer": {"received": 100, "emitted": 60, "collapsed": 40, "pending": 3},
        "batcher": {"batches": 12, "updates": 60, "deliveries": 20, "delivery_errors": 1,
                    "mean_size": 5.0, "busy_s": 0.25},
        "memory": {"rss_bytes": 52_428_800, "max_rss_bytes": 104_857_600,
                   "cleanups": [["interval", 9], ["pressure", 1], ["forced", 0]],
                   "strategy": "balanced"},
        "undeliverable": 2,
        "reloads": {"ok": 2, "rejected": 1, "skipped": 4},
    }


@pytest.fixture
def registry() -> MetricsRegistry:
    reg = MetricsRegistry(MockClock())
    for seconds in (0.00004, 0.00009, 0.0003, 0.002, 0.002, 0.07, 3.0, 60.0):
        reg.record("coordination", seconds)
    reg.record("publish_to_delivery", 0.12)
    reg.record("actor_debouncer", 0.0002)
    reg.record("actor_cache", 0.003)
    reg.increment("publish_rejected", 3)
    return reg


def render(status: Any, registry: MetricsRegistry | None, openmetrics: bool = False) -> str:
    exposition = Exposition(lambda: status, registry)
    return exposition.openmetrics() if openmetrics else exposition.text()


# --------------------------------------------------------------------------- tests

def test_full_status_parses_and_carries_the_values(registry: MetricsRegistry) -> None:
    text = render(full_status(), registry)
    fams = parse_text(text)
    check_conventions(fams)

    assert value_of(fams, "modcoord_uptime_seconds") == 12.5
    assert value_of(fams, "modcoord_mode", mode="HYBRID") == 1
    assert value_of(fams, "modcoord_mode", mode="MANUAL") == 0
    assert value_of(fams, "modcoord_coordinating") == 1
    assert value_of(fams, "modcoord_modules") == 3
    assert value_of(fams, "modcoord_config_last_reload_ok") == 0
    assert value_of(fams, "modcoord_config_reloads", result="rejected") == 1
    assert value_of(fams, "modcoord_actor_up", actor="memory") == 0
    assert value_of(fams, "modcoord_actor_up", actor="cache") == 1
    assert value_of(fams, "modcoord_actor_restarts", actor="batcher") == 2
    assert fams["modcoord_actor_restarts"].type == "counter"
    assert value_of(fams, "modcoord_memory_usage_bytes") == 52_428_800
    assert value_of(fams, "modcoord_active_subscriptions") == 7
    assert value_of(fams, "modcoord_cache_hit_ratio") == 0.75
    assert value_of(fams, "modcoord_cache_entries") == 10
    assert value_of(fams, "modcoord_cache_max_entries") == 1000
    assert value_of(fams, "modcoord_cache_hits") == 30
    assert value_of(fams, "modcoord_cache_evictions", cause="size") == 4
    assert value_of(fams, "modcoord_cache_evictions", cause="expired") == 6
    assert value_of(fams, "modcoord_cache_background", kind="refresh", result="stored") == 9
    assert value_of(fams, "modcoord_cache_background", kind="refresh", result="failed") == 2
    assert value_of(fams, "modcoord_cache_background", kind="prewarm", result="stored") == 5
    assert value_of(fams, "modcoord_cache_background", kind="prewarm", result="failed") == 1
    assert value_of(fams, "modcoord_cache_refresh_skipped") == 3
    assert value_of(fams, "modcoord_cache_evictions", cause="explicit") == 0
    assert value_of(fams, "modcoord_batch_size_mean") == 5.0  # updates per batch
    assert value_of(fams, "modcoord_batcher_busy_seconds") == 0.25
    assert value_of(fams, "modcoord_batcher_delivery_errors") == 1
    assert value_of(fams, "modcoord_undeliverable_updates") == 2
    assert value_of(fams, "modcoord_memory_limit_bytes") == 104_857_600
    assert value_of(fams, "modcoord_memory_cleanups", reason="interval") == 9
    assert value_of(fams, "modcoord_memory_cleanups", reason="pressure") == 1
    assert value_of(fams, "modcoord_batch_queue_pending") == 5
    assert value_of(fams, "modcoord_batch_queue_rejected") == 2
    assert value_of(fams, "modcoord_debouncer_collapsed") == 40
    assert value_of(fams, "modcoord_batcher_updates") == 60
    assert value_of(fams, "modcoord_events", event="publish_rejected") == 3
    assert value_of(fams, "modcoord_build_info", version=VERSION,
                    protocol_version=str(PROTOCOL_VERSION),
                    python=platform.python_version()) == 1
    assert "modcoord_batch_efficiency" not in fams  # updates/ms: no base unit
    assert not [n for n in fams if n.startswith("modcoord_actor_") and
                any(a in n for a in ("debouncer", "cache", "batcher"))], "actors are labels"
    # The pid is no metric: no sample (outside process_*) has it as value or label. (A
    # substring check failed when another value's digits happened to contain "4242".)
    assert not [(n, smp) for n, fam in fams.items() if not n.startswith("process_")
                for smp in fam.samples
                if smp.value == 4242 or "4242" in smp.labels.values()]


def test_no_gauge_carries_a_quantile_label_and_the_summary_is_one(
        registry: MetricsRegistry) -> None:
    fams = parse_text(render(full_status(), registry))
    for family in fams.values():
        if any("quantile" in s.labels for s in family.samples):
            assert family.type == "summary", family.name
    recent = fams["modcoord_coordination_recent_seconds"]
    quantiles = {s.labels["quantile"]: s.value for s in recent.samples if "quantile" in s.labels}
    assert set(quantiles) == {"0.5", "0.95", "0.99"}
    snap = registry.histogram("coordination").recent()
    assert quantiles["0.5"] == pytest.approx(snap.p50 / 1000.0)
    assert quantiles["0.99"] == pytest.approx(snap.p99 / 1000.0)
    assert value_of(fams, "modcoord_coordination_recent_seconds",
                    "modcoord_coordination_recent_seconds_count") == 8


def test_histograms_are_exact_cumulative_and_actors_are_labels(registry: MetricsRegistry
                                                               ) -> None:
    fams = parse_text(render({}, registry))
    check_conventions(fams)
    assert {"modcoord_coordination_seconds", "modcoord_publish_to_delivery_seconds",
            "modcoord_debounce_lateness_seconds",
            "modcoord_actor_message_handling_seconds"} <= set(fams)
    buckets, count = check_histogram(fams["modcoord_coordination_seconds"])
    assert count == 8
    by_le = dict(buckets[()])
    assert by_le[0.0001] == 2      # 40 µs and 90 µs
    assert by_le[0.0005] == 3
    assert by_le[0.0025] == 5
    assert by_le[0.1] == 6
    assert by_le[5.0] == 7
    assert by_le[10.0] == 7        # 60 s only in +Inf
    assert by_le[math.inf] == 8
    assert value_of(fams, "modcoord_coordination_seconds",
                    "modcoord_coordination_seconds_sum") == pytest.approx(
        0.00004 + 0.00009 + 0.0003 + 0.004 + 0.07 + 63.0)
    actors, _ = check_histogram(fams["modcoord_actor_message_handling_seconds"])
    assert set(actors) >= {(("actor", "debouncer"),), (("actor", "cache"),)}
    assert dict(actors[(("actor", "cache"),)])[0.0025] == 0
    assert dict(actors[(("actor", "cache"),)])[0.005] == 1
    assert check_histogram(fams["modcoord_debounce_lateness_seconds"])[1] == 0


def test_openmetrics_output_has_units_and_eof(registry: MetricsRegistry) -> None:
    text = render(full_status(), registry, openmetrics=True)
    assert text.endswith("# EOF\n")
    fams = parse_openmetrics(text)
    check_conventions(fams, openmetrics=True)
    assert fams["modcoord_build"].type == "info"
    assert fams["modcoord_uptime_seconds"].unit == "seconds"
    assert fams["modcoord_memory_usage_bytes"].unit == "bytes"
    assert fams["modcoord_cache_hit_ratio"].unit == "ratio"
    assert fams["modcoord_coordination_seconds"].unit == "seconds"


def test_promtool_accepts_the_text_format(registry: MetricsRegistry) -> None:
    result = promtool_check(render(full_status(), registry))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


def test_every_exported_family_is_in_the_table_and_the_reference() -> None:
    reference = (Path(__file__).resolve().parents[2] / "docs" / "REFERENCE.md").read_text()
    for name, spec in METRICS.items():
        labels = ", ".join(f"`{label}`" for label in spec.labels) or "—"
        row = f"| `{name}` | {spec.kind} | {spec.unit or '—'} | {labels} |"
        assert row in reference, f"docs/REFERENCE.md lacks the row {row}"


def test_missing_and_malformed_keys_are_tolerated() -> None:
    odd = {
        "mode": "TURBO",
        "uptime_s": "soon",
        "actors": "everyone",
        "modules": ["a", "b"],
        "performance_metrics": None,
        "cache_stats": {"size": 2, "evictions": {"ttl": 1, "capacity": 2}},
        "memory": {"cleanups": {"forced": 3}},
        "batch_queue": {},
        "debouncer": {"received": None},
    }
    fams = parse_text(render(odd, None))
    check_conventions(fams)
    assert value_of(fams, "modcoord_mode", mode="TURBO") == 1
    assert value_of(fams, "modcoord_mode", mode="HYBRID") == 0
    assert value_of(fams, "modcoord_modules") == 2
    assert value_of(fams, "modcoord_cache_evictions", cause="ttl") == 1
    assert value_of(fams, "modcoord_memory_cleanups", reason="forced") == 3
    flat = parse_text(render({"cache_stats": {"evictions": 7}}, None))
    assert value_of(flat, "modcoord_cache_evictions", cause="size") == 7
    assert "modcoord_uptime_seconds" not in fams
    assert "modcoord_debouncer_received" not in fams
    assert "modcoord_actor_up" not in fams
    empty = parse_text(render(None, None))  # build info and process_* only
    assert {n for n in empty if n.startswith("modcoord_")} == {"modcoord_build_info"}


def test_label_values_are_escaped() -> None:
    weird = 'we"ird\\actor\nname'
    text = render({"actors": {weird: {"alive": True, "restarts": 1}}}, None)
    assert "\n" not in text.split("modcoord_actor_up{", 1)[1].split("}", 1)[0]
    fams = parse_text(text)
    assert value_of(fams, "modcoord_actor_restarts", actor=weird) == 1


def _get(url: str, accept: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def test_http_endpoint_serves_the_exposition(registry: MetricsRegistry) -> None:
    status = full_status()
    server = MetricsHTTPServer("127.0.0.1", 0, Exposition(lambda: status, registry))
    port = server.start()
    try:
        assert port > 0
        code, ctype, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert code == 200
        assert ctype == CONTENT_TYPE
        assert ctype.startswith("text/plain; version=0.0.4")
        check_conventions(parse_text(body))
        status["mode"] = "MANUAL"  # rendered afresh for every scrape
        code, ctype, body2 = _get(f"http://127.0.0.1:{port}/metrics",
                                  "application/openmetrics-text; version=1.0.0")
        assert code == 200
        assert ctype.startswith(OPENMETRICS_CONTENT_TYPE)
        assert body2.endswith("# EOF\n")
        fams = parse_openmetrics(body2)
        check_conventions(fams, openmetrics=True)
        assert value_of(fams, "modcoord_mode", mode="MANUAL") == 1
        code, _, _ = _get(f"http://127.0.0.1:{port}/other")
        assert code == 404
        _, prometheus_ctype, _ = _get(  # what Prometheus 2.x sends
            f"http://127.0.0.1:{port}/metrics",
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
            "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
        assert prometheus_ctype.startswith("application/openmetrics-text; version=1.0.0")
        stats = server.statistics()
        assert (stats.scrapes, stats.not_found, stats.errors, stats.port) == (3, 1, 0, port)
    finally:
        server.stop()
    assert server.statistics().port is None
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    server.stop()  # idempotent


def test_http_endpoint_answers_500_when_rendering_fails() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("no status")

    server = MetricsHTTPServer("127.0.0.1", 0, Exposition(broken, None))
    port = server.start()
    try:
        code, _, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert code == 500
        assert "failed" in body
        assert server.statistics().errors == 1
        with pytest.raises(RuntimeError, match="already started"):
            server.start()
    finally:
        server.stop()


def test_adaptive_parameters_and_resources_in_base_units() -> None:
    adaptive = {"enabled": True, "parameters": {
        "debounce.delay_ms": {"configured": 300, "effective": 120.0, "reason": "learnt",
                              "pinned": None},
        "batch.window_ms": {"configured": 50, "effective": 200, "reason": "max",
                            "pinned": "adaptive.batch.max_window_ms"},
        "batch.max_size": {"configured": 100, "effective": 100, "reason": "", "pinned": None},
        "cache.max_entries": {"configured": 1000, "effective": 250, "reason": "pressure",
                              "pinned": None},
        "delays.widen": {"configured": 1.0, "effective": 2.0, "reason": "cpu", "pinned": None},
        "memory.strategy": {"configured": "balanced", "effective": "aggressive",
                            "reason": "pressure", "pinned": None},
        "odd": "not a mapping"},
        "resources": {"memory_level": 1, "widening": True, "cpu_fraction": 0.75,
                      "available_bytes": 123456, "cache_evicted": 7, "escalations": 2,
                      "relaxations": 1}}
    fams = parse_text(render({"adaptive": adaptive}, None))
    check_conventions(fams)
    assert value_of(fams, "modcoord_adaptive_enabled") == 1
    assert value_of(fams, "modcoord_adaptive_effective_seconds", parameter="debounce.delay") \
        == pytest.approx(0.12)
    assert value_of(fams, "modcoord_adaptive_configured_seconds", parameter="batch.window") \
        == pytest.approx(0.05)
    assert value_of(fams, "modcoord_adaptive_pinned", parameter="batch.window") == 1
    assert value_of(fams, "modcoord_adaptive_pinned", parameter="debounce.delay") == 0
    assert value_of(fams, "modcoord_adaptive_effective", parameter="cache.max_entries") == 250
    assert value_of(fams, "modcoord_adaptive_configured", parameter="delays.widen") == 1.0
    assert value_of(fams, "modcoord_adaptive_memory_strategy", strategy="aggressive") == 1
    assert value_of(fams, "modcoord_adaptive_memory_strategy", strategy="balanced") == 0
    assert value_of(fams, "modcoord_resources_memory_level") == 1
    assert value_of(fams, "modcoord_resources_delays_widened") == 1
    assert value_of(fams, "modcoord_resources_cpu_ratio") == 0.75
    assert value_of(fams, "modcoord_resources_available_memory_bytes") == 123456
    assert value_of(fams, "modcoord_resources_escalations") == 2
    # Without the resource awareness (MANUAL), no resources samples and nothing guessed.
    quiet = parse_text(render({"adaptive": {"enabled": False, "parameters": {}}}, None))
    assert value_of(quiet, "modcoord_adaptive_enabled") == 0
    assert "modcoord_resources_memory_level" not in quiet


def _engine_status() -> dict[str, Any]:
    return {"engine": {
        "kind": "nats", "instance_id": "host-a",
        "connections": {"data": {"connected": True, "reconnects": 2},
                        "control": {"connected": False, "reconnects": 1}},
        "instances": ["host-a", "host-b"],
        "partitions": {"total": 8, "owned": [0, 3, 5], "unowned": [7]},
        "lag": {"0": {"pending": 4, "ack_pending": 1}, "3": {"pending": 0, "ack_pending": 0},
                "5": {"error": "TimeoutError"}},
        "agent": {"buffered": 12, "max_buffered": 100, "acked": 900, "refused": 3},
        "deliveries": {"batches": 10, "updates": 77, "errors": 0}}}


def test_the_nats_engine_exports_the_cluster_as_this_daemon_sees_it() -> None:
    text = render(_engine_status(), None)
    fams = parse_text(text)
    check_conventions(fams)
    assert value_of(fams, "modcoord_engine_connected", connection="data") == 1
    assert value_of(fams, "modcoord_engine_connected", connection="control") == 0
    assert value_of(fams, "modcoord_engine_reconnects", connection="data") == 2
    assert value_of(fams, "modcoord_engine_instances") == 2
    assert value_of(fams, "modcoord_engine_partitions") == 8
    assert value_of(fams, "modcoord_engine_partitions_owned") == 3
    assert value_of(fams, "modcoord_engine_partitions_unowned") == 1
    assert value_of(fams, "modcoord_engine_partition_pending", partition="0") == 4
    assert value_of(fams, "modcoord_engine_partition_ack_pending", partition="0") == 1
    assert value_of(fams, "modcoord_engine_partition_pending", partition="3") == 0
    pending = [s for s in fams["modcoord_engine_partition_pending"].samples]
    assert {s.labels["partition"] for s in pending} == {"0", "3"}  # 5: unread, left out
    assert value_of(fams, "modcoord_engine_agent_buffered") == 12
    assert value_of(fams, "modcoord_engine_agent_max_buffered") == 100
    assert value_of(fams, "modcoord_engine_agent_refused") == 3
    assert value_of(fams, "modcoord_engine_agent_acked") == 900
    assert value_of(fams, "modcoord_engine_delivered_updates") == 77
    result = promtool_check(text)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_local_engine_exports_no_engine_family() -> None:
    fams = parse_text(render({"engine": {"kind": "local"}, "uptime_s": 1.0}, None))
    assert not [n for n in fams if n.startswith("modcoord_engine_")]
    odd = {"engine": {"kind": "nats", "instances": "two", "partitions": {"owned": 3},
                      "lag": {"x": 1, "2": "lots"}, "agent": {"buffered": True}}}
    fams = parse_text(render(odd, None))  # malformed values are left out, never fail
    assert not [n for n in fams if n.startswith("modcoord_engine_")]
