"""The client side: how a module process talks to the daemon (SPEC §6).

>>> with connect() as coord:                       # doctest: +SKIP
...     coord.register(Editor()).get(timeout=2)
...     coord.publish("editor", "doc-1", {"text": "hi"}).get()
...     result = coord.coordinate("HYBRID", {"user": 7}).get()
...     coord.cache.statistics().get()

Every call returns a :class:`Future` at once (calls are pipelined over one socket);
``future.get(timeout)`` waits for the answer, and a future is also awaitable from asyncio.

Sending: requests are appended to an output buffer (under the send lock) and written in
batches: at once when the buffer passes 64 KiB, whenever a thread waits for a future
(``get``, ``exception``, ``await``, :meth:`Client.wait_connected`), before closing, and
otherwise in the background within about a millisecond: by a writer thread half a
millisecond after the first buffered request (while it writes, further requests accumulate
for its next write), or by the reader thread when it wakes from its short park (below).
Callback answers and the handshake are written at once. A write that fails shuts the
socket's sending side: the daemon closes, and the readers see the connection lost.

Reading (leader/follower): one thread at a time holds the *reading token* and decodes
frames — answers settle their futures, events and callback requests go to the callback
thread in arrival order. A thread that waits for a pending future takes the token itself
when it is free and reads until its own future is done (so a blocking call costs the
daemon's thread and the caller's, no third wake-up); other waiting threads wait for their
future or for the token to be handed to them. A background reader thread reads whenever
no caller does: it waits for the socket to become readable without holding the token, and
stays parked while a caller reads (and for a millisecond after; it looks every millisecond
meanwhile), so that it does not wake for data a caller is about to read. Done-callbacks
run in whichever thread settles the future (keep them short, and do not wait for another
future of the same client in them: that wait could only time out). A frame from the daemon
that breaks the framing or is not one msgpack value loses the connection (and reconnects).

A callback thread runs the modules' ``on_batch``, ``on_mode_change`` and
``get_performance_metrics`` in this process, in arrival order.

A module whose subscriptions the daemon swept (its connection took none of its output for
``memory.inactive_after_ms``: the process was stopped, or its reader stuck) is told by a
``swept`` event, read when the connection moves again: the client logs a warning, counts
it (``ClientStatistics.sweeps_notified``), registers the module again (which restores its
subscriptions; updates published while it was swept were not delivered to it) and then
calls the module's optional ``on_swept(notice)`` with the event's params (``module_id``,
``reason``, ``idle_s``, ``inactive_after_ms``).

If the daemon goes away, every pending future fails with :class:`ConnectionLostError`
at once (whoever reads sees the end of the stream), calls made while disconnected fail
the same way immediately, and the reader thread reconnects with backoff (50 ms doubling to
1 s); once the daemon is back it says hello again and re-registers every module this
client registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
from typing import Any, Generic, TypeVar

import msgpack
from loguru import logger

from modcoord.actors.errors import (
    CallTimeoutError,
    ConnectionLostError,
    InvalidMessageError,
    ModcoordError,
    NotRunningError,
)
from modcoord.actors.update import Batch, Update
from modcoord.supervisor.protocol.limits import MAX_NESTING_DEPTH
from modcoord.supervisor.protocol.module import ModuleInfo
from modcoord.supervisor.protocol.paths import resolve_runtime_dir, socket_path
from modcoord.supervisor.protocol.wire import (
    ACTOR_NAMES,
    CALLBACK,
    CALLBACK_RESPONSE,
    DEFAULT_MAX_FRAME_BYTES,
    EVENT,
    HEADER,
    REQUEST,
    RESPONSE,
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
_unpack_header = HEADER.unpack
_HEADER_SIZE = HEADER.size
_RECV_SIZE = 64 * 1024
_INBOUND_MAX_FRAME = 128 << 20
_FLUSH_AT = 64 * 1024          # buffered bytes that make a request write at once
_FLUSH_DELAY = 0.0005          # the writer thread writes this long after the first request
_LINGER = 0.001                # the reader thread stays parked this long after a caller read
_LONG_LEAD = 0.02              # a caller reading longer than this lets the reader sleep
_PARK_MAX = 1.0                # no wait in the client is longer than this without a recheck
_RECV_TIMEOUT = 0.02           # a caller's blocking read returns at least this often
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0
_POLLIN = select.POLLIN
_MSG_DONTWAIT = socket.MSG_DONTWAIT
_SPIN_S = 0.0002  # how long a waiting caller polls the socket before it blocks
_monotonic = time.monotonic
_get_ident = threading.get_ident
_allocate_lock = threading.Lock
_LockType = type(threading.Lock())
_object_new = object.__new__
# Serialises *registering* waiters and done-callbacks (so that the list is created once);
# settling never takes it (see Future._resolve).
_REG_LOCK = threading.Lock()


# -- futures ---------------------------------------------------------------------------------


class Future(Generic[T]):
    """The eventual answer of a call.

    ``get(timeout)`` waits for it; ``await future`` works in asyncio. Both default to the
    client's timeout (never infinite unless asked for with ``math.inf``). Waiting for a
    client's future first writes the client's buffered requests, then reads the connection
    in the waiting thread if no other thread does.
    """

    __slots__ = ("_callbacks", "_convert", "_done", "_exc", "_owner", "_result", "_rid",
                 "_timeout")

    def __init__(self, timeout: float = 5.0) -> None:
        self._done = False
        self._result: Any = None
        self._exc: BaseException | None = None
        # Done-callbacks and waiters' locks, in order; each is taken out (list.pop, atomic)
        # by exactly one thread, which runs (or releases) it.
        self._callbacks: list[Any] | None = None
        self._timeout = timeout
        self._owner: Client | None = None  # the client whose connection answers it
        self._convert: Callable[[Any], Any] | None = None
        self._rid = 0

    def __repr__(self) -> str:
        if not self._done:
            return "<Future pending>"
        if self._exc is not None:
            return f"<Future failed {type(self._exc).__name__}>"
        return f"<Future done {self._result!r:.60}>"

    # completion

    def _resolve(self, result: Any, exc: BaseException | None) -> None:
        """Complete; only for the one thread entitled to (it took the future out of its
        client's pending table, or made it and never published it)."""
        self._result = result
        self._exc = exc
        self._done = True
        # A registrant writes _callbacks, then reads _done; we wrote _done, now read
        # _callbacks: at least one of us sees the other, and pop() hands every item to one.
        if self._callbacks is not None:
            self._run_callbacks()

    def _settle(self, result: Any, exc: BaseException | None) -> bool:
        owner = self._owner
        if owner is not None:
            # A client's future belongs to whoever takes it out of the pending table.
            if owner._pending.pop(self._rid, None) is not self:
                return False
            self._resolve(result, exc)
            return True
        with _REG_LOCK:
            if self._done:
                return False
            self._result = result
            self._exc = exc
            self._done = True
        if self._callbacks is not None:
            self._run_callbacks()
        return True

    def set_result(self, result: T) -> bool:
        """Resolve with ``result``; returns False if already done (or, for a client's
        future, already being answered)."""
        return self._settle(result, None)

    def set_exception(self, exc: BaseException) -> bool:
        """Fail with ``exc``; returns False if already done (or being answered)."""
        return self._settle(None, exc)

    def _run_callbacks(self) -> None:
        callbacks = self._callbacks
        assert callbacks is not None
        while True:
            try:
                item = callbacks.pop(0)
            except IndexError:
                return
            if type(item) is _LockType:
                with contextlib.suppress(RuntimeError):  # its waiter was poked already
                    item.release()
            else:
                _run_done_callback(item, self)

    def _register(self, item: Any) -> bool:
        """Add a done-callback or a waiter's lock; False (not added) if already done."""
        with _REG_LOCK:
            if self._done:
                return False
            callbacks = self._callbacks
            if callbacks is None:
                callbacks = self._callbacks = []
            callbacks.append(item)
        if self._done:  # settled meanwhile, perhaps without seeing the item: run what's left
            self._run_callbacks()
        return True

    def _unregister(self, item: Any) -> None:
        callbacks = self._callbacks
        if callbacks is not None:
            with _REG_LOCK, contextlib.suppress(ValueError):
                callbacks.remove(item)

    # observation

    def done(self) -> bool:
        """Whether the answer (or an error) has arrived."""
        return self._done

    def _wait(self, timeout: float) -> bool:
        """Wait without reading (a standalone future, or nested in a reading thread)."""
        if self._done:
            return True
        waiter = _allocate_lock()
        waiter.acquire()
        if not self._register(waiter):
            return True
        try:
            waiter.acquire(timeout=-1 if math.isinf(timeout) else max(timeout, 0.0))
        finally:
            if not self._done:
                self._unregister(waiter)
        return self._done

    def _wait_done(self, timeout: float | None) -> bool:
        if timeout is None:
            timeout = self._timeout
        owner = self._owner
        if owner is not None:
            return owner._wait_for(self, timeout)
        return self._wait(timeout)

    def get(self, timeout: float | None = None) -> T:
        """Wait for the answer and return it.

        Args:
            timeout: seconds; ``None`` means the client's timeout, ``math.inf`` forever.

        Raises:
            CallTimeoutError: no answer within ``timeout`` (the call may still complete).
            ModcoordError: the call failed (remote error, connection lost, ...).
        """
        if not self._done and not self._wait_done(timeout):
            raise CallTimeoutError(
                f"no answer within {self._timeout if timeout is None else timeout} s")
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
        if not self._done and not self._wait_done(timeout):
            raise CallTimeoutError(
                f"no answer within {self._timeout if timeout is None else timeout} s")
        return self._exc

    def add_done_callback(self, fn: Callable[[Future[T]], None]) -> None:
        """Call ``fn(future)`` when done: at once (in this thread) if already done, else in
        the thread that completes it (the reader thread or a waiting caller: keep ``fn``
        short, and do not wait for another future of the same client in it). Exceptions
        from ``fn`` are logged."""
        if not self._register(fn):
            _run_done_callback(fn, self)

    def __await__(self) -> Generator[Any, None, T]:
        """Await the answer in asyncio, with the same default timeout as :meth:`get`.

        Raises:
            CallTimeoutError: no answer within the client's timeout.
            ModcoordError: the call failed.
        """
        if not self._done:
            owner = self._owner
            if owner is not None and owner._out:
                owner._flush()
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


_new_future = Future.__new__


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
        if type(data) is not dict or type(data.get("mode")) is not str:
            raise InvalidMessageError(f"coordinate: malformed result {data!r:.120}")
        results = data.get("results") or {}
        errors = data.get("errors") or {}
        if type(results) is not dict or type(errors) is not dict:
            raise InvalidMessageError("coordinate: results and errors must be maps")
        if errors:
            errors = {str(k): str(v) for k, v in errors.items()}
        strategy = data.get("strategy", "")
        # Every cached coordinate builds one: fill the fields directly, without the frozen
        # dataclass's per-field object.__setattr__ (half the cost).
        result = _object_new(cls)
        result.__dict__.update(
            mode=data["mode"],
            strategy=strategy if type(strategy) is str else str(strategy),
            results=results,
            errors=errors,
            cached=bool(data.get("cached", False)),
            latency_ms=float(data.get("latency_ms", 0.0)),
        )
        return result


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
        writes: writes of buffered requests to the socket (several requests per write
            when they come faster than the writes).
        caller_reads: times a waiting caller read the connection itself (instead of being
            woken by the reader thread).
        sweeps_notified: ``swept`` events received (each re-registered its module).
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
    writes: int
    caller_reads: int
    sweeps_notified: int = 0


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


class _Connection:
    """One socket to the daemon and its inbound decoding state.

    Everything but ``lost`` is used only by the holder of the client's reading token (so
    no frame is ever split between two readers). ``lost`` is set once, under the send lock.
    """

    __slots__ = ("body_end", "fed", "generation", "lead_poll", "lost", "rbuf", "rview",
                 "sock", "timed_reads", "unpacker")

    def __init__(self, sock: socket.socket, generation: int) -> None:
        self.sock = sock
        self.generation = generation
        self.lost: str | None = None
        # Frames are a 4-byte length and a msgpack body: the unpacker is fed every read,
        # hands out the header with read_bytes and the body with unpack.
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, use_list=True,
                                         max_buffer_size=2 * _INBOUND_MAX_FRAME)
        self.fed = 0         # bytes fed so far (compared with unpacker.tell())
        self.body_end = -1   # stream offset where the current body ends (-1: at a header)
        self.rbuf = bytearray(_RECV_SIZE)
        self.rview = memoryview(self.rbuf)
        self.lead_poll = select.poll()  # for token holders only (poll objects are per thread)
        self.lead_poll.register(sock.fileno(), _POLLIN)
        # A blocking read by a caller gives up (EAGAIN) after _RECV_TIMEOUT; the socket
        # stays in blocking mode otherwise (the reader thread reads with MSG_DONTWAIT).
        # Where that cannot be set, callers poll before every read instead.
        self.timed_reads = True
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                            struct.pack("@ll", 0, int(_RECV_TIMEOUT * 1_000_000)))
        except (OSError, struct.error):
            self.timed_reads = False


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
        # sending: the send lock guards the id counter, the pending table, the output
        # buffer and the current connection; the write lock orders the writes.
        self._send_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._packer = new_packer()
        self._next_id = 1
        self._pending: dict[int, Future[Any]] = {}
        self._out: list[bytes] = []
        self._out_size = 0
        self._writer_idle = True
        self._writer_wake = threading.Lock()   # released to wake the idle writer
        self._writer_wake.acquire()
        self._writer_tick = threading.Lock()   # never released but by close: a sleep
        self._writer_tick.acquire()
        # reading: the token, who holds it, and what the reader thread needs to park
        self._token = threading.Lock()
        self._token_holder = 0
        self._caller_reading = False
        self._lead_since = 0.0
        self._lead_end = 0.0
        self._reader_asleep = False
        # While the reader thread parks with a timeout (a caller reads), it writes what is
        # buffered when it wakes, and requests need not wake the writer thread.
        self._reader_ticking = False
        self._park = threading.Lock()          # released to wake the parked reader thread
        self._park.acquire()
        self._follow_lock = threading.Lock()
        self._followers: dict[Any, None] = {}  # locks of threads waiting for the token
        # Registered modules (re-registered after a reconnection) ...
        self._modules: dict[str, Any] = {}
        # ... and every module callbacks may concern, including those whose registration
        # is in flight (the daemon may deliver to a module before its answer arrives).
        self._objects: dict[str, Any] = {}
        self._conn: _Connection | None = None
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
             "callback_errors", "sweeps_notified"), 0)
        self._calls_made = 0
        self._writes = 0
        self._caller_reads = 0
        self._callback_queue: SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = (
            SimpleQueue())
        self._callback_thread = threading.Thread(
            target=self._callback_main, name="modcoord-client-callbacks", daemon=True)
        self._writer = threading.Thread(
            target=self._writer_main, name="modcoord-client-writer", daemon=True)
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
        self._writer.start()
        hello = self._install(sock)
        conn = self._conn
        if hello is None or conn is None:
            raise ConnectionLostError("client closed")
        self._reader = threading.Thread(target=self._reader_main, args=(conn,),
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
        """Write what is buffered, close the connection and stop reconnecting; pending
        futures fail with :class:`ConnectionLostError`. Idempotent."""
        if self._closed.is_set():
            return
        with contextlib.suppress(Exception):
            self._flush()
        self._closed.set()
        with self._send_lock:
            conn = self._conn
            self._connected = False
            if not self._writer_idle:
                with contextlib.suppress(RuntimeError):  # cut its sleep short
                    self._writer_tick.release()
            else:
                self._writer_idle = False
                self._writer_wake.release()
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        self._wake_reader()
        current = threading.current_thread()
        if self._reader is not None and self._reader is not current:
            self._reader.join(timeout)
        if self._writer.is_alive() and self._writer is not current:
            self._writer.join(timeout)
        self._fail_all("client closed")
        self._callback_queue.put(None)
        if self._callback_thread.is_alive() and self._callback_thread is not current:
            self._callback_thread.join(timeout)
        if conn is not None:
            self._close_socket(conn, timeout)

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
        if self._out:
            self._flush()
        return self._handshake.wait(self.timeout if timeout is None else timeout)

    def statistics(self) -> ClientStatistics:
        """A snapshot of this client's counters."""
        s = self._stats
        return ClientStatistics(
            connected=self._connected, calls=self._calls_made, pending=len(self._pending),
            connection_losses=s["connection_losses"], reconnects=s["reconnects"],
            batches_received=s["batches_received"], callbacks_run=s["callbacks_run"],
            callback_errors=s["callback_errors"], modules=len(self._modules),
            writes=self._writes, caller_reads=self._caller_reads,
            sweeps_notified=s["sweeps_notified"],
        )

    # -- sending ---------------------------------------------------------------------------

    def request(self, method: str, params: dict[str, Any] | None = None,
                convert: Callable[[Any], Any] | None = None) -> Future[Any]:
        """Send a request; the future resolves to its result (passed through ``convert``).

        The request is buffered and written soon (see the module docstring); waiting for
        the future writes it at once.

        Never raises: failures come out of the future — ``ConnectionLostError`` when not
        connected, ``InvalidMessageError`` for params that cannot be serialized or exceed
        the daemon's frame size, any remote error as mapped by
        :func:`~modcoord.supervisor.protocol.wire.error_from_wire`.
        """
        future: Future[Any] = _new_future(Future)
        future._done = False
        future._result = None
        future._exc = None
        future._callbacks = None
        future._timeout = self.timeout
        future._owner = self
        future._convert = convert
        future._rid = 0
        if params is None:
            params = {}
        error: BaseException | None = None
        # _enqueue_locked, inlined (the hot path)
        with self._send_lock:
            if not self._connected:
                error = ConnectionLostError(f"not connected to the daemon ({self._loss_reason})")
            else:
                rid = self._next_id
                self._next_id = rid + 1
                try:
                    body = self._packer.pack([REQUEST, rid, method, params])
                except Exception as exc:
                    error = _unserializable(method, exc)
                else:
                    size = len(body)
                    if size > self._max_frame:
                        error = InvalidMessageError(
                            f"{method}: request of {size} bytes exceeds the daemon's maximum "
                            f"frame size of {self._max_frame} bytes")
                    else:
                        future._rid = rid
                        self._pending[rid] = future
                        self._calls_made += 1
                        out = self._out
                        out.append(_pack_header(size))
                        out.append(body)
                        size = self._out_size = self._out_size + size + _HEADER_SIZE
                        if self._writer_idle and not self._reader_ticking:
                            self._writer_idle = False
                            self._writer_wake.release()
                        if size < _FLUSH_AT:
                            return future
        if error is None:
            self._flush()
        else:
            future._resolve(None, error)
        return future

    def _enqueue_locked(self, future: Future[Any], method: str,
                        params: dict[str, Any]) -> BaseException | None:
        """Buffer a request (send lock held); returns the error that fails it, if any."""
        rid = self._next_id
        self._next_id = rid + 1
        try:
            body = self._packer.pack([REQUEST, rid, method, params])
        except Exception as exc:
            error: BaseException = _unserializable(method, exc)
            return error
        size = len(body)
        if size > self._max_frame:
            error = InvalidMessageError(
                f"{method}: request of {size} bytes exceeds the daemon's maximum frame "
                f"size of {self._max_frame} bytes")
            return error
        future._rid = rid
        self._pending[rid] = future
        self._calls_made += 1
        out = self._out
        out.append(_pack_header(size))
        out.append(body)
        self._out_size += size + _HEADER_SIZE
        if self._writer_idle and not self._reader_ticking:
            self._writer_idle = False
            self._writer_wake.release()
        return None

    def _flush(self) -> None:
        """Write everything buffered, in order, now (in the calling thread).

        A failed write shuts the connection's sending side down: the daemon sees the end of
        the stream and closes, and the reader sees that (reading what the daemon sent first).
        """
        with self._write_lock:
            with self._send_lock:
                out = self._out
                if not out:
                    return
                self._out = []
                self._out_size = 0
                conn = self._conn
            if conn is None:
                return
            self._writes += 1
            try:
                conn.sock.sendall(b"".join(out))
            except OSError:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_WR)

    def _writer_main(self) -> None:
        """Write buffered requests shortly after they come, when nobody else does."""
        wake, tick, closed = self._writer_wake, self._writer_tick, self._closed
        while True:
            wake.acquire()
            while not closed.is_set():
                tick.acquire(timeout=_FLUSH_DELAY)  # a sleep that close() cuts short
                if closed.is_set():
                    return
                with self._send_lock:
                    if not self._out:
                        self._writer_idle = True
                        break
                try:
                    self._flush()
                except Exception:
                    _log.opt(exception=True).error("client writer failed")
            if closed.is_set():
                return

    def _send_callback_response(self, generation: int, cid: int, error: str | None,
                                result: Any) -> None:
        """Answer a callback request. A result that cannot be serialized, or whose answer
        would exceed the daemon's frame limit (learnt from ``hello``; the daemon would
        drop the connection for it), is answered with an error naming the problem
        instead: the caller sees it in ``errors[module_id]``, the connection stays."""
        with self._send_lock:
            if not self._connected or generation != self._generation:
                return  # the daemon already answered it with "connection closed"
            try:
                body = self._packer.pack([CALLBACK_RESPONSE, cid, error, result])
            except Exception as exc:
                body = self._packer.pack(
                    [CALLBACK_RESPONSE, cid, f"result cannot be serialized: {exc}", None])
            if len(body) > self._max_frame:
                self._stats["callback_errors"] += 1
                text = (f"result too large ({len(body)} bytes > limit {self._max_frame} "
                        "bytes, the daemon's max_frame_bytes); return a smaller result")
                _log.error("callback {cid}: {text}", cid=cid, text=text)
                body = self._packer.pack([CALLBACK_RESPONSE, cid, text, None])
            self._out.append(_pack_header(len(body)))
            self._out.append(body)
            self._out_size += len(body) + _HEADER_SIZE
        self._flush()


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

    # -- reading: waiting callers ---------------------------------------------------------

    def _wait_for(self, future: Future[Any], timeout: float) -> bool:
        """Wait until ``future`` (one of ours) is done, reading the connection if nobody
        else does; returns whether it is done within ``timeout``."""
        if self._out:
            self._flush()
        if future._done:
            return True
        if self._token_holder == _get_ident():
            # Nested in a dispatch (a done-callback waits): only another thread can answer.
            return future._wait(timeout)
        deadline = math.inf if math.isinf(timeout) else _monotonic() + max(timeout, 0.0)
        token = self._token
        while True:
            if token.acquire(False):
                self._lead(future, deadline)
            else:
                self._follow(future, deadline)
            if future._done:
                return True
            if _monotonic() >= deadline:
                return False

    def _lead(self, future: Future[Any], deadline: float) -> None:
        """Read (holding the token, released here) until ``future`` is done, the deadline
        passes or the connection is lost."""
        conn = self._conn
        if conn is None or conn.lost is not None:
            # Losing a connection fails its pending futures right after marking it lost.
            self._release_token()
            future._wait(min(0.05, max(deadline - _monotonic(), 0.0)))
            return
        self._token_holder = _get_ident()
        self._lead_since = _monotonic()
        self._caller_reading = True
        self._caller_reads += 1
        try:
            poll = conn.lead_poll.poll
            recv_into = conn.sock.recv_into
            rbuf = conn.rbuf
            blocking_above = _RECV_TIMEOUT if conn.timed_reads else math.inf
            looked = False
            # Spin briefly before blocking: the answer usually comes within tens of µs,
            # and a thread that blocks lets its CPU go idle, which costs ~50 µs to wake
            # on a virtual machine (an IPI and a halt exit) — more than the call itself.
            spin_until = _monotonic() + _SPIN_S
            while not future._done:
                now = _monotonic()
                remaining = deadline - now
                try:
                    if now < spin_until and remaining > 0:
                        n = recv_into(rbuf, _RECV_SIZE, _MSG_DONTWAIT)
                    elif remaining > blocking_above:
                        # a plain blocking read (no poll first): it returns within
                        # _RECV_TIMEOUT (SO_RCVTIMEO), then the future and deadline are
                        # checked again
                        n = recv_into(rbuf, _RECV_SIZE)
                    elif remaining <= 0:
                        if looked:
                            return
                        looked = True  # get(0): take what has arrived, without waiting
                        n = recv_into(rbuf, _RECV_SIZE, _MSG_DONTWAIT)
                    elif poll(math.ceil(min(remaining, _PARK_MAX) * 1000)):
                        n = recv_into(rbuf, _RECV_SIZE, _MSG_DONTWAIT)
                    else:
                        continue
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    self._conn_lost(conn, f"receive failed: {exc}")
                    return
                if not n:
                    self._conn_lost(conn, "the daemon closed the connection")
                    return
                if not self._consume(conn, n):
                    return
        finally:
            self._lead_end = _monotonic()
            self._caller_reading = False
            self._release_token()
            if self._reader_asleep:
                self._wake_reader()

    def _release_token(self) -> None:
        self._token_holder = 0
        self._token.release()
        if self._followers:
            self._handoff()

    def _follow(self, future: Future[Any], deadline: float) -> None:
        """Wait until ``future`` is done or the token is handed to this thread."""
        waiter = _allocate_lock()
        waiter.acquire()
        if not future._register(waiter):
            return
        with self._follow_lock:
            self._followers[waiter] = None
        try:
            # Registered first, then checked: a holder releasing the token after this check
            # sees us and hands it over.
            if self._token.locked() and not future._done:
                remaining = min(deadline - _monotonic(), _PARK_MAX)
                if remaining > 0:
                    waiter.acquire(timeout=remaining)
        finally:
            with self._follow_lock:
                self._followers.pop(waiter, None)
            future._unregister(waiter)
            if self._followers:
                self._handoff()

    def _handoff(self) -> None:
        """Wake one thread waiting for the token, if it is free."""
        if self._token.locked():
            return
        with self._follow_lock:
            for waiter in self._followers:
                with contextlib.suppress(RuntimeError):  # already woken
                    waiter.release()
                break

    def _wake_reader(self) -> None:
        with contextlib.suppress(RuntimeError):  # already woken
            self._park.release()

    # -- reading: the reader thread --------------------------------------------------------

    def _reader_main(self, conn: _Connection) -> None:
        current: _Connection | None = conn
        while current is not None:
            try:
                self._serve(current)
            except Exception as exc:  # a bug: do not leave the connection unread
                _log.opt(exception=True).error("client reader failed")
                self._conn_lost(current, f"client reader failed: {exc}")
            self._reader_ticking = False  # requests wake the writer thread again
            self._close_socket(current, _PARK_MAX)
            if self._closed.is_set() or not self._reconnect:
                return
            current = self._reconnect_loop()

    def _serve(self, conn: _Connection) -> None:
        """Read ``conn`` whenever no caller does, until it is lost."""
        poller = select.poll()
        poller.register(conn.sock.fileno(), _POLLIN)
        poll = poller.poll
        recv_into = conn.sock.recv_into
        rbuf = conn.rbuf
        park = self._park.acquire
        token = self._token
        me = _get_ident()
        while conn.lost is None:
            if self._caller_reading and _monotonic() - self._lead_since > _LONG_LEAD:
                # A caller has been reading for long: sleep until it is done.
                self._stop_ticking()
                self._reader_asleep = True
                if self._caller_reading:
                    park(timeout=_PARK_MAX)
                self._reader_asleep = False
                continue
            if self._caller_reading or _monotonic() - self._lead_end < _LINGER:
                # A caller reads, or just did and will likely read again soon: stay out of
                # its way (no wake-up for its data), but look every _LINGER (and write
                # what requests buffered meanwhile: they count on it).
                self._reader_ticking = True
                park(timeout=_LINGER)
                if self._out:
                    self._flush()
                continue
            self._stop_ticking()
            if not poll() or self._caller_reading:
                continue
            token.acquire()
            self._token_holder = me
            try:
                while conn.lost is None:
                    try:
                        n = recv_into(rbuf, _RECV_SIZE, _MSG_DONTWAIT)
                    except BlockingIOError:
                        break
                    except InterruptedError:
                        continue
                    except OSError as exc:
                        self._conn_lost(conn, f"receive failed: {exc}")
                        break
                    if not n:
                        self._conn_lost(conn, "the daemon closed the connection")
                        break
                    if not self._consume(conn, n) or n < _RECV_SIZE:
                        break
            finally:
                self._release_token()

    def _stop_ticking(self) -> None:
        """Leave the ticking park: requests signal the writer thread again (any buffered
        before they saw this are written here)."""
        if self._reader_ticking:
            self._reader_ticking = False
            if self._out:
                self._flush()

    def _close_socket(self, conn: _Connection, timeout: float) -> None:
        """Close ``conn``'s socket once no thread reads it (it was shut down before)."""
        if self._token_holder == _get_ident():
            conn.sock.close()
            return
        got = self._token.acquire(timeout=timeout)
        try:
            conn.sock.close()
        finally:
            if got:
                self._release_token()

    # -- reading: decoding and dispatching ---------------------------------------------------

    def _consume(self, conn: _Connection, n: int) -> bool:
        """Decode and dispatch the frames completed by ``n`` bytes just read into
        ``conn.rbuf`` (token held). Returns False if the connection is lost (broken framing
        marks it so)."""
        unpacker = conn.unpacker
        unpacker.feed(conn.rview[:n])
        fed = conn.fed = conn.fed + n
        end = conn.body_end
        tell = unpacker.tell
        pending = self._pending
        try:
            while True:
                if end < 0:
                    if fed - tell() < _HEADER_SIZE:
                        break
                    (length,) = _unpack_header(unpacker.read_bytes(_HEADER_SIZE))
                    if not 0 < length <= _INBOUND_MAX_FRAME:
                        self._conn_lost(conn, f"broken framing from the daemon: a frame of "
                                              f"{length} bytes")
                        return False
                    end = tell() + length
                if fed < end:
                    break
                try:
                    msg = unpacker.unpack()
                except Exception as exc:
                    self._conn_lost(conn, f"broken framing from the daemon: undecodable "
                                          f"frame ({type(exc).__name__}: {exc})")
                    return False
                if tell() != end:
                    self._conn_lost(conn, "broken framing from the daemon: a frame body is "
                                          "not exactly one msgpack value")
                    return False
                end = -1
                # the hot path: an answer
                if type(msg) is list and len(msg) == 4 and msg[0] == RESPONSE:
                    future = pending.pop(msg[1], None)
                    if future is None:
                        if self._pending is not pending:  # the connection was lost meanwhile
                            pending = self._pending
                        self._orphan_response(msg)
                        continue
                    error = msg[2]
                    if error is not None:
                        future._resolve(None, error_from_wire(error))
                        continue
                    result = msg[3]
                    convert = future._convert
                    if convert is not None:
                        try:
                            result = convert(result)
                        except Exception as exc:
                            future._resolve(None, exc if isinstance(exc, ModcoordError)
                                            else InvalidMessageError(f"malformed answer: {exc}"))
                            continue
                    future._resolve(result, None)
                else:
                    self._dispatch_other(conn, msg)
        except Exception as exc:
            _log.opt(exception=True).error("client reader failed")
            self._conn_lost(conn, f"client reader failed: {exc}")
            return False
        finally:
            conn.body_end = end
        return conn.lost is None

    def _orphan_response(self, msg: list[Any]) -> None:
        if msg[1] is None and msg[2] is not None:
            err = msg[2]
            self._server_error = (": ".join(map(str, err)) if isinstance(err, list)
                                  else str(err))
            _log.warning("daemon says: {e}", e=self._server_error)

    def _dispatch_other(self, conn: _Connection, msg: Any) -> None:
        if type(msg) is not list or not msg:
            _log.warning("ignoring malformed message from the daemon: {m!r:.80}", m=msg)
            return
        kind = msg[0]
        if kind == EVENT and len(msg) == 3:
            if msg[1] == "batch" and isinstance(msg[2], dict):
                self._callback_queue.put((self._deliver_batch, (msg[2],)))
            elif msg[1] == "swept" and isinstance(msg[2], dict):
                self._callback_queue.put((self._on_swept, (msg[2],)))
            else:
                _log.warning("ignoring unknown event from the daemon: {m!r:.80}", m=msg)
        elif kind == CALLBACK and len(msg) == 4:
            self._callback_queue.put(
                (self._run_callback, (conn.generation, msg[1], msg[2], msg[3])))
        else:
            _log.warning("ignoring unexpected message from the daemon: {m!r:.80}", m=msg)

    # -- losing and regaining the connection -------------------------------------------------

    def _conn_lost(self, conn: _Connection, reason: str) -> None:
        """Mark ``conn`` lost (once): fail its pending futures, drop what is buffered for
        it, shut the socket down (which wakes every thread waiting on it) and wake the
        reader thread (which closes the socket and reconnects)."""
        with self._send_lock:
            if conn.lost is not None:
                return
            if self._closed.is_set():
                reason = "client closed"
            elif self._server_error:
                reason = f"{reason} ({self._server_error})"
            conn.lost = reason
            current = self._conn is conn
            pending: dict[int, Future[Any]] = {}
            if current:
                self._connected = False
                self._handshake.clear()
                self._loss_reason = reason
                self._out = []
                self._out_size = 0
                pending = self._pending
                self._pending = {}
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)
        self._lost_event.set()
        self._wake_reader()
        if current:
            self._stats["connection_losses"] += 1
            if not self._closed.is_set():
                _log.warning("connection to the daemon lost: {reason}", reason=reason)
            self._fail(pending, reason)

    def _fail_all(self, reason: str) -> None:
        with self._send_lock:
            pending = self._pending
            self._pending = {}
            self._out = []
            self._out_size = 0
        self._fail(pending, reason)

    @staticmethod
    def _fail(pending: dict[int, Future[Any]], reason: str) -> None:
        text = reason if reason == "client closed" else f"connection to the daemon lost: {reason}"
        for future in pending.values():
            future._resolve(None, ConnectionLostError(text))

    def _install(self, sock: socket.socket) -> Future[Any] | None:
        """Make ``sock`` current and send hello plus every module's registration."""
        futures: list[Future[Any]] = []
        with self._send_lock:
            if self._closed.is_set():
                sock.close()
                return None
            self._generation += 1
            self._conn = _Connection(sock, self._generation)
            self._connected = True
            self._server_error = None
            self._out = []
            self._out_size = 0
            hello = self._new_future(self._on_hello)
            error = self._enqueue_locked(hello, "hello",
                                         {"client": self.name, "pid": os.getpid()})
            if error is not None:  # cannot happen (plain data), but never leave it pending
                hello._resolve(None, error)
            futures.append(hello)
            for module_id, module in list(self._modules.items()):
                future = self._new_future(None)
                error = self._enqueue_locked(future, "register",
                                             ModuleInfo.of(module).to_params())
                if error is not None:
                    future._resolve(None, error)
                future.add_done_callback(functools.partial(_log_reregistration, module_id))
                futures.append(future)
            generation = self._generation
        self._flush()
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

    def _new_future(self, convert: Callable[[Any], Any] | None) -> Future[Any]:
        future: Future[Any] = Future(self.timeout)
        future._owner = self
        future._convert = convert
        return future

    def _on_hello(self, result: Any) -> Any:
        if isinstance(result, dict):
            self.daemon_info = result
            max_frame = result.get("max_frame_bytes")
            if isinstance(max_frame, int) and max_frame > 0:
                self._max_frame = max_frame
        return result

    def _reconnect_loop(self) -> _Connection | None:
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
            return self._conn
        return None

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

    def _on_swept(self, params: dict[str, Any]) -> None:
        """The daemon removed a module's subscriptions: register it again, then tell it.

        Raises:
            Exception: whatever the module's ``on_swept`` raises (counted and logged by
                the callback thread; the re-registration is already sent).
        """
        module_id = str(params.get("module_id"))
        self._stats["sweeps_notified"] += 1
        module = self._modules.get(module_id)
        if module is None:
            _log.bind(module=module_id).warning(
                "the daemon swept {m}, which this client has not registered", m=module_id)
            return
        _log.bind(module=module_id).warning(
            "the daemon removed the subscriptions of {m} ({reason}); registering it again",
            m=module_id, reason=params.get("reason", "inactive"))
        future = self.request("register", ModuleInfo.of(module).to_params())
        future.add_done_callback(functools.partial(_log_reregistration, module_id))
        hook = getattr(module, "on_swept", None)
        if callable(hook):
            hook(dict(params))

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


def _unserializable(method: str, exc: Exception) -> InvalidMessageError:
    """The error for request params msgpack cannot pack (naming the nesting limit when
    that is what was hit)."""
    if "recursion limit" in str(exc):
        return InvalidMessageError(
            f"{method}: params nested deeper than msgpack's 1024 levels cannot be "
            f"serialized (a payload may nest at most {MAX_NESTING_DEPTH} levels); flatten it")
    return InvalidMessageError(f"{method}: params cannot be serialized: {exc}")


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
