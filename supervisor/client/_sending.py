"""The connection's state and its sending side: the output buffer, the writer thread,
answering callbacks, and losing a stream.

Sending: requests are appended to an output buffer (under the send lock) and written in
batches: at once when the buffer passes 64 KiB, whenever a thread waits for a future
(``get``, ``exception``, ``await``, :meth:`~.connection.Connection.wait_connected`), before
closing, and otherwise in the background within about a millisecond: by a writer thread
half a millisecond after the first buffered request (while it writes, further requests
accumulate for its next write), or by the reader thread when it wakes from its short park
(see :mod:`._reading`). Callback answers and the handshake are written at once. A write
that fails shuts the socket's sending side: the daemon closes, and the readers see the
connection lost.

Losing a stream (once, by whichever thread sees it end): every pending future fails with
:class:`ConnectionLostError` at once, what is buffered for it is dropped, the socket is shut
down (which wakes every thread waiting on it) and the reader thread is woken to close it
and reconnect (:mod:`.connection`).

:class:`_Sending` is the lowest layer of :class:`~.connection.Connection`; the reading
(:class:`~._reading._Reading`) and the lifecycle build on it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from modcoord.actors.errors import ConnectionLostError, InvalidMessageError
from modcoord.supervisor.client._log import log
from modcoord.supervisor.client.future import Future
from modcoord.supervisor.client.stream import Stream
from modcoord.supervisor.protocol.framing import (
    CALLBACK_RESPONSE,
    HEADER,
    REQUEST,
    new_packer,
)
from modcoord.supervisor.protocol.limits import DEFAULT_MAX_FRAME_BYTES, MAX_NESTING_DEPTH
from modcoord.supervisor.protocol.waiting import SpinPolicy

__all__ = ["Inbound", "Rejoin", "_Sending"]

_pack_header = HEADER.pack
_HEADER_SIZE = HEADER.size
_FLUSH_AT = 64 * 1024          # buffered bytes that make a request write at once
_FLUSH_DELAY = 0.0005          # the writer thread writes this long after the first request


class Inbound(Protocol):
    """Where the reading thread hands what is not an answer (in arrival order)."""

    def on_event(self, name: str, params: Any) -> None:
        """An event ``[2, name, params]`` from the daemon."""

    def on_callback(self, generation: int, cid: Any, method: Any, params: Any) -> None:
        """A callback request ``[3, cid, method, params]`` read on connection number
        ``generation`` (answer it with :meth:`Connection.send_callback_response`)."""


Rejoin = Callable[[], list[tuple[str, dict[str, Any]]]]
"""Returns ``(module_id, register params)`` of every module to re-register on connecting."""


class _Sending:
    """The connection's state and its sending side (see the module docstring); the base
    of :class:`~.connection.Connection`."""

    def __init__(self, path: Path, timeout: float, name: str, reconnect: bool,
                 inbound: Inbound, rejoin: Rejoin) -> None:
        self.path = path
        self.timeout = timeout
        self.name = name
        self._reconnect = reconnect
        self._inbound = inbound
        self._rejoin = rejoin
        # sending: the send lock guards the id counter, the pending table, the output
        # buffer and the current stream; the write lock orders the writes.
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
        self._stream: Stream | None = None
        self._generation = 0
        self._connected = False
        self._handshake = threading.Event()
        self._lost_event = threading.Event()
        self._closed = threading.Event()
        self._max_frame = DEFAULT_MAX_FRAME_BYTES
        self._server_error: str | None = None
        self._loss_reason = "not connected yet"
        self.daemon_info: dict[str, Any] = {}
        self._connection_losses = 0
        self._reconnects = 0
        self._calls_made = 0
        self._writes = 0
        self._caller_reads = 0
        self._spin = SpinPolicy()  # used by the token holder only
        self._writer = threading.Thread(
            target=self._writer_main, name="modcoord-client-writer", daemon=True)
        self._reader: threading.Thread | None = None

    if TYPE_CHECKING:
        # Our futures wait through their owner (:class:`~.future.FutureOwner`): the
        # reading layer (:class:`~._reading._Reading`) defines these.
        def claim(self, rid: int, future: Future[Any]) -> bool: ...

        def wait_for(self, future: Future[Any], timeout: float) -> bool: ...

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
                        future: Future[Any] = Future(self.timeout, self, convert, rid)
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
            self.flush()
            return future  # written at once: the buffer passed _FLUSH_AT
        future = Future(self.timeout, self, convert)
        future.resolve(None, error)
        return future

    def _enqueue_locked(self, method: str, params: dict[str, Any],
                        convert: Callable[[Any], Any] | None) -> Future[Any]:
        """Buffer a request (send lock held); returns its future (failed, if it cannot
        be sent)."""
        rid = self._next_id
        self._next_id = rid + 1
        future: Future[Any] = Future(self.timeout, self, convert, rid)
        try:
            body = self._packer.pack([REQUEST, rid, method, params])
        except Exception as exc:
            future.resolve(None, _unserializable(method, exc))
            return future
        size = len(body)
        if size > self._max_frame:
            future.resolve(None, InvalidMessageError(
                f"{method}: request of {size} bytes exceeds the daemon's maximum frame "
                f"size of {self._max_frame} bytes"))
            return future
        self._pending[rid] = future
        self._calls_made += 1
        out = self._out
        out.append(_pack_header(size))
        out.append(body)
        self._out_size += size + _HEADER_SIZE
        if self._writer_idle and not self._reader_ticking:
            self._writer_idle = False
            self._writer_wake.release()
        return future

    def flush(self) -> None:
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
                stream = self._stream
            if stream is None:
                return
            self._writes += 1
            try:
                stream.sock.sendall(b"".join(out))
            except OSError:
                with contextlib.suppress(OSError):
                    stream.sock.shutdown(socket.SHUT_WR)

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
                    self.flush()
                except Exception:
                    log.exception("client writer failed")
            if closed.is_set():
                return

    def send_callback_response(self, generation: int, cid: int, error: str | None,
                               result: Any) -> bool:
        """Answer a callback request read on connection number ``generation``.

        A result that cannot be serialized, or whose answer would exceed the daemon's
        frame limit (learnt from ``hello``; the daemon would drop the connection for it),
        is answered with an error naming the problem instead: the caller sees it in
        ``errors[module_id]``, the connection stays.

        Returns:
            False if the result was replaced by an error because it was too large (the
            caller counts it); True otherwise (also when the connection it came on is gone:
            the daemon already answered it with "connection closed").
        """
        fits = True
        with self._send_lock:
            if not self._connected or generation != self._generation:
                return True
            try:
                body = self._packer.pack([CALLBACK_RESPONSE, cid, error, result])
            except Exception as exc:
                body = self._packer.pack(
                    [CALLBACK_RESPONSE, cid, f"result cannot be serialized: {exc}", None])
            if len(body) > self._max_frame:
                fits = False
                text = (f"result too large ({len(body)} bytes > limit {self._max_frame} "
                        "bytes, the daemon's max_frame_bytes); return a smaller result")
                log.error("callback %s: %s", cid, text)
                body = self._packer.pack([CALLBACK_RESPONSE, cid, text, None])
            self._out.append(_pack_header(len(body)))
            self._out.append(body)
            self._out_size += len(body) + _HEADER_SIZE
        self.flush()
        return fits

    # -- losing a stream -------------------------------------------------------------------

    def _stream_lost(self, stream: Stream, reason: str) -> None:
        """Mark ``stream`` lost (once): fail its pending futures, drop what is buffered for
        it, shut the socket down (which wakes every thread waiting on it) and wake the
        reader thread (which closes the socket and reconnects)."""
        with self._send_lock:
            if stream.lost is not None:
                return
            if self._closed.is_set():
                reason = "client closed"
            elif self._server_error:
                reason = f"{reason} ({self._server_error})"
            stream.lost = reason
            current = self._stream is stream
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
            stream.sock.shutdown(socket.SHUT_RDWR)
        self._lost_event.set()
        self._wake_reader()
        if current:
            self._connection_losses += 1
            if not self._closed.is_set():
                log.warning("connection to the daemon lost: %s", reason)
            _fail(pending, reason)

    def _fail_all(self, reason: str) -> None:
        with self._send_lock:
            pending = self._pending
            self._pending = {}
            self._out = []
            self._out_size = 0
        _fail(pending, reason)

    def _wake_reader(self) -> None:
        with contextlib.suppress(RuntimeError):  # already woken
            self._park.release()


def _fail(pending: dict[int, Future[Any]], reason: str) -> None:
    text = reason if reason == "client closed" else f"connection to the daemon lost: {reason}"
    for future in pending.values():
        future.resolve(None, ConnectionLostError(text))


def _unserializable(method: str, exc: Exception) -> InvalidMessageError:
    """The error for request params msgpack cannot pack (naming the nesting limit when
    that is what was hit)."""
    if "recursion limit" in str(exc):
        return InvalidMessageError(
            f"{method}: params nested deeper than msgpack's 1024 levels cannot be "
            f"serialized (a payload may nest at most {MAX_NESTING_DEPTH} levels); flatten it")
    return InvalidMessageError(f"{method}: params cannot be serialized: {exc}")
