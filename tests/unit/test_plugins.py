"""Unit tests of the extension points (``actors/plugins.py``): the guard, name checks, the
cache policy protocol, the batch processor chain, module metrics, exporters, and the otlp
exporter against the SDK's in-memory reader. Through the real daemon:
``integration/test_plugins_daemon.py`` and ``integration/test_otlp_daemon.py``."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modcoord.actors import CacheSettings, MockClock
from modcoord.actors.plugins import (
    BATCH_PROCESSORS,
    CACHE_POLICIES,
    GuardedCachePolicy,
    Loaded,
    MetricSample,
    PluginError,
    PluginGuard,
    PluginHost,
    check_names,
)
from modcoord.actors.settings import ExporterSpec, PluginSettings
from modcoord.actors.shared.cache_store import LRU, CacheStore
from modcoord.supervisor.daemon.exporting import ExporterRunner
from modcoord.supervisor.daemon.module_metrics import ModuleMetricsTable

examples = pytest.importorskip(
    "modcoord_example_plugins.cache",
    reason="pip install ./examples/modcoord-example-plugins (scripts/test does)")


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event hanging plugins wait on; set at teardown so their threads end."""
    event = threading.Event()
    yield event
    event.set()


# -- the guard -----------------------------------------------------------------------------


def _boom() -> None:
    raise RuntimeError("boom")


def test_a_raising_plugin_is_counted_and_disabled_after_max_failures_in_a_row() -> None:
    guard = PluginGuard("kind", "p", timeout_s=1.0, max_failures=3)
    assert guard.call(lambda x: x + 1, 1) == 2
    for _ in range(2):
        with pytest.raises(PluginError, match="raised RuntimeError: boom"):
            guard.call(_boom)
    assert guard.call(lambda: "ok") == "ok"  # a success resets the run
    for _ in range(3):
        with pytest.raises(PluginError):
            guard.call(_boom)
    stats = guard.statistics()
    assert (stats.calls, stats.failures, stats.disabled) == (7, 5, True)
    assert stats.last_error == "RuntimeError: boom"
    with pytest.raises(PluginError, match="disabled"):
        guard.call(lambda: "never")
    assert guard.statistics().calls == 7  # a disabled plugin is not called
    guard.close()


def test_a_hanging_plugin_times_out_and_a_second_call_fails_at_once(
        release: threading.Event) -> None:
    guard = PluginGuard("kind", "hang", timeout_s=0.05, max_failures=2)
    with pytest.raises(PluginError, match="timed out after 50 ms"):
        guard.call(release.wait)
    with pytest.raises(PluginError, match="still running"):
        guard.call(lambda: "queued behind a hang")
    stats = guard.statistics()
    assert (stats.failures, stats.timeouts, stats.disabled) == (2, 2, True)
    guard.close()


def test_unknown_names_are_refused_with_the_key_and_the_available_names() -> None:
    assert check_names(PluginSettings(batch_processors=("priority", "example_reverse"))) is None
    key, problem = check_names(PluginSettings(insight_rules=("example_memory_share", "nope"))
                               ) or ("", "")
    assert key == "plugins.insight_rules.1"
    assert "unknown plugin 'nope' in entry-point group modcoord.insight_rules" in problem
    assert "example_memory_share" in problem and "example_raising_rule" in problem
    key, problem = check_names(PluginSettings(cache_policy="lfu")) or ("", "")
    assert key == "plugins.cache_policy" and "lru" in problem and "example_mru" in problem


def test_a_mode_file_naming_an_unknown_plugin_is_refused(tmp_path: Path) -> None:
    from modcoord.actors.errors import ConfigError
    from modcoord.supervisor.daemon.config import load_mode_file

    path = tmp_path / "hybrid.yaml"
    path.write_text("plugins:\n  exporters:\n    - name: statsd\n")
    with pytest.raises(ConfigError) as err:
        load_mode_file(path)
    assert err.value.key == "plugins.exporters.0.name"
    assert "'statsd'" in err.value.problem and "otlp" in err.value.problem


# -- cache policies ------------------------------------------------------------------------


def _loaded(group: str, obj: Any, max_failures: int = 2, timeout_s: float = 1.0) -> Loaded:
    return Loaded("test", obj, PluginGuard(group, "test", timeout_s, max_failures))


