"""The daemon's Prometheus metrics, on ``prometheus_client``.

:class:`Exposition` holds a private ``CollectorRegistry`` with two collectors: a
:class:`StatusCollector` that turns the status document (the dict ``modcoord status --json``
prints) and the shared :class:`~modcoord.actors.shared.metrics.MetricsRegistry`'s histograms
into metric families, and ``prometheus_client``'s ``ProcessCollector`` (the standard
``process_*`` metrics). :data:`METRICS` is the one table of every ``modcoord_*`` family
(name, type, unit, labels, help): docs/REFERENCE.md lists the same table and a test keeps
them equal.

Conventions: base units (``_seconds``, ``_bytes``, ``_ratio``), counters end in ``_total``,
actors, modes, causes and reasons are labels; histograms carry exact ``le`` buckets
(:data:`~modcoord.actors.histogram.PROMETHEUS_BUCKETS_S`). Missing or malformed status keys
leave their samples out, never fail.

:meth:`Exposition.encode` picks the text format or, when the scraper's ``Accept`` asks for
it, OpenMetrics (ending ``# EOF``); the HTTP endpoint that serves it is
:class:`~modcoord.supervisor.daemon.metrics_endpoint.MetricsHTTPServer`. Only the daemon
imports this module: the client library never loads ``prometheus_client``.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.openmetrics.exposition import (
    CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector

from modcoord.actors.histogram import LatencyHistogram
from modcoord.actors.modes import MODES
from modcoord.actors.shared.metrics import MetricsRegistry
from modcoord.supervisor.daemon.exposition_adaptive import adaptive_families
from modcoord.supervisor.daemon.exposition_engine import ENGINE_FAMILIES, engine_families
from modcoord.supervisor.protocol.calls import PROTOCOL_VERSION
from modcoord.supervisor.version import VERSION

__all__ = [
    "CONTENT_TYPE",
    "METRICS",
    "OPENMETRICS_CONTENT_TYPE",
    "Exposition",
    "MetricSpec",
    "StatusCollector",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The text format's content type (what ``metrics`` and a plain scrape get)."""

Kind = Literal["gauge", "counter", "histogram", "summary", "info"]


@dataclass(frozen=True)
class MetricSpec:
    """One exported family: ``name`` as it appears in the text format (counters with
    ``_total``, the info metric with ``_info``), its type, unit (``""`` for plain counts
    and 0/1 flags) and label names."""

    name: str
    kind: Kind
    unit: str
    labels: tuple[str, ...]
    help: str


