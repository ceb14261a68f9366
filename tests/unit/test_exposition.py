"""Tests of the Prometheus exposition: a strict parser of format 0.0.4 checks the output."""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from typing import Any

import pytest
from exposition_parser import check_conventions, check_histogram, parse_exposition, value_of

from modcoord.actors.clock import MockClock
from modcoord.actors.histogram import PROMETHEUS_BUCKETS_S
from modcoord.actors.shared.metrics import MetricsRegistry
from modcoord.supervisor.daemon.exposition import CONTENT_TYPE, MetricsHTTPServer, render_metrics

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
                        "evictions_explicit": 0, "inflight": 1, "enabled": True},
        "batch_queue": {"pending": 5, "rejected": 2, "max_queue": 10000},
        "last_reload_error": "hybrid.yaml: cache.ttl_ms: bad",
        "debouncer": {"received": 100, "emitted": 60, "collapsed": 40, "pending": 3},
        "batcher": {"batches": 12, "updates": 60, "deliveries": 20, "delivery_errors": 1,
                    "mean_size": 5.0},
        "memory": {"rss_bytes": 52_428_800, "max_rss_bytes": 104_857_600,
                   "cleanups": [["interval", 9], ["pressure", 1], ["forced", 0]],
                   "strategy": "balanced"},
        "undeliverable": 2,
    }


@pytest.fixture
def registry() -> MetricsRegistry:
    reg = MetricsRegistry(MockClock())
    for seconds in (0.00004, 0.00009, 0.0003, 0.002, 0.002, 0.07, 3.0, 60.0):
        reg.record("coordination", seconds)
    reg.record("publish_to_delivery", 0.12)
    reg.increment("publish_rejected", 3)
    reg.increment("odd name-2")
    return reg


# --------------------------------------------------------------------------- tests

def test_full_status_is_strictly_valid_and_carries_the_values(registry: MetricsRegistry
                                                              ) -> None:
    text = render_metrics(full_status(), registry)
    fams = parse_exposition(text)
    check_conventions(fams)

    assert value_of(fams, "modcoord_uptime_seconds") == 12.5
    assert value_of(fams, "modcoord_mode", mode="HYBRID") == 1
    assert value_of(fams, "modcoord_mode", mode="MANUAL") == 0
    assert value_of(fams, "modcoord_coordinating") == 1
    assert value_of(fams, "modcoord_modules") == 3
    assert value_of(fams, "modcoord_config_last_reload_ok") == 0
    assert value_of(fams, "modcoord_actor_up", actor="memory") == 0
    assert value_of(fams, "modcoord_actor_up", actor="cache") == 1
    assert value_of(fams, "modcoord_actor_restarts_total", actor="batcher") == 2
    assert fams["modcoord_actor_restarts_total"].type == "counter"
    quant = "modcoord_coordination_latency_recent_seconds"
    assert value_of(fams, quant, quantile="0.5") == pytest.approx(0.00025)
    assert value_of(fams, quant, quantile="0.99") == pytest.approx(0.0125)
    assert value_of(fams, "modcoord_memory_usage_bytes") == 52_428_800
    assert value_of(fams, "modcoord_active_subscriptions") == 7
    assert value_of(fams, "modcoord_cache_hit_ratio") == 0.75
    assert value_of(fams, "modcoord_cache_entries") == 10
    assert value_of(fams, "modcoord_cache_max_entries") == 1000
    assert value_of(fams, "modcoord_cache_hits_total") == 30
    assert value_of(fams, "modcoord_cache_evictions_total", cause="size") == 4
    assert value_of(fams, "modcoord_cache_evictions_total", cause="expired") == 6
    assert value_of(fams, "modcoord_cache_evictions_total", cause="explicit") == 0
    assert value_of(fams, "modcoord_batch_efficiency") == 0.4
    assert value_of(fams, "modcoord_batcher_delivery_errors_total") == 1
    assert value_of(fams, "modcoord_undeliverable_updates_total") == 2
    assert value_of(fams, "modcoord_memory_limit_bytes") == 104_857_600
    assert value_of(fams, "modcoord_memory_cleanups_total", reason="interval") == 9
    assert value_of(fams, "modcoord_memory_cleanups_total", reason="pressure") == 1
    assert value_of(fams, "modcoord_batch_queue_pending") == 5
    assert value_of(fams, "modcoord_batch_queue_rejected_total") == 2
    assert value_of(fams, "modcoord_debouncer_collapsed_total") == 40
    assert value_of(fams, "modcoord_batcher_updates_total") == 60
    assert value_of(fams, "modcoord_publish_rejected_total") == 3
    assert value_of(fams, "modcoord_odd_name_2_total") == 1
    assert "4242" not in text  # the pid is no metric