def test_the_builtin_policy_evicts_expired_first_then_least_recently_used() -> None:
    clock = MockClock()
    store = CacheStore(clock, CacheSettings(max_entries=3, evict_fraction=0.2, ttl_ms=1000))
    assert store.policy is LRU
    for k in ("a", "b", "c"):
        store.put(k, k)
    store.get("a")
    store.put("d", "d")  # full, nothing expired: b (least recently used) goes
    assert [store.get(k) for k in ("a", "b", "c", "d")] == ["a", None, "c", "d"]
    clock.advance(2.0)
    store.put("e", "e")  # all expired: they go first
    stats = store.statistics()
    assert (stats.size, stats.evictions_size, stats.evictions_expired) == (1, 1, 3)


def test_a_plugin_policy_chooses_victims_and_lifetimes() -> None:
    clock = MockClock()
    store = CacheStore(clock, CacheSettings(max_entries=2, evict_fraction=0.5, ttl_ms=1000))
    policy = examples.MostRecentlyUsedPolicy()
    store.set_policy(GuardedCachePolicy(_loaded(CACHE_POLICIES, policy)))
    store.put("HYBRID:a", 1)
    store.put("MANUAL:b", 2)
    store.put("HYBRID:c", 3)  # MRU evicts MANUAL:b, the newest
    assert store.get("HYBRID:a") == 1 and store.get("MANUAL:b") is None
    store.put("MANUAL:d", 4)
    clock.advance(1.5)  # past the default TTL; MANUAL keys live twice as long
    assert store.get("MANUAL:d") == 4 and store.get("HYBRID:a") is None


class _BadPolicy:
    def ttl_s(self, key: str, value: Any, default_s: float) -> Any:
        return "forever"

    def victims(self, entries: Any, n: int, now: float) -> Any:
        return ["not-a-key"]


def test_a_policy_giving_unusable_answers_falls_back_to_lru_and_is_disabled() -> None:
    clock = MockClock()
    store = CacheStore(clock, CacheSettings(max_entries=2, evict_fraction=0.5, ttl_ms=1000))
    loaded = _loaded(CACHE_POLICIES, _BadPolicy(), max_failures=3)
    store.set_policy(GuardedCachePolicy(loaded))
    store.put("a", 1)  # bad ttl: failure 1, default TTL used
    store.put("b", 2)  # failure 2
    store.put("c", 3)  # bad ttl (3), disabled; then victims: LRU answers
    assert loaded.guard.disabled
    assert store.get("a") is None and store.get("b") == 2 and store.get("c") == 3
    clock.advance(1.1)
    assert store.get("b") is None  # it lived the default TTL


# -- batch processors ----------------------------------------------------------------------


def test_the_processor_chain_runs_in_order_and_skips_a_failing_processor(
        clock: MockClock) -> None:
    from actor_harness import ActorRig

    from modcoord.actors._base import Statistics
    from modcoord.actors.batcher import BatcherActor, Enqueue, FlushBatches, Subscribe
    from modcoord.actors.settings import BatchSettings
    from modcoord.actors.update import Batch, Update

    got: list[Batch] = []
    rig = ActorRig(clock, "batcher", BatcherActor, BatchSettings(window_ms=1000),
                   deliver=lambda sub, batch: got.append(batch))
    rig.context.shared.plugins.configure(PluginSettings(
        batch_processors=("priority", "example_raising_processor", "example_reverse")))
    rig.start()
    rig.tell(Subscribe("sink", ("*",)))
    ups = [Update("m", f"k{i}", i, p, i, 0.0) for i, p in enumerate(("low", "high", "low"))]
    rig.tell(Enqueue(tuple(ups)))
    assert rig.ask(FlushBatches()) == 3
    # priority: high first (k1), then the lows (k0, k2); reversed by the example.
    assert [u.key for b in got for u in b.updates] == ["k2", "k0", "k1"]
    stats = rig.ask(Statistics())
    assert stats.processor_failures == 1
    guards = rig.context.shared.plugins.statistics()["guards"]
    assert guards[f"{BATCH_PROCESSORS}:example_raising_processor"]["failures"] == 1


# -- module metrics ------------------------------------------------------------------------


class _Endpoint:
    def __init__(self) -> None:
        self.replies: list[Any] = []

    def performance_metrics(self, module_id: str, reply: Any) -> None:
        self.replies.append(reply)


def test_module_metrics_keep_numbers_only_up_to_the_cap_and_count_the_rest() -> None:
    clock = MockClock()
    table = ModuleMetricsTable(clock.monotonic)
    ep = _Endpoint()
    assert table.poll([("m", ep)], timeout_s=2.0, cap=2) == 1  # type: ignore[list-item]
    ep.replies[0]({"c": 3, "a": 1.5, "b": 2, "s": "x", "t": True, "n": float("nan")}, None)
    assert table.values() == {"m": {"a": 1.5, "b": 2.0}}
    stats = table.statistics()
    assert (stats["dropped_non_numeric"], stats["dropped_over_cap"]) == (3, 1)