_TABLE: tuple[MetricSpec, ...] = (
    MetricSpec("modcoord_build_info", "info", "", ("version", "protocol_version", "python"),
               "The daemon's version, wire protocol version and Python version (value 1)."),
    MetricSpec("modcoord_uptime_seconds", "gauge", "seconds", (),
               "Seconds since the daemon started."),
    MetricSpec("modcoord_mode", "gauge", "", ("mode",),
               "The current system mode (1 for the current one, 0 for the others)."),
    MetricSpec("modcoord_coordinating", "gauge", "", (),
               "1 while the daemon accepts and coordinates work (0 while stopping)."),
    MetricSpec("modcoord_modules", "gauge", "", (), "Registered modules."),
    MetricSpec("modcoord_config_last_reload_ok", "gauge", "", (),
               "1 if the last config reload was applied or unchanged, 0 if it was rejected."),
    MetricSpec("modcoord_config_reloads_total", "counter", "", ("result",),
               "Config reloads by result (ok: applied, rejected, skipped: unchanged)."),
    MetricSpec("modcoord_actor_up", "gauge", "", ("actor",),
               "1 if the actor is alive, else 0."),
    MetricSpec("modcoord_actor_restarts_total", "counter", "", ("actor",),
               "Restarts of the actor by the supervisor."),
    MetricSpec("modcoord_actor_message_handling_seconds", "histogram", "seconds", ("actor",),
               "Time the actor spent handling each message."),
    MetricSpec("modcoord_coordination_seconds", "histogram", "seconds", (),
               "Coordinate request to result, in the daemon."),
    MetricSpec("modcoord_coordination_recent_seconds", "summary", "seconds", (),
               "Coordination latency quantiles over the recent window (monitor.window_s; "
               "NaN when it is empty); _count and _sum since start."),
    MetricSpec("modcoord_publish_to_delivery_seconds", "histogram", "seconds", (),
               "Publish accepted to batch handed to the subscriber's connection."),
    MetricSpec("modcoord_debounce_lateness_seconds", "histogram", "seconds", (),
               "How late debounce timers fired after their deadline."),
    MetricSpec("modcoord_memory_usage_bytes", "gauge", "bytes", (),
               "Resident memory of the daemon, as the memory manager reads it."),
    MetricSpec("modcoord_memory_limit_bytes", "gauge", "bytes", (),
               "Resident memory above which the memory manager cleans up (memory.max_rss_mb)."),
    MetricSpec("modcoord_memory_modules_swept", "gauge", "", (),
               "Registered modules whose subscriptions are removed for inactivity."),
    MetricSpec("modcoord_memory_cleanups_total", "counter", "", ("reason",),
               "Memory cleanups run, by reason (interval, pressure, forced)."),
    MetricSpec("modcoord_active_subscriptions", "gauge", "", (),
               "Active module subscriptions."),
    MetricSpec("modcoord_cache_hit_ratio", "gauge", "ratio", (),
               "Share of coordinate requests answered from the cache (0..1)."),
    MetricSpec("modcoord_cache_entries", "gauge", "", (), "Entries in the coordination cache."),
    MetricSpec("modcoord_cache_max_entries", "gauge", "", (),
               "Capacity of the coordination cache."),
    MetricSpec("modcoord_cache_inflight", "gauge", "", (), "Coordinations being computed now."),
    MetricSpec("modcoord_cache_hits_total", "counter", "", (), "Coordination cache hits."),
    MetricSpec("modcoord_cache_misses_total", "counter", "", (), "Coordination cache misses."),
    MetricSpec("modcoord_cache_evictions_total", "counter", "", ("cause",),
               "Entries removed from the coordination cache, by cause."),
    MetricSpec("modcoord_cache_background_total", "counter", "", ("kind", "result"),
               "Background computations (refresh-ahead, pre-warm) ended, by kind and result."),
    MetricSpec("modcoord_cache_refresh_skipped_total", "counter", "", (),
               "Refreshes due but passed over: cache.refresh_ahead.max_in_flight were running."),
    MetricSpec("modcoord_batch_queue_pending", "gauge", "", (),
               "Updates waiting in the batch queue."),
    MetricSpec("modcoord_batch_queue_capacity", "gauge", "", (),
               "Capacity of the batch queue (batch.max_queue)."),
    MetricSpec("modcoord_batch_queue_rejected_total", "counter", "", (),
               "Publishes refused because the batch queue was full."),
    MetricSpec("modcoord_batch_size_mean", "gauge", "", (),
               "Mean updates per batch sent out since start."),
    MetricSpec("modcoord_batcher_busy_seconds_total", "counter", "seconds", (),
               "CPU time the batcher spent ordering and delivering batches; "
               "rate(modcoord_batcher_updates_total) / rate(this) is updates per second "
               "of batching work."),
    MetricSpec("modcoord_batcher_batches_total", "counter", "", (), "Batches sent out."),
    MetricSpec("modcoord_batcher_updates_total", "counter", "", (),
               "Updates sent out in batches."),
    MetricSpec("modcoord_batcher_deliveries_total", "counter", "", (),
               "Batches handed to subscribers (one per subscriber per batch)."),
    MetricSpec("modcoord_batcher_delivery_errors_total", "counter", "", (),
               "Deliveries to subscribers that failed."),
    MetricSpec("modcoord_undeliverable_updates_total", "counter", "", (),
               "Updates that could not be delivered to a subscriber."),
    MetricSpec("modcoord_debouncer_pending", "gauge", "", (),
               "Keys with an update pending in the debouncer."),
    MetricSpec("modcoord_debouncer_received_total", "counter", "", (),
               "Updates received by the debouncer."),
    MetricSpec("modcoord_debouncer_emitted_total", "counter", "", (),
               "Updates the debouncer handed to the batcher."),
    MetricSpec("modcoord_debouncer_collapsed_total", "counter", "", (),
               "Updates replaced by a later publish for the same key."),
    MetricSpec("modcoord_debouncer_cancelled_total", "counter", "", (),
               "Pending updates dropped by an explicit cancel."),
    MetricSpec("modcoord_debouncer_undelivered_total", "counter", "", (),
               "Updates the debouncer could not hand to the batcher."),
    MetricSpec("modcoord_latency_seconds", "histogram", "seconds", ("histogram",),
               "Any other histogram of the metrics registry, by its name."),
    MetricSpec("modcoord_events_total", "counter", "", ("event",),
               "Counters of the metrics registry, by name."),
    MetricSpec("modcoord_module_metric", "gauge", "", ("module", "name"),
               "A module's own get_performance_metrics() value, by module and metric name "
               "(numbers only, at most monitor.module_metrics_max per module)."),
    MetricSpec("modcoord_module_metrics_dropped_total", "counter", "", ("reason",),
               "Module metric values not kept, by reason (non_numeric, over_cap, timeout, "
               "error)."),
    MetricSpec("modcoord_plugin_calls_total", "counter", "", ("plugin",),
               "Calls made to a plugin (kind:name)."),
    MetricSpec("modcoord_plugin_failures_total", "counter", "", ("plugin",),
               "Plugin calls that raised, timed out or returned something unusable."),
    MetricSpec("modcoord_plugin_disabled", "gauge", "", ("plugin",),
               "1 if the plugin is disabled after plugins.max_failures failures in a row."),
    MetricSpec("modcoord_adaptive_enabled", "gauge", "", (),
               "1 while any actor adapts its parameters (adaptive.enabled, not MANUAL)."),
    MetricSpec("modcoord_adaptive_effective_seconds", "gauge", "seconds", ("parameter",),
               "A delay parameter in force now (debounce.delay, batch.window)."),
    MetricSpec("modcoord_adaptive_configured_seconds", "gauge", "seconds", ("parameter",),
               "A delay parameter as the mode file gives it (debounce.delay, batch.window)."),
    MetricSpec("modcoord_adaptive_effective", "gauge", "", ("parameter",),
               "A count or factor parameter in force now (batch.max_size, cache.max_entries, "
               "delays.widen)."),
    MetricSpec("modcoord_adaptive_configured", "gauge", "", ("parameter",),
               "A count or factor parameter as the config gives it (batch.max_size, "
               "cache.max_entries, delays.widen)."),
    MetricSpec("modcoord_adaptive_pinned", "gauge", "", ("parameter",),
               "1 if the parameter is held at a configured bound, else 0 (parameter as in "
               "the effective families)."),
    MetricSpec("modcoord_adaptive_memory_strategy", "gauge", "", ("strategy",),
               "The memory strategy in force (1 for it, 0 for the others)."),
    MetricSpec("modcoord_resources_memory_level", "gauge", "", (),
               "Memory-pressure escalation steps taken now (0: none, at most 2; "
               "adaptive.resources)."),
    MetricSpec("modcoord_resources_delays_widened", "gauge", "", (),
               "1 while debounce delays and batch windows are widened for CPU pressure."),
    MetricSpec("modcoord_resources_cpu_ratio", "gauge", "ratio", (),
               "The daemon's CPU use over adaptive.resources.cpu_window_ms, as a share of "
               "the CPUs it may use."),
    MetricSpec("modcoord_resources_available_memory_bytes", "gauge", "bytes", (),
               "The machine's available memory at the resource governor's last check."),
    MetricSpec("modcoord_resources_cache_evicted_total", "counter", "", (),
               "Cache entries evicted by a memory-pressure cap."),
    MetricSpec("modcoord_resources_escalations_total", "counter", "", (),
               "Memory-pressure steps up."),
    MetricSpec("modcoord_resources_relaxations_total", "counter", "", (),
               "Memory-pressure steps down."),
    *(MetricSpec(*family) for family in ENGINE_FAMILIES),
)

METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in _TABLE}
"""Every ``modcoord_*`` family the daemon exports, by name (docs/REFERENCE.md: Metrics)."""

# Registry histograms with a family of their own; ``actor_<name>`` ones go to
# ``modcoord_actor_message_handling_seconds{actor}``, any other to ``modcoord_latency_seconds``.
_HISTOGRAM_FAMILIES = {
    "coordination": "modcoord_coordination_seconds",
    "publish_to_delivery": "modcoord_publish_to_delivery_seconds",
    "debounce_lateness": "modcoord_debounce_lateness_seconds",
}
_ACTOR_HISTOGRAM_PREFIX = "actor_"
_SUMMARY_QUANTILES = (0.5, 0.95, 0.99)


# --------------------------------------------------------------------------- the collector


def _number(value: Any) -> float | None:
    """A sample value, or None when ``value`` is not a number (bools count 0/1)."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _section(status: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = status.get(key)
    return value if isinstance(value, Mapping) else {}


def _family(name: str) -> Metric:
    spec = METRICS[name]
    labels = list(spec.labels)
    if spec.kind == "gauge":
        return GaugeMetricFamily(name, spec.help, labels=labels, unit=spec.unit)
    if spec.kind == "counter":
        return CounterMetricFamily(name, spec.help, labels=labels, unit=spec.unit)
    if spec.kind == "histogram":
        return HistogramMetricFamily(name, spec.help, labels=labels, unit=spec.unit)
    if spec.kind == "info":
        return InfoMetricFamily(name[:-len("_info")], spec.help, labels=labels)
    return Metric(name, spec.help, "summary", spec.unit)


class _Families:
    """Collects samples by family name; only families with samples are yielded."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def get(self, name: str) -> Metric:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = _family(name)
        return family

    def add(self, name: str, value: Any, *label_values: str) -> None:
        """Add one gauge or counter sample; a non-numeric ``value`` is left out."""
        number = _number(value)
        if number is None:
            return
        family = self.get(name)
        assert isinstance(family, (GaugeMetricFamily, CounterMetricFamily))
        family.add_metric(list(label_values), number)

    def __iter__(self) -> Iterator[Metric]:
        return (f for f in self._families.values() if f.samples)


