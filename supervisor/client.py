"""The client side: how a module process talks to the daemon (SPEC §6).

>>> with connect() as coord:                       # doctest: +SKIP
...     coord.register(Editor()).get(timeout=2)
...     coord.publish("editor", "doc-1", {"text": "hi"}).get()
...     result = coord.coordinate("HYBRID", {"user": 7}).get()
...     coord.cache.statistics().get()

Every call returns a :class:`Future` at once (calls are pipelined over one socket);
``future.get(timeout)`` waits for the answer, and a future is also awaitable from asyncio.

Threads: a reader thread decodes frames and resolves futures (done-callbacks run there,
so keep them short); a callback thread runs the modules' ``on_batch``, ``on_mode_change``
and ``get_performance_metrics`` in this process, in arrival order.

If the daemon goes away, every pending future fails with :class:`ConnectionLostError`
at once, calls made while disconnected fail the same way immediately, and the reader
thread reconnects with backoff (50 ms doubling to 1 s); once the daemon is back it says
hello again and re-registers every module this client registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import math
import os
import socket
import sys
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
from typing import Any, Generic, TypeVar

from loguru import logger

from modcoord.actors.errors import (
    CallTimeoutError,
    ConnectionLostError,
    InvalidMessageError,
    ModcoordError,
    NotRunningError,
)
from modcoord.actors.update import Batch, Update
from modcoord.supervisor.module import ModuleInfo
from modcoord.supervisor.paths import resolve_runtime_dir, socket_path
from modcoord.supervisor.wire import (
    ACTOR_NAMES,
    CALLBACK,
    CALLBACK_RESPONSE,
    DEFAULT_MAX_FRAME_BYTES,
    EVENT,
    HEADER,
    REQUEST,
    RESPONSE,
    FrameDecoder,
    FramingError,
    error_from_wire,
    new_packer,
)

__all__ = [
    "ActorProxy",
    "Client",
    "ClientStatistics",
    "CoordinationResult",
    "Future",
    "connect",
]

T = TypeVar("T")

_log = logger.bind(actor="client")
_pack_header = HEADER.pack
_RECV_SIZE = 64 * 1024
_INBOUND_MAX_FRAME = 128 << 20
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0
_FUTURE_LOCK = threading.Lock()


# -- futures ---------------------------------------------------------------------------------


class Future(Generic[T]):
    """The eventual answer of a call.

    ``get(timeout)`` waits for it; ``await future`` works in asyncio. Both default to the
    client's timeout (never infinite unless asked for with ``math.inf``).
    """

    __slots__ = ("_callbacks", "_done", "_exc", "_result", "_timeout", "_waiter")

    def __init__(self, timeout: float = 5.0) -> None:
        self._done = False
        self._result: Any = None
        self._exc: BaseException | None = None
        self._callbacks: list[Callable[[Future[T]], None]] | None = None
        # A lock held until the future is done; waiters block acquiring it (cheaper than
        # an Event) and release it at once so that every waiter gets through.
        self._waiter: threading.Lock | None = None
        self._timeout = timeout

    def __repr__(self) -> str:
        if not self._done:
            return "<Future pending>"
        if self._exc is not None:
            return f"<Future failed {type(self._exc).__name__}>"
        return f"<Future done {self._result!r:.60}>"

    # completion (reader thread, or the caller for fail-fast)

    def _settle(self, result: Any, exc: BaseException | None) -> bool:
        with _FUTURE_LOCK:
            if self._done:
                return False
            self._result = result
            self._exc = exc
            self._done = True
            waiter, callbacks = self._waiter, self._callbacks
            self._callbacks = None
        if waiter is not None:
            waiter.release()
        if callbacks:
            for fn in callbacks:
                _run_done_callback(fn, self)
        return True

    def set_result(self, result: T) -> bool:
        """Resolve with ``result``; returns False if already done."""
        return self._settle(result, None)

    def set_exception(self, exc: BaseException) -> bool:
        """Fail with ``exc``; returns False if already done."""
        return self._settle(None, exc)

    # observation

    def done(self) -> bool:
        """Whether the answer (or an error) has arrived."""
        return self._done

    def _effective(self, timeout: float | None) -> float:
        return self._timeout if timeout is None else timeout

    def _wait(self, timeout: float | None) -> bool:
        if self._done:
            return True
        if timeout is None:
            timeout = self._timeout
        with _FUTURE_LOCK:
            if self._done:
                return True
            waiter = self._waiter
            if waiter is None:
                waiter = self._waiter = threading.Lock()
                waiter.acquire()
        if waiter.acquire(timeout=-1 if math.isinf(timeout) else max(timeout, 0.0)):
            waiter.release()
            return True
        return self._done

    def get(self, timeout: float | None = None) -> T:
        """Wait for the answer and return it.

        Args:
            timeout: seconds; ``None`` means the client's timeout, ``math.inf`` forever.

        Raises:
            CallTimeoutError: no answer within ``timeout`` (the call may still complete).
            ModcoordError: the call failed (remote error, connection lost, ...).
        """
        if not self._done and not self._wait(timeout):
            raise CallTimeoutError(f"no answer within {self._effective(timeout)} s")
        if self._exc is not None:
            raise self._exc
        return self._result  # type: ignore[no-any-return]

    def result(self, timeout: float | None = None) -> T:
        """Same as :meth:`get`."""
        return self.get(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait like :meth:`get`; return the error, or None on success.

        Raises:
            CallTimeoutError: no answer within ``timeout``.
        """
        if not self._done and not self._wait(timeout):
            raise CallTimeoutError(f"no answer within {self._effective(timeout)} s")
        return self._exc

    def add_done_callback(self, fn: Callable[[Future[T]], None]) -> None:
        """Call ``fn(future)`` when done: at once (in this thread) if already done, else in
        the thread that completes it (usually the reader thread: keep ``fn`` short).
        Exceptions from ``fn`` are logged."""
        with _FUTURE_LOCK:
            if not self._done:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        _run_done_callback(fn, self)

    def __await__(self) -> Generator[Any, None, T]:
        """Await the answer in asyncio, with the same default timeout as :meth:`get`.

        Raises:
            CallTimeoutError: no answer within the client's timeout.
            ModcoordError: the call failed.
        """
        if not self._done:
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()

            def wake(_: Future[T]) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    loop.call_soon_threadsafe(_resolve_waiter, waiter)

            self.add_done_callback(wake)
            handle = None
            if not math.isinf(self._timeout):
                handle = loop.call_later(self._timeout, _resolve_waiter, waiter)
            try:
                yield from waiter.__await__()
            finally:
                if handle is not None:
                    handle.cancel()
            if not self._done:
                raise CallTimeoutError(f"no answer within {self._timeout} s")
        if self._exc is not None:
            raise self._exc
        return self._result  # type: ignore[no-any-return]