def test_histograms_are_cumulative_with_sub_millisecond_buckets(registry: MetricsRegistry
                                                                ) -> None:
    fams = parse_exposition(render_metrics({}, registry))
    check_conventions(fams)
    assert {"modcoord_coordination_seconds", "modcoord_publish_to_delivery_seconds",
            "modcoord_debounce_lateness_seconds"} <= set(fams)
    coord = fams["modcoord_coordination_seconds"]
    assert coord.type == "histogram"
    buckets, total, count = check_histogram(coord)
    assert [le for le, _ in buckets] == [*PROMETHEUS_BUCKETS_S, math.inf]
    assert count == 8
    assert total == pytest.approx(0.00004 + 0.00009 + 0.0003 + 0.004 + 0.07 + 63.0)
    by_le = dict(buckets)
    assert by_le[0.0001] == 2      # 40 µs and 90 µs
    assert by_le[0.0005] == 3
    assert by_le[0.0025] == 5
    assert by_le[0.1] == 6
    assert by_le[5.0] == 7
    assert by_le[10.0] == 7        # 60 s only in +Inf
    assert by_le[math.inf] == 8
    _, _, empty = check_histogram(fams["modcoord_debounce_lateness_seconds"])
    assert empty == 0


def test_missing_and_malformed_keys_are_tolerated() -> None:
    assert render_metrics({}, None) == ""
    assert render_metrics(None, None) == ""
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
    fams = parse_exposition(render_metrics(odd, None))
    check_conventions(fams)
    assert value_of(fams, "modcoord_mode", mode="TURBO") == 1
    assert value_of(fams, "modcoord_mode", mode="HYBRID") == 0
    assert value_of(fams, "modcoord_modules") == 2
    assert value_of(fams, "modcoord_cache_evictions_total", cause="ttl") == 1
    assert value_of(fams, "modcoord_memory_cleanups_total", reason="forced") == 3
    flat = parse_exposition(render_metrics({"cache_stats": {"evictions": 7}}, None))
    assert value_of(flat, "modcoord_cache_evictions_total", cause="size") == 7
    assert "modcoord_uptime_seconds" not in fams
    assert "modcoord_debouncer_received_total" not in fams
    assert "modcoord_actor_up" not in fams


def test_label_values_are_escaped() -> None:
    weird = 'we"ird\\actor\nname'
    text = render_metrics({"actors": {weird: {"alive": True, "restarts": 1}}}, None)
    assert "\n" not in text.split("modcoord_actor_up{", 1)[1].split("}", 1)[0]
    fams = parse_exposition(text)
    assert value_of(fams, "modcoord_actor_restarts_total", actor=weird) == 1


def test_registry_counter_does_not_duplicate_a_status_family() -> None:
    reg = MetricsRegistry(MockClock(), names=())
    reg.increment("cache_hits", 99)
    fams = parse_exposition(render_metrics({"cache_stats": {"hits": 5}}, reg))
    assert [s for s in fams["modcoord_cache_hits_total"].samples] == [
        ("modcoord_cache_hits_total", {}, 5.0)]


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def test_http_endpoint_serves_the_exposition(registry: MetricsRegistry) -> None:
    status = full_status()
    server = MetricsHTTPServer("127.0.0.1", 0, lambda: render_metrics(status, registry))
    port = server.start()
    try:
        assert port > 0
        code, ctype, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert code == 200
        assert ctype == CONTENT_TYPE
        assert ctype.startswith("text/plain; version=0.0.4")
        check_conventions(parse_exposition(body))
        assert body == render_metrics(status, registry)
        status["mode"] = "MANUAL"  # rendered afresh for every scrape
        _, _, body2 = _get(f"http://127.0.0.1:{port}/metrics")
        assert value_of(parse_exposition(body2), "modcoord_mode", mode="MANUAL") == 1
        code, _, _ = _get(f"http://127.0.0.1:{port}/other")
        assert code == 404
        stats = server.statistics()
        assert (stats.scrapes, stats.not_found, stats.errors, stats.port) == (2, 1, 0, port)
    finally:
        server.stop()
    assert server.statistics().port is None
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    server.stop()  # idempotent


def test_http_endpoint_answers_500_when_rendering_fails() -> None:
    def broken() -> str:
        raise RuntimeError("no status")

    server = MetricsHTTPServer("127.0.0.1", 0, broken)
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
