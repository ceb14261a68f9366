"""The NATS engine's asyncio loop thread and its two NATS connections.

nats-py is asyncio; the engine's data calls run on the server's I/O thread and must not
block. So the engine owns one loop thread (:class:`LoopThread`): the other threads hand
work to it with :meth:`LoopThread.call_soon` (``call_soon_threadsafe``) or wait for a
coroutine with :meth:`LoopThread.run` (control threads only, bounded).

Two connections (:func:`connect`): *data* (publishes, fetches, deliveries; a large
outbound buffer) and *control* (leases, membership, mode, coordination; a small one), so
that a data backlog can never starve the lease renewals. Both reconnect forever, ping
every 2 s (a black-holed server is noticed within about 4 s) and report their state to a
:class:`ConnectionState`.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
from loguru import logger
from nats.aio.client import Client

from modcoord.actors.errors import CallTimeoutError
from modcoord.supervisor.daemon.engine_config import EngineSettings

__all__ = ["ConnectionState", "LoopThread", "connect"]

T = TypeVar("T")

DATA_PENDING_BYTES = 8 * 1024 * 1024
"""nats-py's outbound buffer of the data connection while disconnected (the agent's own
bounded buffer, ``engine.max_buffered``, is what pushes back on publishers)."""
CONTROL_PENDING_BYTES = 256 * 1024
PING_INTERVAL_S = 2
MAX_OUTSTANDING_PINGS = 2
RECONNECT_WAIT_S = 0.25
CONNECT_TIMEOUT_S = 2.0


class LoopThread:
    """An asyncio loop in a daemon thread of its own.

    :meth:`start` starts it; :meth:`stop` stops the loop and joins the thread.
    """

    def __init__(self, name: str = "modcoord-nats") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self._thread.start()

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop (any thread, never blocks)."""
        self.loop.call_soon_threadsafe(fn, *args)

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedule ``coro`` on the loop; its concurrent future (any thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float, what: str) -> T:
        """Run ``coro`` on the loop and wait for its result (never on the loop thread).

        Raises:
            CallTimeoutError: no result within ``timeout`` (the coroutine is cancelled).
            Exception: whatever ``coro`` raised.
        """
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise CallTimeoutError(f"{what}: no answer within {timeout} s") from None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and join its thread (never raises)."""
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread.is_alive():
            self._thread.join(timeout)


@dataclass
class ConnectionState:
    """What one connection went through (read by ``status``)."""

    name: str
    connected: bool = False
    closing: bool = False
    disconnects: int = 0
    reconnects: int = 0
    errors: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"connected": self.connected, "disconnects": self.disconnects,
                "reconnects": self.reconnects, "errors": self.errors,
                "last_error": self.last_error}


def _tls_context(settings: EngineSettings) -> ssl.SSLContext | None:
    tls = settings.tls
    if tls is None and not any(u.startswith("tls://") for u in settings.servers):
        return None
    context = ssl.create_default_context(cafile=tls.ca if tls is not None else None)
    if tls is not None and tls.cert is not None and tls.key is not None:
        context.load_cert_chain(tls.cert, tls.key)
    return context


async def connect(settings: EngineSettings, name: str, state: ConnectionState, *,
                  data: bool) -> Client:
    """Connect to ``settings.servers`` (every one in the pool, reconnecting forever).

    Raises:
        nats.errors.NoServersError, OSError: no server reachable now (the caller retries
            or gives up, naming the servers).
    """
    log = logger.bind(actor="nats", connection=state.name)

    async def error_cb(exc: Exception) -> None:
        state.errors += 1
        state.last_error = f"{type(exc).__name__}: {exc}"

    async def disconnected_cb() -> None:
        if state.connected and not state.closing:
            state.disconnects += 1
            log.warning("NATS connection lost")
        state.connected = False

    async def reconnected_cb() -> None:
        state.reconnects += 1
        state.connected = True
        log.info("NATS connection back")

    options: dict[str, Any] = {
        "servers": list(settings.servers), "name": name,
        "error_cb": error_cb, "disconnected_cb": disconnected_cb,
        "reconnected_cb": reconnected_cb,
        "max_reconnect_attempts": -1, "reconnect_time_wait": RECONNECT_WAIT_S,
        "ping_interval": PING_INTERVAL_S, "max_outstanding_pings": MAX_OUTSTANDING_PINGS,
        "connect_timeout": CONNECT_TIMEOUT_S, "allow_reconnect": True,
        "pending_size": DATA_PENDING_BYTES if data else CONTROL_PENDING_BYTES,
    }
    if settings.credentials is not None:
        options["user_credentials"] = settings.credentials
    context = _tls_context(settings)
    if context is not None:
        options["tls"] = context
    client = await nats.connect(**options)
    state.connected = True
    return client
