"""The daemon's metrics endpoint: :class:`MetricsHTTPServer` serves ``GET /metrics`` on a
loopback address from a daemon thread, rendering the
:class:`~modcoord.supervisor.daemon.exposition.Exposition` once per scrape in the text
format or, when the scraper's ``Accept`` asks for it, in OpenMetrics (ending ``# EOF``);
:class:`MetricsServerStatistics` counts what it served. Only the daemon imports this
module, and only with ``metrics.enabled``.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from loguru import logger

from modcoord.supervisor.daemon.exposition import Exposition

__all__ = ["MetricsHTTPServer", "MetricsServerStatistics"]


@dataclass(frozen=True)
class MetricsServerStatistics:
    """Counts of the metrics endpoint: scrapes served, render failures, other requests."""

    scrapes: int
    errors: int
    not_found: int
    port: int | None


class MetricsHTTPServer:
    """Serves ``GET /metrics`` from a daemon thread, negotiating the format.

    Args:
        host: the address to bind: a loopback address (``127.0.0.1``, ``localhost``, ``::1``;
            ``metrics.host`` is validated to these).
        port: the port; 0 picks a free one (see :meth:`start`'s result).
        exposition: what to serve; rendered once per scrape, in a request thread. If it
            raises, the scrape gets a 500 and the error is logged and counted.
    """

    def __init__(self, host: str, port: int, exposition: Exposition) -> None:
        self.host = host
        self.port = port
        self._exposition = exposition
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
                    body, content_type = owner._exposition.encode(
                        self.headers.get("Accept", ""))
                except Exception as exc:
                    owner._count("errors")
                    logger.bind(actor="daemon").opt(exception=exc).error(
                        "metrics rendering failed")
                    self._send(500, b"metrics rendering failed\n", "text/plain; charset=utf-8")
                    return
                owner._count("scrapes")
                self._send(200, body, content_type)

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