def _status_families(fam: _Families, status: Mapping[str, Any]) -> None:
    fam.add("modcoord_uptime_seconds", status.get("uptime_s"))
    mode = status.get("mode")
    if isinstance(mode, str) and mode:
        for m in MODES if mode in MODES else (*MODES, mode):
            fam.add("modcoord_mode", m == mode, m)
    fam.add("modcoord_coordinating", status.get("is_coordinating"))
    modules = status.get("modules")
    fam.add("modcoord_modules", len(modules) if isinstance(modules, (list, dict)) else modules)
    if "last_reload_error" in status:
        fam.add("modcoord_config_last_reload_ok", status.get("last_reload_error") is None)
    reloads = _section(status, "reloads")
    for result in ("ok", "rejected", "skipped"):
        fam.add("modcoord_config_reloads_total", reloads.get(result), result)

    actors = _section(status, "actors")
    for name in sorted(actors):
        info = actors[name]
        if isinstance(info, Mapping):
            fam.add("modcoord_actor_up", info.get("alive"), str(name))
            fam.add("modcoord_actor_restarts_total", info.get("restarts"), str(name))

    perf = _section(status, "performance_metrics")
    fam.add("modcoord_memory_usage_bytes", perf.get("memory_usage_bytes"))
    fam.add("modcoord_active_subscriptions", perf.get("active_subscriptions"))
    fam.add("modcoord_cache_hit_ratio", perf.get("cache_hit_rate"))

    cache = _section(status, "cache_stats")
    fam.add("modcoord_cache_entries", cache.get("size"))
    fam.add("modcoord_cache_max_entries", cache.get("max_size"))
    fam.add("modcoord_cache_inflight", cache.get("inflight"))
    fam.add("modcoord_cache_hits_total", cache.get("hits"))
    fam.add("modcoord_cache_misses_total", cache.get("misses"))
    evictions = cache.get("evictions")
    if isinstance(evictions, Mapping):  # {"cause": n}
        for cause in sorted(evictions):
            fam.add("modcoord_cache_evictions_total", evictions[cause], str(cause))
    else:  # flat counters evictions_<cause>, or one total (counted as size evictions)
        flat = sorted(k for k in cache if k.startswith("evictions_"))
        for key in flat:
            fam.add("modcoord_cache_evictions_total", cache[key], key[len("evictions_"):])
        if not flat:
            fam.add("modcoord_cache_evictions_total", evictions, "size")

    for kind, stored, failed in (("refresh", "refreshes", "refresh_failures"),
                                 ("prewarm", "prewarmed", "prewarm_failures")):
        fam.add("modcoord_cache_background_total", cache.get(stored), kind, "stored")
        fam.add("modcoord_cache_background_total", cache.get(failed), kind, "failed")
    fam.add("modcoord_cache_refresh_skipped_total", cache.get("refresh_skipped_budget"))

    queue = _section(status, "batch_queue")
    fam.add("modcoord_batch_queue_pending", queue.get("pending"))
    fam.add("modcoord_batch_queue_capacity", queue.get("max_queue", queue.get("capacity")))
    fam.add("modcoord_batch_queue_rejected_total", queue.get("rejected"))

    batcher = _section(status, "batcher")
    fam.add("modcoord_batch_size_mean", batcher.get("mean_size"))
    fam.add("modcoord_batcher_busy_seconds_total", batcher.get("busy_s"))
    for key in ("batches", "updates", "deliveries", "delivery_errors"):
        fam.add(f"modcoord_batcher_{key}_total", batcher.get(key))
    fam.add("modcoord_undeliverable_updates_total", status.get("undeliverable"))

    debouncer = _section(status, "debouncer")
    fam.add("modcoord_debouncer_pending", debouncer.get("pending"))
    for key in ("received", "emitted", "collapsed", "cancelled", "undelivered"):
        fam.add(f"modcoord_debouncer_{key}_total", debouncer.get(key))

    memory = _section(status, "memory")
    fam.add("modcoord_memory_limit_bytes", memory.get("max_rss_bytes"))
    fam.add("modcoord_memory_modules_swept", memory.get("modules_swept"))
    cleanups = memory.get("cleanups")
    pairs: list[tuple[Any, Any]] = []
    if isinstance(cleanups, Mapping):
        pairs = sorted(cleanups.items())
    elif isinstance(cleanups, (list, tuple)):
        pairs = [(p[0], p[1]) for p in cleanups if isinstance(p, (list, tuple)) and len(p) == 2]
    for reason, n in pairs:
        fam.add("modcoord_memory_cleanups_total", n, str(reason))

    module_metrics = _section(status, "module_metrics")
    per_module = _section(module_metrics, "modules")
    for module in sorted(per_module):
        values = per_module[module]
        if isinstance(values, Mapping):
            for name in sorted(values):
                fam.add("modcoord_module_metric", values[name], str(module), str(name))
    counts = _section(module_metrics, "statistics")
    for reason, key in (("non_numeric", "dropped_non_numeric"), ("over_cap", "dropped_over_cap"),
                        ("timeout", "timeouts"), ("error", "errors")):
        fam.add("modcoord_module_metrics_dropped_total", counts.get(key), reason)

    guards = _section(_section(status, "plugins"), "guards")
    for plugin in sorted(guards):
        g = guards[plugin]
        if isinstance(g, Mapping):
            fam.add("modcoord_plugin_calls_total", g.get("calls"), str(plugin))
            fam.add("modcoord_plugin_failures_total", g.get("failures"), str(plugin))
            fam.add("modcoord_plugin_disabled", g.get("disabled"), str(plugin))

    adaptive_families(fam.add, _section(status, "adaptive"))
    engine_families(fam.add, _section(status, "engine"))


