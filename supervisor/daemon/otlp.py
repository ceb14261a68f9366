"""The ``otlp`` exporter: the daemon's metrics as OpenTelemetry metrics over OTLP/HTTP.

Optional: it needs the ``otel`` extra (``pip install 'modcoord[otel]'``: the OpenTelemetry
SDK and its OTLP/HTTP exporter). Enabled in a mode file::

    plugins:
      exporters:
        - name: otlp
          interval_ms: 10000
          options:
            endpoint: http://127.0.0.1:4318/v1/metrics   # the default
            service_name: modcoord                       # resource service.name
            timeout_s: 5                                 # one HTTP export

Each ``modcoord_*`` gauge becomes an OpenTelemetry observable gauge and each counter an
observable (cumulative, monotonic) counter of the same name without ``_total``, with the
Prometheus labels as attributes. Every :meth:`OtlpExporter.export` records the values and
pushes them at once (``force_flush``); the SDK's own timer is off.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from modcoord.actors.plugins import MetricSample
from modcoord.supervisor.version import VERSION

__all__ = ["DEFAULT_ENDPOINT", "OtlpExporter"]

DEFAULT_ENDPOINT = "http://127.0.0.1:4318/v1/metrics"
"""Where the collector's OTLP/HTTP receiver listens by default."""
_OPTIONS = frozenset({"endpoint", "service_name", "timeout_s"})


class OtlpExporter:
    """Push metrics to an OTLP/HTTP endpoint (the ``otlp`` entry point).

    Args:
        options: ``endpoint``, ``service_name``, ``timeout_s`` (see the module doc).
        reader: a metric reader to use instead of the OTLP one (tests pass the SDK's
            ``InMemoryMetricReader``).

    Raises:
        ValueError: an unknown option or a value of the wrong type (naming it).
        RuntimeError: the ``otel`` extra is not installed (saying how to install it).
    """

    def __init__(self, options: Mapping[str, Any] | None = None, *, reader: Any = None) -> None:
        opts = dict(options or {})
        unknown = sorted(set(opts) - _OPTIONS)
        if unknown:
            raise ValueError(f"otlp exporter: unknown option(s) {', '.join(unknown)}; "
                             f"expected {', '.join(sorted(_OPTIONS))}")
        endpoint = opts.get("endpoint", DEFAULT_ENDPOINT)
        service = opts.get("service_name", "modcoord")
        timeout = opts.get("timeout_s", 5.0)
        if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"otlp exporter: endpoint must be an http(s) URL, not {endpoint!r}")
        if not isinstance(service, str) or not service:
            raise ValueError("otlp exporter: service_name must be a non-empty string")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
                0 < timeout < math.inf):
            raise ValueError(f"otlp exporter: timeout_s must be a positive number, not {timeout!r}")
        try:
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
            from opentelemetry.sdk.resources import Resource
        except ImportError as exc:
            raise RuntimeError("the otlp exporter needs the OpenTelemetry SDK: "
                               "pip install 'modcoord[otel]'") from exc
        if reader is None:
            try:
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                    OTLPMetricExporter,
                )
            except ImportError as exc:
                raise RuntimeError("the otlp exporter needs the OTLP/HTTP exporter: "
                                   "pip install 'modcoord[otel]'") from exc
            reader = PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=endpoint, timeout=float(timeout)),
                export_interval_millis=math.inf)
        self.endpoint = endpoint
        self._timeout_ms = float(timeout) * 1000.0
        self._reader = reader
        self._provider = MeterProvider(
            metric_readers=[reader],
            resource=Resource.create({"service.name": service, "service.version": VERSION}))
        self._meter = self._provider.get_meter("modcoord", VERSION)
        self._lock = threading.Lock()
        self._latest: dict[str, list[tuple[float, dict[str, str]]]] = {}
        self._instruments: dict[str, Any] = {}

    def _observe(self, name: str) -> Any:
        from opentelemetry.metrics import CallbackOptions, Observation

        def callback(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                points = list(self._latest.get(name, ()))
            return [Observation(value, attributes) for value, attributes in points]

        return callback

    def export(self, samples: Sequence[MetricSample]) -> None:
        """Record ``samples`` and push them now.

        Raises:
            RuntimeError: the push did not succeed within ``timeout_s`` (the SDK logs why).
        """
        latest: dict[str, list[tuple[float, dict[str, str]]]] = {}
        kinds: dict[str, MetricSample] = {}
        for s in samples:
            name = s.name[:-len("_total")] if s.kind == "counter" else s.name
            latest.setdefault(name, []).append((s.value, dict(s.labels)))
            kinds.setdefault(name, s)
        with self._lock:
            self._latest = latest
        for name, s in kinds.items():
            if name in self._instruments:
                continue
            make = (self._meter.create_observable_counter if s.kind == "counter"
                    else self._meter.create_observable_gauge)
            self._instruments[name] = make(name, callbacks=[self._observe(name)],
                                           unit=s.unit, description=s.help)
        if not self._provider.force_flush(timeout_millis=self._timeout_ms):
            raise RuntimeError(f"otlp export to {self.endpoint} did not complete")

    def close(self) -> None:
        """Shut the SDK down (a last push included)."""
        self._provider.shutdown(timeout_millis=self._timeout_ms)
