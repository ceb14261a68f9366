"""Prometheus text exposition (format 0.0.4) of the daemon's status and latency histograms.

:func:`render_metrics` turns the dict that ``modcoord status --json`` prints, plus the shared
:class:`~modcoord.actors.shared.metrics.MetricsRegistry`, into the text format. Every name starts
with ``modcoord_`` and carries its unit (``_seconds``, ``_bytes``, ``_ratio``; counters end
in ``_total``); labels are bounded (actor name, mode, eviction cause, cleanup reason,
quantile, reload result, histogram bucket). Missing status keys leave their metrics out.

:class:`MetricsHTTPServer` optionally serves the same text at ``GET /metrics`` on the
loopback interface for a scraper.
"""

from __future__ import annotations

import math
import re
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from loguru import logger

from modcoord.actors.modes import MODES
from modcoord.actors.shared.metrics import MetricsRegistry

__all__ = [
    "CONTENT_TYPE",
    "MetricsHTTPServer",
    "MetricsServerStatistics",
    "render_metrics",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "modcoord_"
_MODES = MODES
_NAME_RE = re.compile(r"[^a-zA-Z0-9_]")

Labels = tuple[tuple[str, str], ...]


# --------------------------------------------------------------------------- rendering


def _number(value: Any) -> float | None:
    """Return a sample value, or None when ``value`` is not a number (bools count 0/1)."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _metric_name(raw: str) -> str:
    name = _NAME_RE.sub("_", raw.strip()).strip("_").lower()
    if not name or name[0].isdigit():
        name = "x_" + name
    return name


class _Families:
    """Accumulates metric families in order; a family is written once with its HELP/TYPE."""

    def __init__(self) -> None:
        self._order: list[str] = []
        self._meta: dict[str, tuple[str, str]] = {}
        self._samples: dict[str, list[tuple[str, Labels, float]]] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._meta

    def add(self, name: str, kind: str, help_text: str, value: Any,
            labels: Labels = (), suffix: str = "") -> None:
        """Add one sample of family ``name``; non-numeric values are left out."""
        number = _number(value)
        if number is None:
            return
        if name not in self._meta:
            self._order.append(name)
            self._meta[name] = (kind, help_text)
            self._samples[name] = []
        self._samples[name].append((suffix, labels, number))

    def render(self) -> str:
        out: list[str] = []
        for name in self._order:
            kind, help_text = self._meta[name]
            out.append(f"# HELP {name} {_escape_help(help_text)}")
            out.append(f"# TYPE {name} {kind}")
            for suffix, labels, value in self._samples[name]:
                label_text = ""
                if labels:
                    label_text = "{" + ",".join(
                        f'{k}="{_escape_label(v)}"' for k, v in labels) + "}"
                out.append(f"{name}{suffix}{label_text} {_format_value(value)}")
        return "\n".join(out) + "\n" if out else ""


def _section(status: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = status.get(key)
    return value if isinstance(value, Mapping) else {}


def _count(value: Any) -> Any:
    if isinstance(value, (list, tuple, set, dict)):
        return len(value)
    return value


def _render_status(fam: _Families, status: Mapping[str, Any]) -> None:
    fam.add(PREFIX + "uptime_seconds", "gauge", "Seconds since the daemon started.",
            status.get("uptime_s"))
    mode = status.get("mode")
    if isinstance(mode, str) and mode:
        modes = _MODES if mode in _MODES else (*_MODES, mode)
        for m in modes:
            fam.add(PREFIX + "mode", "gauge",
                    "The current system mode (1 for the current one, 0 for the others).",
                    m == mode, (("mode", m),))
    fam.add(PREFIX + "coordinating", "gauge",
            "1 while the daemon accepts and coordinates work (0 while stopping).",
            status.get("is_coordinating"))
    fam.add(PREFIX + "modules", "gauge", "Registered modules.", _count(status.get("modules")))
    if "last_reload_error" in status:
        fam.add(PREFIX + "config_last_reload_ok", "gauge",
                "1 if the last config reload was applied or unchanged, 0 if it was rejected.",
                status.get("last_reload_error") is None)

    actors = _section(status, "actors")
    for name in sorted(actors):
        info = actors[name]
        if isinstance(info, Mapping):
            fam.add(PREFIX + "actor_up", "gauge", "1 if the actor is alive, else 0.",
                    info.get("alive"), (("actor", str(name)),))
    for name in sorted(actors):
        info = actors[name]
        if isinstance(info, Mapping):
            fam.add(PREFIX + "actor_restarts_total", "counter",
                    "Restarts of the actor by the supervisor.", info.get("restarts"),
                    (("actor", str(name)),))

    perf = _section(status, "performance_metrics")
    latency = perf.get("coordination_latency_ms")
    if isinstance(latency, Mapping):
        for q, key in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99")):
            ms = _number(latency.get(key))
            fam.add(PREFIX + "coordination_latency_recent_seconds", "gauge",
                    "Coordination latency percentiles over the monitor's recent window.",
                    None if ms is None else ms / 1000.0, (("quantile", q),))
    fam.add(PREFIX + "memory_usage_bytes", "gauge", "Resident memory of the daemon.",
            perf.get("memory_usage_bytes"))
    fam.add(PREFIX + "active_subscriptions", "gauge", "Active module subscriptions.",
            perf.get("active_subscriptions"))
    fam.add(PREFIX + "cache_hit_ratio", "gauge",
            "Share of coordinate requests answered from the cache (0..1).",
            perf.get("cache_hit_rate"))
    fam.add(PREFIX + "batch_efficiency", "gauge",
            "Batch efficiency as status reports it (updates sent per millisecond of batching "
            "work).", perf.get("batch_efficiency"))

    cache = _section(status, "cache_stats")
    fam.add(PREFIX + "cache_entries", "gauge", "Entries in the coordination cache.",
            cache.get("size"))
    fam.add(PREFIX + "cache_max_entries", "gauge", "Capacity of the coordination cache.",
            cache.get("max_size"))
    fam.add(PREFIX + "cache_hits_total", "counter", "Coordination cache hits.",
            cache.get("hits"))
    fam.add(PREFIX + "cache_misses_total", "counter", "Coordination cache misses.",
            cache.get("misses"))
    fam.add(PREFIX + "cache_inflight", "gauge", "Coordinations being computed now.",
            cache.get("inflight"))
    evict = PREFIX + "cache_evictions_total"
    help_evict = "Entries removed from the coordination cache, by cause."
    evictions = cache.get("evictions")
    if isinstance(evictions, Mapping):  # {"cause": n}
        for cause in sorted(evictions):
            fam.add(evict, "counter", help_evict, evictions[cause], (("cause", str(cause)),))
    else:  # flat counters: evictions_<cause> (expired, size, explicit), or one total
        for key in sorted(k for k in cache if k.startswith("evictions_")):
            fam.add(evict, "counter", help_evict, cache[key],
                    (("cause", key[len("evictions_"):]),))
        if evict not in fam:
            fam.add(evict, "counter", help_evict, evictions, (("cause", "size"),))

    queue = _section(status, "batch_queue")
    fam.add(PREFIX + "batch_queue_pending", "gauge", "Updates waiting in the batch queue.",
            queue.get("pending"))
    capacity = queue.get("max_queue", queue.get("capacity"))
    fam.add(PREFIX + "batch_queue_capacity", "gauge", "Capacity of the batch queue.", capacity)
    fam.add(PREFIX + "batch_queue_rejected_total", "counter",
            "Publishes refused because the batch queue was full.", queue.get("rejected"))

    debouncer = _section(status, "debouncer")
    for key, help_text in (
        ("received", "Updates received by the debouncer."),
        ("emitted", "Updates the debouncer handed to the batcher."),
        ("collapsed", "Updates replaced by a later publish for the same key."),
        ("cancelled", "Pending updates dropped by an explicit cancel."),
        ("undelivered", "Updates the debouncer could not hand to the batcher."),
    ):
        fam.add(f"{PREFIX}debouncer_{key}_total", "counter", help_text, debouncer.get(key))
    fam.add(PREFIX + "debouncer_pending", "gauge", "Keys with an update pending in the debouncer.",
            debouncer.get("pending"))

    batcher = _section(status, "batcher")
    for key, help_text in (
        ("batches", "Batches sent out."),
        ("updates", "Updates sent out in batches."),
        ("deliveries", "Batches handed to subscribers (one per subscriber per batch)."),
        ("delivery_errors", "Deliveries to subscribers that failed."),
    ):
        fam.add(f"{PREFIX}batcher_{key}_total", "counter", help_text, batcher.get(key))
    fam.add(PREFIX + "undeliverable_updates_total", "counter",
            "Updates that could not be delivered to a subscriber.", status.get("undeliverable"))

    memory = _section(status, "memory")
    fam.add(PREFIX + "memory_limit_bytes", "gauge",
            "Resident memory above which the memory manager cleans up (memory.max_rss_mb).",
            memory.get("max_rss_bytes"))
    fam.add(PREFIX + "memory_modules_swept", "gauge",
            "Registered modules whose subscriptions are removed for inactivity.",
            memory.get("modules_swept"))
    cleanups = memory.get("cleanups")
    pairs: list[tuple[Any, Any]] = []
    if isinstance(cleanups, Mapping):
        pairs = sorted(cleanups.items())
    elif isinstance(cleanups, (list, tuple)):
        pairs = [tuple(p) for p in cleanups if isinstance(p, (list, tuple)) and len(p) == 2]
    for reason, n in pairs:
        fam.add(PREFIX + "memory_cleanups_total", "counter",
                "Memory cleanups run, by reason (interval, pressure, forced).", n,
                (("reason", str(reason)),))

    reloads = _section(status, "reloads")
    for result in ("ok", "rejected", "skipped"):
        fam.add(PREFIX + "config_reloads_total", "counter",
                "Config reloads by result (applied, rejected, unchanged).",
                reloads.get(result), (("result", result),))


def _render_registry(fam: _Families, registry: MetricsRegistry) -> None:
    for raw, value in sorted(registry.counters().items()):
        base = _metric_name(raw)
        name = PREFIX + (base if base.endswith("_total") else base + "_total")
        if name in fam:
            continue  # already exported from the status
        fam.add(name, "counter", f"Counter {raw!r} of the metrics registry.", value)
    for raw, hist in sorted(registry.histograms().items()):
        name = PREFIX + _metric_name(raw) + "_seconds"
        if name in fam:
            continue
        buckets, count, total = hist.cumulative_buckets()
        help_text = f"Latency of {raw.replace('_', ' ')}, in seconds."
        for le, cumulative in buckets:
            fam.add(name, "histogram", help_text, cumulative, (("le", repr(float(le))),),
                    "_bucket")
        fam.add(name, "histogram", help_text, count, (("le", "+Inf"),), "_bucket")
        fam.add(name, "histogram", help_text, total, (), "_sum")
        fam.add(name, "histogram", help_text, count, (), "_count")


def render_metrics(status: Mapping[str, Any] | None, registry: MetricsRegistry | None) -> str:
    """Return the Prometheus text exposition (0.0.4) of ``status`` and ``registry``.

    Args:
        status: the dict of ``modcoord status --json``; missing or malformed
            keys leave their metrics out, never fail.
        registry: the shared metrics registry; its histograms become ``histogram``
            families ``modcoord_<name>_seconds`` (sub-millisecond buckets, ``+Inf`` equal
            to ``_count``) and its counters ``modcoord_<name>_total``.

    Returns:
        The exposition text, ending with a newline (empty if there is nothing to show).
    """
    fam = _Families()
    _render_status(fam, status or {})
    if registry is not None:
        _render_registry(fam, registry)
    return fam.render()


# --------------------------------------------------------------------------- HTTP endpoint


@dataclass(frozen=True)
class MetricsServerStatistics:
    """Counts of the metrics endpoint: scrapes served, render failures, other requests."""

    scrapes: int
    errors: int
    not_found: int
    port: int | None


class MetricsHTTPServer:
    """Serves ``GET /metrics`` (the text from ``render()``) from a daemon thread.

    Args:
        host: the address to bind: a loopback address (``127.0.0.1``, ``localhost``, ``::1``).
        port: the port; 0 picks a free one (see :meth:`start`'s result).
        render: produces the exposition text; called once per scrape, in a request thread.
            If it raises, the scrape gets a 500 and the error is logged.
    """

    def __init__(self, host: str, port: int, render: Callable[[], str]) -> None:
        self.host = host
        self.port = port
        self._render = render
        self._lock = threading.Lock()
        self._scrapes = 0
        self._errors = 0
        self._not_found = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Bind and start serving; return the bound port.

        Raises:
            OSError: if the address cannot be bound (port in use, bad host).
            RuntimeError: if already started.
        """
        if self._server is not None:
            raise RuntimeError("metrics server already started")
        owner = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "modcoord-metrics"

            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    owner._count("not_found")
                    self._send(404, b"not found; try /metrics\n", "text/plain; charset=utf-8")
                    return
                try:
                    body = owner._render().encode("utf-8")
                except Exception as exc:
                    owner._count("errors")
                    logger.bind(actor="daemon").opt(exception=exc).error(
                        "metrics rendering failed")
                    self._send(500, b"metrics rendering failed\n", "text/plain; charset=utf-8")
                    return
                owner._count("scrapes")
                self._send(200, body, CONTENT_TYPE)

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes are not worth a log line each

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True
            allow_reuse_address = True

        server = Server((self.host, self.port), Handler)
        self._server = server
        bound = int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="modcoord-metrics-http", daemon=True)
        self._thread.start()
        self.port = bound
        logger.bind(actor="daemon", host=self.host, port=bound).info(
            "metrics endpoint listening")
        return bound

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def _count(self, what: str) -> None:
        with self._lock:
            if what == "scrapes":
                self._scrapes += 1
            elif what == "errors":
                self._errors += 1
            else:
                self._not_found += 1

    def statistics(self) -> MetricsServerStatistics:
        """Return a snapshot of the endpoint's counters."""
        with self._lock:
            return MetricsServerStatistics(
                scrapes=self._scrapes, errors=self._errors, not_found=self._not_found,
                port=self.port if self._server is not None else None,
            )