def _add_histogram(fam: _Families, name: str, hist: LatencyHistogram,
                   *label_values: str) -> None:
    cumulative, count, total = hist.cumulative_buckets()
    buckets = [(repr(le), n) for le, n in cumulative] + [("+Inf", count)]
    family = fam.get(name)
    assert isinstance(family, HistogramMetricFamily)
    family.add_metric(list(label_values), buckets, total)


def _registry_families(fam: _Families, registry: MetricsRegistry) -> None:
    histograms = registry.histograms()
    for raw, hist in sorted(histograms.items()):
        if raw in _HISTOGRAM_FAMILIES:
            _add_histogram(fam, _HISTOGRAM_FAMILIES[raw], hist)
        elif raw.startswith(_ACTOR_HISTOGRAM_PREFIX):
            _add_histogram(fam, "modcoord_actor_message_handling_seconds", hist,
                           raw[len(_ACTOR_HISTOGRAM_PREFIX):])
        else:
            _add_histogram(fam, "modcoord_latency_seconds", hist, raw)
    coordination = histograms.get("coordination")
    if coordination is not None:
        name = "modcoord_coordination_recent_seconds"
        summary = fam.get(name)
        recent, total = coordination.recent(), coordination.total()
        for q, ms in zip(_SUMMARY_QUANTILES, (recent.p50, recent.p95, recent.p99), strict=True):
            summary.add_sample(name, {"quantile": repr(q)},
                               ms / 1000.0 if recent.count else math.nan)
        summary.add_sample(name + "_count", {}, float(total.count))
        summary.add_sample(name + "_sum", {}, total.mean * total.count / 1000.0)
    for raw, value in sorted(registry.counters().items()):
        fam.add("modcoord_events_total", value, raw)