def test_a_module_that_does_not_answer_in_time_is_counted_and_its_late_answer_ignored() -> None:
    clock = MockClock()
    table = ModuleMetricsTable(clock.monotonic)
    ep = _Endpoint()
    table.poll([("m", ep)], timeout_s=2.0, cap=10)  # type: ignore[list-item]
    clock.advance(1.0)
    assert table.poll([("m", ep)], 2.0, 10) == 0  # type: ignore[list-item]  # still waiting
    clock.advance(1.5)
    assert table.poll([("m", ep)], 2.0, 10) == 1  # type: ignore[list-item]  # timed out
    ep.replies[0]({"a": 1}, None)  # the first request's answer, late
    assert table.values() == {}
    ep.replies[1](None, "AttributeError: no metrics")
    stats = table.statistics()
    assert (stats["timeouts"], stats["late"], stats["errors"], stats["answers"]) == (1, 1, 1, 0)


# -- exporters -----------------------------------------------------------------------------


def test_the_runner_exports_every_interval_and_contains_a_raising_exporter(
        tmp_path: Path) -> None:
    from prometheus_client.core import GaugeMetricFamily

    clock = MockClock()
    out = tmp_path / "m.jsonl"
    host = PluginHost(PluginSettings(max_failures=2, exporters=(
        ExporterSpec(name="example_jsonl", interval_ms=1000, options={"path": str(out)}),
        ExporterSpec(name="example_raising_exporter", interval_ms=1000))))

    def collect() -> list[Any]:
        g = GaugeMetricFamily("modcoord_modules", "Registered modules.")
        g.add_metric([], 2.0)
        return [g]

    runner = ExporterRunner(host, collect, now=clock.monotonic)
    try:
        runner.tick()
        assert len(out.read_text().splitlines()) == 1
        clock.advance(0.5)
        runner.tick()
        assert len(out.read_text().splitlines()) == 1  # not due yet
        clock.advance(0.5)
        runner.tick()
        lines = out.read_text().splitlines()
        assert len(lines) == 2
        assert json.loads(lines[-1]) == {"samples": [
            {"name": "modcoord_modules", "labels": {}, "value": 2.0}]}
        stats = host.statistics()
        assert stats["disabled"] == ["modcoord.exporters:example_raising_exporter"]
        assert stats["guards"]["modcoord.exporters:example_jsonl"]["failures"] == 0
    finally:
        runner.stop()
        host.close()


def test_the_otlp_exporter_records_gauges_and_counters_in_the_sdk() -> None:
    pytest.importorskip("opentelemetry.sdk.metrics")
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from modcoord.supervisor.daemon.otlp import OtlpExporter

    reader = InMemoryMetricReader()
    exporter = OtlpExporter({"service_name": "t"}, reader=reader)
    exporter.export([
        MetricSample("modcoord_cache_hits_total", "counter", {}, 5.0, "hits", ""),
        MetricSample("modcoord_actor_up", "gauge", {"actor": "cache"}, 1.0, "up", ""),
    ])
    data = reader.get_metrics_data()
    assert data is not None
    metrics: dict[str, Any] = {m.name: m for rm in data.resource_metrics
                               for sm in rm.scope_metrics for m in sm.metrics}
    hits: list[Any] = list(metrics["modcoord_cache_hits"].data.data_points)
    assert [p.value for p in hits] == [5.0] and metrics["modcoord_cache_hits"].data.is_monotonic
    up: list[Any] = list(metrics["modcoord_actor_up"].data.data_points)
    assert [(dict(p.attributes), p.value) for p in up] == [({"actor": "cache"}, 1.0)]
    with pytest.raises(ValueError, match="unknown option"):
        OtlpExporter({"endpont": "x"})
    exporter.close()


def test_a_disabled_plugin_stays_off_until_the_plugin_settings_change() -> None:
    first = PluginSettings(insight_rules=("example_raising_rule",), max_failures=1)
    host = PluginHost(first)
    try:
        (rule,) = host.insight_rules()
        with pytest.raises(PluginError):
            rule.guard.call(rule.obj.read, None, None)
        assert host.statistics()["disabled"] == ["modcoord.insight_rules:example_raising_rule"]
        host.configure(PluginSettings(insight_rules=("example_raising_rule",), max_failures=1))
        assert host.statistics()["disabled"]  # equal settings: nothing changes
        host.configure(first.model_copy(update={"max_failures": 2}))
        stats = host.statistics()
        assert stats["disabled"] == [] and stats["failures"] == 0
        assert host.insight_rules()[0].obj is not None
    finally:
        host.close()