def _resolve_waiter(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _run_done_callback(fn: Callable[[Any], None], future: Future[Any]) -> None:
    try:
        fn(future)
    except Exception:
        _log.opt(exception=True).error("future done-callback raised")


def _log_reregistration(module_id: str, future: Future[Any]) -> None:
    error = future.exception(0)
    if error is not None:
        _log.bind(module=module_id).warning(
            "re-registering {m} failed: {e}", m=module_id, e=error)


def _failed(exc: BaseException, timeout: float = 5.0) -> Future[Any]:
    future: Future[Any] = Future(timeout)
    future.set_exception(exc)
    return future


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoordinationResult:
    """The answer of ``coordinate``.

    Attributes:
        mode: the canonical mode coordinated.
        strategy: the mode's memory strategy.
        results: module id → what its ``on_mode_change`` returned.
        errors: module id → error text (modules that failed or timed out).
        cached: whether it came from the daemon's cache.
        latency_ms: the daemon's time to answer.
    """

    mode: str
    strategy: str
    results: dict[str, Any]
    errors: dict[str, str]
    cached: bool
    latency_ms: float

    @classmethod
    def from_wire(cls, data: Any) -> CoordinationResult:
        """Build from the daemon's result map.

        Raises:
            InvalidMessageError: the map lacks ``mode`` or has fields of the wrong type.
        """
        if not isinstance(data, dict) or not isinstance(data.get("mode"), str):
            raise InvalidMessageError(f"coordinate: malformed result {data!r:.120}")
        results = data.get("results") or {}
        errors = data.get("errors") or {}
        if not isinstance(results, dict) or not isinstance(errors, dict):
            raise InvalidMessageError("coordinate: results and errors must be maps")
        return cls(
            mode=data["mode"],
            strategy=str(data.get("strategy", "")),
            results=results,
            errors={str(k): str(v) for k, v in errors.items()},
            cached=bool(data.get("cached", False)),
            latency_ms=float(data.get("latency_ms", 0.0)),
        )


@dataclass(frozen=True)
class ClientStatistics:
    """A snapshot of a client's counters.

    Attributes:
        connected: whether a connection is up now.
        calls: requests sent.
        pending: requests awaiting an answer.
        connection_losses: times the connection was lost.
        reconnects: successful reconnections.
        batches_received: batch events delivered to modules.
        callbacks_run: callback requests answered.
        callback_errors: module callbacks (or on_batch) that raised.
        modules: modules registered through this client.
    """

    connected: bool
    calls: int
    pending: int
    connection_losses: int
    reconnects: int
    batches_received: int
    callbacks_run: int
    callback_errors: int
    modules: int


# -- proxies ---------------------------------------------------------------------------------


class ActorProxy:
    """Calls an actor's methods by name: ``client.cache.statistics()``.

    ``proxy.method(*args, **kwargs)`` sends ``actor {actor, method, args: [...],
    kwargs: {...}}`` and returns a :class:`Future`. Which methods exist is the daemon's
    business: an unknown one fails with ``InvalidMessageError``.
    """

    __slots__ = ("_actor", "_client")

    def __init__(self, client: Client, actor: str) -> None:
        self._client = client
        self._actor = actor

    def __repr__(self) -> str:
        return f"<ActorProxy {self._actor}>"

    def __getattr__(self, method: str) -> Callable[..., Future[Any]]:
        if method.startswith("_"):
            raise AttributeError(method)
        client, actor = self._client, self._actor

        def call(*args: Any, **kwargs: Any) -> Future[Any]:
            return client.request("actor", {"actor": actor, "method": method,
                                            "args": list(args), "kwargs": kwargs})

        call.__name__ = method
        return call


# -- the client --------------------------------------------------------------------------------

_Pending = tuple[Future[Any], "Callable[[Any], Any] | None"]


class Client:
    """A connection to the daemon for one module process (use :func:`connect`).

    Use as a context manager, or call :meth:`close`.

    Attributes:
        path: the daemon's socket.
        timeout: default timeout of futures, and of connecting.
        debouncer, cache, batcher, memory, monitor: :class:`ActorProxy` for each actor.
    """

    debouncer: ActorProxy
    cache: ActorProxy
    batcher: ActorProxy
    memory: ActorProxy
    monitor: ActorProxy

    def __init__(self, path: str | os.PathLike[str], timeout: float = 5.0, *,
                 name: str | None = None, reconnect: bool = True) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.name = name or Path(sys.argv[0] or "python").name
        self._reconnect = reconnect
        self._send_lock = threading.Lock()
        self._packer = new_packer()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        # Registered modules (re-registered after a reconnection) ...
        self._modules: dict[str, Any] = {}
        # ... and every module callbacks may concern, including those whose registration
        # is in flight (the daemon may deliver to a module before its answer arrives).
        self._objects: dict[str, Any] = {}
        self._sock: socket.socket | None = None
        self._generation = 0
        self._connected = False
        self._handshake = threading.Event()
        self._lost_event = threading.Event()
        self._closed = threading.Event()
        self._max_frame = DEFAULT_MAX_FRAME_BYTES
        self._server_error: str | None = None
        self._loss_reason = "not connected yet"
        self.daemon_info: dict[str, Any] = {}
        self._stats = dict.fromkeys(
            ("connection_losses", "reconnects", "batches_received", "callbacks_run",
             "callback_errors"), 0)
        self._calls = itertools.count()
        self._calls_made = 0
        self._callback_queue: SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = (
            SimpleQueue())
        self._callback_thread = threading.Thread(
            target=self._callback_main, name="modcoord-client-callbacks", daemon=True)
        self._reader: threading.Thread | None = None
        for actor in ACTOR_NAMES:
            setattr(self, actor, ActorProxy(self, actor))

    # -- lifecycle -------------------------------------------------------------------------

    def _open_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except FileNotFoundError:
            sock.close()
            raise NotRunningError(
                f"no modcoord daemon at {self.path} (no socket); start one with "
                "`modcoord start`") from None
        except ConnectionRefusedError:
            sock.close()
            raise NotRunningError(
                f"no modcoord daemon listening on {self.path} (stale socket); start one "
                "with `modcoord start`") from None
        except PermissionError as exc:
            sock.close()
            raise NotRunningError(f"cannot reach the daemon at {self.path}: {exc}") from None
        except OSError as exc:
            sock.close()
            raise NotRunningError(f"cannot connect to {self.path}: {exc}; is the daemon "
                                  "running (`modcoord start`)?") from None
        sock.settimeout(None)
        return sock

    def start(self) -> Client:
        """Connect and say hello; returns once the daemon answered.

        Raises:
            NotRunningError: no daemon listens on :attr:`path`.
            ConnectionLostError: the daemon closed the connection (e.g. refused this user).
            CallTimeoutError: no answer to hello within :attr:`timeout`.
        """
        sock = self._open_socket()
        self._callback_thread.start()
        hello = self._install(sock)
        if hello is None:
            raise ConnectionLostError("client closed")
        self._reader = threading.Thread(target=self._reader_main, args=(sock,),
                                        name="modcoord-client-reader", daemon=True)
        self._reader.start()
        try:
            hello.get(self.timeout)
        except ConnectionLostError:
            # Say why, if the daemon told us (e.g. it refused this user).
            self._lost_event.wait(self.timeout)
            reason = self._loss_reason
            self.close()
            raise ConnectionLostError(f"connection to the daemon lost: {reason}") from None
        except BaseException:
            self.close()
            raise
        return self

    def close(self, timeout: float = 2.0) -> None:
        """Close the connection and stop reconnecting; pending futures fail with
        :class:`ConnectionLostError`. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._send_lock:
            sock = self._sock
            self._connected = False
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        current = threading.current_thread()
        if self._reader is not None and self._reader is not current:
            self._reader.join(timeout)
        self._fail_pending(None, "client closed")
        self._callback_queue.put(None)
        if self._callback_thread.is_alive() and self._callback_thread is not current:
            self._callback_thread.join(timeout)
        if sock is not None:
            sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        """Whether a connection to the daemon is up (calls are sent, not failed fast)."""
        return self._connected

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until connected and the handshake (hello and re-registrations) is answered.

        Returns:
            whether it is, within ``timeout`` (default: the client's timeout).
        """
        return self._handshake.wait(self.timeout if timeout is None else timeout)

    def statistics(self) -> ClientStatistics:
        """A snapshot of this client's counters."""
        s = self._stats
        return ClientStatistics(
            connected=self._connected, calls=self._calls_made, pending=len(self._pending),
            connection_losses=s["connection_losses"], reconnects=s["reconnects"],
            batches_received=s["batches_received"], callbacks_run=s["callbacks_run"],
            callback_errors=s["callback_errors"], modules=len(self._modules),
        )

    # -- sending ---------------------------------------------------------------------------

    def request(self, method: str, params: dict[str, Any] | None = None,
                convert: Callable[[Any], Any] | None = None) -> Future[Any]:
        """Send a request; the future resolves to its result (passed through ``convert``).

        Never raises: failures come out of the future — ``ConnectionLostError`` when not
        connected, ``InvalidMessageError`` for params that cannot be serialized or exceed
        the daemon's frame size, any remote error as mapped by
        :func:`~modcoord.supervisor.wire.error_from_wire`.
        """
        future: Future[Any] = Future(self.timeout)
        error: BaseException | None = None
        with self._send_lock:
            if not self._connected:
                error = ConnectionLostError(f"not connected to the daemon ({self._loss_reason})")
            else:
                error = self._send_request_locked(future, method, params or {}, convert)
        if error is not None:
            future.set_exception(error)
        return future

    def _send_request_locked(self, future: Future[Any], method: str, params: dict[str, Any],
                             convert: Callable[[Any], Any] | None) -> BaseException | None:
        rid = next(self._ids)
        try:
            body = self._packer.pack([REQUEST, rid, method, params])
        except Exception as exc:
            return InvalidMessageError(f"{method}: params cannot be serialized: {exc}")
        if len(body) > self._max_frame:
            return InvalidMessageError(
                f"{method}: request of {len(body)} bytes exceeds the daemon's maximum frame "
                f"size of {self._max_frame} bytes")
        self._pending[rid] = (future, convert)
        self._calls_made += 1
        sock = self._sock
        assert sock is not None
        try:
            sock.sendall(_pack_header(len(body)) + body)
        except OSError as exc:
            self._pending.pop(rid, None)
            with contextlib.suppress(OSError):
                # The daemon sees EOF and closes; the reader still reads what it sent.
                sock.shutdown(socket.SHUT_WR)
            return ConnectionLostError(f"connection to the daemon lost: {exc}")
        return None

    def _send_callback_response(self, generation: int, cid: int, error: str | None,
                                result: Any) -> None:
        with self._send_lock:
            if not self._connected or generation != self._generation:
                return  # the daemon already answered it with "connection closed"
            try:
                body = self._packer.pack([CALLBACK_RESPONSE, cid, error, result])
            except Exception as exc:
                body = self._packer.pack(
                    [CALLBACK_RESPONSE, cid, f"result cannot be serialized: {exc}", None])
            sock = self._sock
            assert sock is not None
            try:
                sock.sendall(_pack_header(len(body)) + body)
            except OSError:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)

    # -- the API -----------------------------------------------------------------------------

    def register(self, module: Any) -> Future[dict[str, Any]]:
        """Register a module object; its callbacks then run in this process.

        The client keeps the object and re-registers it after a reconnection.
        Resolves to the daemon's answer (``{"module_id", "mode", "strategy"}`` from the
        real daemon); fails with ``InvalidMessageError`` for a malformed module.
        """
        try:
            info = ModuleInfo.of(module)
        except InvalidMessageError as exc:
            return _failed(exc, self.timeout)

        module_id = info.module_id

        def registered(result: Any) -> Any:
            self._modules[module_id] = module
            return result

        def forget_if_refused(future: Future[Any]) -> None:
            if future.exception(0) is not None and self._modules.get(module_id) is not module:
                self._objects.pop(module_id, None)

        previous = self._objects.get(module_id)
        self._objects[module_id] = module
        future = self.request("register", info.to_params(), registered)
        if previous is None:
            future.add_done_callback(forget_if_refused)
        return future

    def unregister(self, module_id: str) -> Future[Any]:
        """Unregister a module (it is not re-registered after a reconnection)."""
        self._modules.pop(module_id, None)
        self._objects.pop(module_id, None)
        return self.request("unregister", {"module_id": module_id})

    def publish(self, module_id: str, key: str, payload: Any,
                priority: str = "medium") -> Future[int]:
        """Publish an update; resolves to its sequence number in the daemon.

        Fails with ``QueueFullError`` (backpressure) or ``InvalidMessageError`` (e.g. a
        module not registered through this client, a bad priority).
        """
        return self.request("publish", {"module_id": module_id, "key": key,
                                        "payload": payload, "priority": priority})

    def coordinate(self, mode: str, context: dict[str, Any] | None = None,
                   ) -> Future[CoordinationResult]:
        """Coordinate the modules for ``mode``; resolves to a :class:`CoordinationResult`."""
        return self.request("coordinate", {"mode": mode, "context": context or {}},
                            CoordinationResult.from_wire)

    def set_mode(self, mode: str) -> Future[Any]:
        """Switch the system mode (every module's ``on_mode_change`` is called)."""
        return self.request("set_mode", {"mode": mode})

    def status(self) -> Future[dict[str, Any]]:
        """The same dict ``modcoord status --json`` prints."""
        return self.request("status")

    def insights(self) -> Future[dict[str, Any]]:
        """``{"insights": [...], "recommendations": [...]}``."""
        return self.request("insights")

    def optimize(self) -> Future[Any]:
        """Flush pending debounces and batches, clear the cache, run memory cleanup."""
        return self.request("optimize")

    def reload(self) -> Future[Any]:
        """Re-read the config directory now."""
        return self.request("reload")

    def config(self) -> Future[Any]:
        """The effective configuration."""
        return self.request("config")

    def metrics(self) -> Future[Any]:
        """The Prometheus text exposition."""
        return self.request("metrics")

    def crash(self, actor: str, kind: str = "exception") -> Future[Any]:
        """Fault injection: make ``actor`` fail (only if the daemon allows it)."""
        return self.request("crash", {"actor": actor, "kind": kind})

    def stop(self) -> Future[Any]:
        """Ask the daemon to stop gracefully. The connection then closes (and this client
        tries to reconnect until closed); if it closes before the answer arrives the
        future fails with ``ConnectionLostError``."""
        return self.request("stop")

    def actor(self, name: str) -> ActorProxy:
        """The proxy of actor ``name`` (same as the attribute)."""
        return ActorProxy(self, name)

    # -- the reader thread -----------------------------------------------------------------

    def _install(self, sock: socket.socket) -> Future[Any] | None:
        """Make ``sock`` current and pipeline hello plus every module's registration."""
        futures: list[Future[Any]] = []
        errors: list[BaseException] = []
        with self._send_lock:
            if self._closed.is_set():
                sock.close()
                return None
            self._sock = sock
            self._generation += 1
            self._connected = True
            self._server_error = None
            hello: Future[Any] = Future(self.timeout)
            err = self._send_request_locked(
                hello, "hello", {"client": self.name, "pid": os.getpid()}, self._on_hello)
            if err is not None:
                errors.append(err)
            futures.append(hello)
            for module_id, module in list(self._modules.items()):
                future: Future[Any] = Future(self.timeout)
                err = self._send_request_locked(future, "register",
                                                ModuleInfo.of(module).to_params(), None)
                if err is not None:
                    errors.append(err)
                future.add_done_callback(functools.partial(_log_reregistration, module_id))
                futures.append(future)
            generation = self._generation
        if errors:
            for f in futures:
                f.set_exception(errors[0])
            return hello
        remaining = [len(futures)]
        lock = threading.Lock()

        def one_done(_: Future[Any]) -> None:
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last and generation == self._generation and self._connected:
                self._handshake.set()

        for f in futures:
            f.add_done_callback(one_done)
        return hello

    def _on_hello(self, result: Any) -> Any:
        if isinstance(result, dict):
            self.daemon_info = result
            max_frame = result.get("max_frame_bytes")
            if isinstance(max_frame, int) and max_frame > 0:
                self._max_frame = max_frame
        return result

    def _reader_main(self, sock: socket.socket) -> None:
        current: socket.socket | None = sock
        while current is not None:
            reason = self._read_until_lost(current)
            self._lost(current, reason)
            if self._closed.is_set() or not self._reconnect:
                return
            current = self._reconnect_loop()

    def _read_until_lost(self, sock: socket.socket) -> str:
        decoder = FrameDecoder(_INBOUND_MAX_FRAME)
        dispatch = self._dispatch
        recv = sock.recv
        while True:
            try:
                data = recv(_RECV_SIZE)
            except OSError as exc:
                return f"receive failed: {exc}"
            if not data:
                return "the daemon closed the connection"
            try:
                for msg in decoder.feed(data):
                    dispatch(msg)
            except FramingError as exc:
                return f"broken framing from the daemon: {exc}"
            except Exception as exc:
                _log.opt(exception=True).error("client reader failed")
                return f"client reader failed: {exc}"

    def _lost(self, sock: socket.socket, reason: str) -> None:
        if self._closed.is_set():
            reason = "client closed"
        elif self._server_error:
            reason = f"{reason} ({self._server_error})"
        with self._send_lock:
            current = self._sock is sock
            if current:
                self._connected = False
                self._handshake.clear()
                self._loss_reason = reason
        self._lost_event.set()
        with contextlib.suppress(OSError):
            sock.close()
        if current:
            self._stats["connection_losses"] += 1
            if not self._closed.is_set():
                _log.warning("connection to the daemon lost: {reason}", reason=reason)
            self._fail_pending(sock, reason)

    def _fail_pending(self, sock: socket.socket | None, reason: str) -> None:
        with self._send_lock:
            if sock is not None and self._sock is not sock:
                return
            pending = self._pending
            self._pending = {}
        text = reason if reason == "client closed" else f"connection to the daemon lost: {reason}"
        for future, _convert in pending.values():
            future.set_exception(ConnectionLostError(text))

    def _reconnect_loop(self) -> socket.socket | None:
        delay = _BACKOFF_FIRST
        while not self._closed.wait(delay):
            delay = min(delay * 2, _BACKOFF_MAX)
            try:
                sock = self._open_socket()
            except NotRunningError:
                continue
            if self._install(sock) is None:
                return None
            self._stats["reconnects"] += 1
            _log.info("reconnected to the daemon at {path}", path=self.path)
            return sock
        return None

    def _dispatch(self, msg: Any) -> None:
        if type(msg) is not list or not msg:
            _log.warning("ignoring malformed message from the daemon: {m!r:.80}", m=msg)
            return
        kind = msg[0]
        if kind == RESPONSE and len(msg) == 4:
            entry = self._pending.pop(msg[1], None)
            if entry is None:
                if msg[1] is None and msg[2] is not None:
                    err = msg[2]
                    self._server_error = (": ".join(map(str, err)) if isinstance(err, list)
                                          else str(err))
                    _log.warning("daemon says: {e}", e=self._server_error)
                return
            future, convert = entry
            error = msg[2]
            if error is None:
                result = msg[3]
                if convert is not None:
                    try:
                        result = convert(result)
                    except Exception as exc:
                        future.set_exception(
                            exc if isinstance(exc, ModcoordError)
                            else InvalidMessageError(f"malformed answer: {exc}"))
                        return
                future.set_result(result)
            else:
                future.set_exception(error_from_wire(error))
        elif kind == EVENT and len(msg) == 3:
            if msg[1] == "batch" and isinstance(msg[2], dict):
                self._callback_queue.put((self._deliver_batch, (msg[2],)))
        elif kind == CALLBACK and len(msg) == 4:
            self._callback_queue.put(
                (self._run_callback, (self._generation, msg[1], msg[2], msg[3])))
        else:
            _log.warning("ignoring unexpected message from the daemon: {m!r:.80}", m=msg)

    # -- the callback thread ---------------------------------------------------------------

    def _callback_main(self) -> None:
        queue = self._callback_queue
        while True:
            item = queue.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:
                self._stats["callback_errors"] += 1
                _log.opt(exception=True).error("module callback failed")

    def _deliver_batch(self, params: dict[str, Any]) -> None:
        module_id = params.get("module_id")
        module = self._objects.get(module_id)  # type: ignore[arg-type]
        if module is None:
            _log.bind(module=module_id).warning(
                "batch for {m}, which this client has not registered", m=module_id)
            return
        updates = tuple(Update(u[0], u[1], u[2], u[3], u[4]) for u in params["updates"])
        batch = Batch(params["batch_id"], updates, params.get("reason", "window"))
        self._stats["batches_received"] += 1
        module.on_batch(batch)

    def _run_callback(self, generation: int, cid: Any, method: Any, params: Any) -> None:
        result: Any = None
        error: str | None = None
        try:
            if not isinstance(params, dict):
                raise TypeError("callback params must be a map")
            module_id = params.get("module_id")
            module = self._objects.get(module_id)  # type: ignore[arg-type]
            if module is None:
                raise LookupError(f"module {module_id!r} is not registered in this client")
            if method == "on_mode_change":
                result = module.on_mode_change(params["mode"], params["strategy"],
                                               params.get("context") or {})
            elif method == "get_performance_metrics":
                fn = getattr(module, "get_performance_metrics", None)
                if fn is None:
                    raise AttributeError(f"module {module_id!r} has no get_performance_metrics")
                result = fn()
            else:
                raise ValueError(f"unknown callback {method!r}")
        except Exception as exc:
            self._stats["callback_errors"] += 1
            error = f"{type(exc).__name__}: {exc}"
            result = None
        self._stats["callbacks_run"] += 1
        self._send_callback_response(generation, cid, error, result)


def connect(runtime_dir: str | os.PathLike[str] | None = None, timeout: float = 5.0, *,
            name: str | None = None, reconnect: bool = True) -> Client:
    """Connect to the daemon of ``runtime_dir`` (default: SPEC §5 resolution).

    Args:
        runtime_dir: the daemon's runtime directory; its socket is ``modcoord.sock``.
        timeout: for connecting, and the default of every future's ``get``.
        name: how this client introduces itself (default: the program name).
        reconnect: whether to reconnect (and re-register) after losing the daemon.

    Raises:
        NotRunningError: no daemon listens there (start one with ``modcoord start``).
        ConnectionLostError: the daemon closed the connection (e.g. refused this user).
        CallTimeoutError: the daemon did not answer hello within ``timeout``.
    """
    path = socket_path(resolve_runtime_dir(runtime_dir))
    return Client(path, timeout, name=name, reconnect=reconnect).start()