class StatusCollector(Collector):
    """A ``prometheus_client`` collector over the status document and the histograms.

    Args:
        status: returns the status document; called once per collection. If it raises,
            the collection fails with that error (the HTTP endpoint answers 500 and logs).
        registry: the shared metrics registry (its histograms and counters), or None.
    """

    def __init__(self, status: Callable[[], Mapping[str, Any]],
                 registry: MetricsRegistry | None) -> None:
        self._status = status
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        fam = _Families()
        info = fam.get("modcoord_build_info")
        assert isinstance(info, InfoMetricFamily)
        info.add_metric([], {"version": VERSION, "protocol_version": str(PROTOCOL_VERSION),
                             "python": platform.python_version()})
        _status_families(fam, self._status() or {})
        if self._registry is not None:
            _registry_families(fam, self._registry)
        yield from fam


class Exposition:
    """The daemon's metrics: the status collector and the ``process_*`` metrics in a
    registry of their own (never ``prometheus_client``'s global one).

    Args:
        status: see :class:`StatusCollector`.
        registry: see :class:`StatusCollector`.
    """

    def __init__(self, status: Callable[[], Mapping[str, Any]],
                 registry: MetricsRegistry | None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(status, registry))
        ProcessCollector(registry=self.registry)

    def text(self) -> str:
        """The Prometheus text format (0.0.4). Raises what the status callable raises."""
        return generate_latest(self.registry).decode("utf-8")

    def openmetrics(self) -> str:
        """The OpenMetrics text format, ending ``# EOF``."""
        body: bytes = generate_openmetrics(self.registry)  # type: ignore[no-untyped-call]
        return body.decode("utf-8")

    def encode(self, accept: str) -> tuple[bytes, str]:
        """``(body, content type)`` for a scraper's ``Accept`` header: OpenMetrics when
        it asks for ``application/openmetrics-text``, else the text format."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
