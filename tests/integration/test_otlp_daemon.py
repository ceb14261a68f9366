"""The ``otlp`` exporter (the ``otel`` extra) delivering a real daemon's metrics to a real
OTLP/HTTP receiver: an ``http.server`` in the test decoding the protobuf requests with
``opentelemetry-proto``. The SDK's in-memory reader: ``unit/test_plugins.py``."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from daemon_harness import DaemonFactory, wait_for

pb = pytest.importorskip(
    "opentelemetry.proto.collector.metrics.v1.metrics_service_pb2",
    reason="the otel extra: pip install 'modcoord[otel]' (the dev extra has it)")


class _Receiver:
    """An OTLP/HTTP metrics receiver: every request decoded, its points kept by name."""

    def __init__(self) -> None:
        self.requests = 0
        self.points: dict[str, list[tuple[dict[str, str], float]]] = {}
        self.resource: dict[str, str] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = pb.ExportMetricsServiceRequest()
                request.ParseFromString(body)
                receiver.take(request)
                reply = pb.ExportMetricsServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def take(self, request: Any) -> None:
        with self.lock:
            self.requests += 1
            for rm in request.resource_metrics:
                self.resource = {a.key: a.value.string_value for a in rm.resource.attributes}
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        data = m.gauge if m.HasField("gauge") else m.sum
                        self.points[m.name] = [
                            ({a.key: a.value.string_value for a in p.attributes},
                             p.as_double if p.HasField("as_double") else float(p.as_int))
                            for p in data.data_points]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/metrics"


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    r = _Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_the_otlp_exporter_pushes_a_real_daemons_metrics_to_a_receiver(
        daemon_factory: DaemonFactory, receiver: _Receiver) -> None:
    daemon = daemon_factory(configs={"hybrid": {"plugins": {"exporters": [
        {"name": "otlp", "interval_ms": 200,
         "options": {"endpoint": receiver.url, "service_name": "modcoord-test"}}]}}})
    with daemon.connect() as client:
        for n in range(3):
            client.coordinate("HYBRID", {"n": n % 2}).get(10)

        def delivered() -> bool:
            with receiver.lock:
                hits = receiver.points.get("modcoord_cache_hits") or []
                return receiver.requests >= 2 and bool(hits) and hits[0][1] >= 1.0

        wait_for(delivered, timeout=15, interval=0.1, message="metrics at the receiver")
    with receiver.lock:
        points = dict(receiver.points)
        resource = dict(receiver.resource)
    assert resource["service.name"] == "modcoord-test"
    assert points["modcoord_cache_hits"] == [({}, 1.0)]  # 3 lookups, 2 contexts: 1 hit
    assert points["modcoord_cache_misses"] == [({}, 2.0)]
    modes = {labels["mode"]: value for labels, value in points["modcoord_mode"]}
    assert modes == {"MANUAL": 0.0, "HYBRID": 1.0, "FULLY_AUTO": 0.0}
    assert points["modcoord_memory_usage_bytes"][0][1] > 1_000_000
    plugins = daemon.cli("status", "--json")
    assert '"modcoord.exporters:otlp"' in plugins.out
