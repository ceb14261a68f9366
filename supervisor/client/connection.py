"""One client's connection to the daemon: the socket, sending, reading and reconnecting.

Sending: requests are appended to an output buffer (under the send lock) and written in
batches: at once when the buffer passes 64 KiB, whenever a thread waits for a future
(``get``, ``exception``, ``await``, :meth:`Connection.wait_connected`), before closing, and
otherwise in the background within about a millisecond: by a writer thread half a
millisecond after the first buffered request (while it writes, further requests accumulate
for its next write), or by the reader thread when it wakes from its short park (below).
Callback answers and the handshake are written at once. A write that fails shuts the
socket's sending side: the daemon closes, and the readers see the connection lost.

Reading (leader/follower): one thread at a time holds the *reading token* and decodes
frames — answers settle their futures, events and callback requests go to the
:class:`Inbound` handler (the callback thread) in arrival order. A thread that waits for a
pending future takes the token itself when it is free and reads until its own future is
done (so a blocking call costs the daemon's thread and the caller's, no third wake-up);
other waiting threads wait for their future or for the token to be handed to them. A
background reader thread reads whenever no caller does: it waits for the socket to become
readable without holding the token, and stays parked while a caller reads (and for a
millisecond after; it looks every millisecond meanwhile), so that it does not wake for data
a caller is about to read. Done-callbacks run in whichever thread settles the future (keep
them short, and do not wait for another future of the same client in them: that wait could
only time out). A frame from the daemon that breaks the framing or is not one msgpack value
loses the connection (and reconnects).

If the daemon goes away, every pending future fails with :class:`ConnectionLostError`
at once (whoever reads sees the end of the stream), calls made while disconnected fail
the same way immediately, and the reader thread reconnects with backoff (50 ms doubling to
1 s); once the daemon is back it says hello again and re-registers every module the
``rejoin`` callable names.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from modcoord.actors.errors import (
    ConnectionLostError,
    InvalidMessageError,
    NotRunningError,
)
from modcoord.supervisor.client._log import log
from modcoord.supervisor.client.future import Future
from modcoord.supervisor.client.hello import refused_hello, version_mismatch
from modcoord.supervisor.client.registry import log_reregistration
from modcoord.supervisor.client.stream import (
    INBOUND_MAX_FRAME,
    POLLIN,
    RECV_SIZE,
    RECV_TIMEOUT,
    Stream,
)
from modcoord.supervisor.protocol.errors import error_from_wire
from modcoord.supervisor.protocol.framing import (
    CALLBACK,
    CALLBACK_RESPONSE,
    EVENT,
    HEADER,
    REQUEST,
    RESPONSE,
    new_packer,
)
from modcoord.supervisor.protocol.limits import DEFAULT_MAX_FRAME_BYTES, MAX_NESTING_DEPTH
from modcoord.supervisor.protocol.signatures import PROTOCOL_VERSION
from modcoord.supervisor.protocol.waiting import SpinPolicy

__all__ = ["Connection", "Inbound", "Rejoin", "version_mismatch"]

_pack_header = HEADER.pack
_unpack_header = HEADER.unpack
_HEADER_SIZE = HEADER.size
_FLUSH_AT = 64 * 1024          # buffered bytes that make a request write at once
_FLUSH_DELAY = 0.0005          # the writer thread writes this long after the first request
_LINGER = 0.001                # the reader thread stays parked this long after a caller read
_LONG_LEAD = 0.02              # a caller reading longer than this lets the reader sleep
_PARK_MAX = 1.0                # no wait in the client is longer than this without a recheck
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0
_MSG_DONTWAIT = socket.MSG_DONTWAIT
_monotonic = time.monotonic
_get_ident = threading.get_ident
_allocate_lock = threading.Lock


class Inbound(Protocol):
    """Where the reading thread hands what is not an answer (in arrival order)."""

    def on_event(self, name: str, params: Any) -> None:
        """An event ``[2, name, params]`` from the daemon."""

    def on_callback(self, generation: int, cid: Any, method: Any, params: Any) -> None:
        """A callback request ``[3, cid, method, params]`` read on connection number
        ``generation`` (answer it with :meth:`Connection.send_callback_response`)."""


Rejoin = Callable[[], list[tuple[str, dict[str, Any]]]]
"""Returns ``(module_id, register params)`` of every module to re-register on connecting."""


class Connection:
    """The connection of one client to the daemon at ``path`` (see the module docstring).

    It owns the futures of its requests (:class:`~.future.FutureOwner`), hands events and
    callback requests to ``inbound``, and on every (re)connection says hello and
    re-registers what ``rejoin`` returns.
    """

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

    def start(self) -> None:
        """Connect and say hello; returns once the daemon answered.

        Raises:
            NotRunningError: no daemon listens on :attr:`path`.
            ConnectionLostError: the daemon closed the connection (e.g. refused this user).
            CallTimeoutError: no answer to hello within :attr:`timeout`.
            ProtocolVersionError: the daemon speaks another protocol version (a
                ``ModcoordError`` naming both).
        """
        sock = self._open_socket()
        self._writer.start()
        hello = self._install(sock)
        stream = self._stream
        if hello is None or stream is None:
            raise ConnectionLostError("client closed")
        self._reader = threading.Thread(target=self._reader_main, args=(stream,),
                                        name="modcoord-client-reader", daemon=True)
        self._reader.start()
        try:
            hello.get(self.timeout)
        except InvalidMessageError as exc:
            refused = refused_hello(exc, self.path)
            if refused is not None:
                raise refused from None
            raise
        except ConnectionLostError:
            # Say why, if the daemon told us (e.g. it refused this user).
            self._lost_event.wait(self.timeout)
            reason = self._loss_reason
            raise ConnectionLostError(f"connection to the daemon lost: {reason}") from None

    def close(self, timeout: float = 2.0) -> None:
        """Write what is buffered, close the socket and stop reconnecting; pending futures
        fail with :class:`ConnectionLostError`. Idempotent."""
        if self._closed.is_set():
            return
        with contextlib.suppress(Exception):
            self.flush()
        self._closed.set()
        with self._send_lock:
            stream = self._stream
            self._connected = False
            if not self._writer_idle:
                with contextlib.suppress(RuntimeError):  # cut its sleep short
                    self._writer_tick.release()
            else:
                self._writer_idle = False
                self._writer_wake.release()
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.sock.shutdown(socket.SHUT_RDWR)
        self._wake_reader()
        current = threading.current_thread()
        if self._reader is not None and self._reader is not current:
            self._reader.join(timeout)
        if self._writer.is_alive() and self._writer is not current:
            self._writer.join(timeout)
        self._fail_all("client closed")
        if stream is not None:
            self._close_socket(stream, timeout)

    @property
    def connected(self) -> bool:
        """Whether a connection to the daemon is up (calls are sent, not failed fast)."""
        return self._connected

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until connected and the handshake (hello and re-registrations) is answered.

        Returns:
            whether it is, within ``timeout`` (default: the connection's timeout).
        """
        if self._out:
            self.flush()
        return self._handshake.wait(self.timeout if timeout is None else timeout)

    def counters(self) -> dict[str, Any]:
        """This connection's part of :class:`~.results.ClientStatistics`."""
        return {"connected": self._connected, "calls": self._calls_made,
                "pending": len(self._pending), "connection_losses": self._connection_losses,
                "reconnects": self._reconnects, "writes": self._writes,
                "caller_reads": self._caller_reads, **self._spin.statistics()._asdict()}

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

    # -- reading: waiting callers ---------------------------------------------------------

    def claim(self, rid: int, future: Future[Any]) -> bool:
        """Take ``future`` (request ``rid``) out of the pending table; False if another
        thread did (it settles the future)."""
        return self._pending.pop(rid, None) is future

    def wait_for(self, future: Future[Any], timeout: float) -> bool:
        """Wait until ``future`` (one of ours) is done, reading the connection if nobody
        else does; returns whether it is done within ``timeout``."""
        if self._out:
            self.flush()
        if future.done():
            return True
        if self._token_holder == _get_ident():
            # Nested in a dispatch (a done-callback waits): only another thread can answer.
            return future.wait_unread(timeout)
        deadline = math.inf if math.isinf(timeout) else _monotonic() + max(timeout, 0.0)
        token = self._token
        while True:
            if token.acquire(False):
                self._lead(future, deadline)
            else:
                self._follow(future, deadline)
            if future.done():
                return True
            if _monotonic() >= deadline:
                return False

    def _lead(self, future: Future[Any], deadline: float) -> None:
        """Read (holding the token, released here) until ``future`` is done, the deadline
        passes or the connection is lost."""
        stream = self._stream
        if stream is None or stream.lost is not None:
            # Losing a connection fails its pending futures right after marking it lost.
            self._release_token()
            future.wait_unread(min(0.05, max(deadline - _monotonic(), 0.0)))
            return
        self._token_holder = _get_ident()
        self._lead_since = _monotonic()
        self._caller_reading = True
        self._caller_reads += 1
        done = future.done
        try:
            poll = stream.lead_poll.poll
            recv_into = stream.sock.recv_into
            rbuf = stream.rbuf
            blocking_above = RECV_TIMEOUT if stream.timed_reads else math.inf
            looked = False
            # Spin briefly before blocking when it pays (see protocol/waiting.py): the
            # answer usually comes within tens of µs, and a thread that blocks lets its
            # CPU go idle, which costs ~50 µs to wake on a virtual machine — unless no
            # CPU is idle, when spinning would take the CPU the daemon needs.
            spin = self._spin
            spinning = spin.spin_budget() if deadline > _monotonic() else 0.0
            spin_until = _monotonic() + spinning
            while not done():
                now = _monotonic()
                remaining = deadline - now
                try:
                    if spinning and now < spin_until and remaining > 0:
                        n = recv_into(rbuf, RECV_SIZE, _MSG_DONTWAIT)
                    elif spinning and remaining > 0:
                        spinning = 0.0
                        spin.spun(False)  # not answered within the spin: block now
                        continue
                    elif remaining > blocking_above:
                        # a plain blocking read (no poll first): it returns within
                        # RECV_TIMEOUT (SO_RCVTIMEO), then the future and deadline are
                        # checked again
                        n = recv_into(rbuf, RECV_SIZE)
                    elif remaining <= 0:
                        if looked:
                            return
                        looked = True  # get(0): take what has arrived, without waiting
                        n = recv_into(rbuf, RECV_SIZE, _MSG_DONTWAIT)
                    elif poll(math.ceil(min(remaining, _PARK_MAX) * 1000)):
                        n = recv_into(rbuf, RECV_SIZE, _MSG_DONTWAIT)
                    else:
                        continue
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    self._stream_lost(stream, f"receive failed: {exc}")
                    return
                if not n:
                    self._stream_lost(stream, "the daemon closed the connection")
                    return
                if not self._consume(stream, n):
                    return
            if spinning:
                spin.spun(True)
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
        if not future.add_waiter(waiter):
            return
        with self._follow_lock:
            self._followers[waiter] = None
        try:
            # Registered first, then checked: a holder releasing the token after this check
            # sees us and hands it over.
            if self._token.locked() and not future.done():
                remaining = min(deadline - _monotonic(), _PARK_MAX)
                if remaining > 0:
                    waiter.acquire(timeout=remaining)
        finally:
            with self._follow_lock:
                self._followers.pop(waiter, None)
            future.remove_waiter(waiter)
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

    def _reader_main(self, stream: Stream) -> None:
        current: Stream | None = stream
        while current is not None:
            try:
                self._serve(current)
            except Exception as exc:  # a bug: do not leave the connection unread
                log.exception("client reader failed")
                self._stream_lost(current, f"client reader failed: {exc}")
            self._reader_ticking = False  # requests wake the writer thread again
            self._close_socket(current, _PARK_MAX)
            if self._closed.is_set() or not self._reconnect:
                return
            current = self._reconnect_loop()

    def _serve(self, stream: Stream) -> None:
        """Read ``stream`` whenever no caller does, until it is lost."""
        poller = select.poll()
        poller.register(stream.sock.fileno(), POLLIN)
        poll = poller.poll
        recv_into = stream.sock.recv_into
        rbuf = stream.rbuf
        park = self._park.acquire
        token = self._token
        me = _get_ident()
        while stream.lost is None:
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
                    self.flush()
                continue
            self._stop_ticking()
            if not poll() or self._caller_reading:
                continue
            token.acquire()
            self._token_holder = me
            try:
                while stream.lost is None:
                    try:
                        n = recv_into(rbuf, RECV_SIZE, _MSG_DONTWAIT)
                    except BlockingIOError:
                        break
                    except InterruptedError:
                        continue
                    except OSError as exc:
                        self._stream_lost(stream, f"receive failed: {exc}")
                        break
                    if not n:
                        self._stream_lost(stream, "the daemon closed the connection")
                        break
                    if not self._consume(stream, n) or n < RECV_SIZE:
                        break
            finally:
                self._release_token()

    def _stop_ticking(self) -> None:
        """Leave the ticking park: requests signal the writer thread again (any buffered
        before they saw this are written here)."""
        if self._reader_ticking:
            self._reader_ticking = False
            if self._out:
                self.flush()

    def _close_socket(self, stream: Stream, timeout: float) -> None:
        """Close ``stream``'s socket once no thread reads it (it was shut down before)."""
        if self._token_holder == _get_ident():
            stream.sock.close()
            return
        got = self._token.acquire(timeout=timeout)
        try:
            stream.sock.close()
        finally:
            if got:
                self._release_token()

    # -- reading: decoding and dispatching ---------------------------------------------------

    def _consume(self, stream: Stream, n: int) -> bool:
        """Decode and dispatch the frames completed by ``n`` bytes just read into
        ``stream.rbuf`` (token held). Returns False if the connection is lost (broken
        framing marks it so)."""
        unpacker = stream.unpacker
        unpacker.feed(stream.rview[:n])
        fed = stream.fed = stream.fed + n
        end = stream.body_end
        tell = unpacker.tell
        pending = self._pending
        try:
            while True:
                if end < 0:
                    if fed - tell() < _HEADER_SIZE:
                        break
                    (length,) = _unpack_header(unpacker.read_bytes(_HEADER_SIZE))
                    if not 0 < length <= INBOUND_MAX_FRAME:
                        self._stream_lost(stream, f"broken framing from the daemon: a frame "
                                                  f"of {length} bytes")
                        return False
                    end = tell() + length
                if fed < end:
                    break
                try:
                    msg = unpacker.unpack()
                except Exception as exc:
                    self._stream_lost(stream, f"broken framing from the daemon: undecodable "
                                              f"frame ({type(exc).__name__}: {exc})")
                    return False
                if tell() != end:
                    self._stream_lost(stream, "broken framing from the daemon: a frame body "
                                              "is not exactly one msgpack value")
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
                        future.resolve(None, error_from_wire(error))
                    else:
                        future.resolve_answer(msg[3])
                else:
                    self._dispatch_other(stream, msg)
        except Exception as exc:
            log.exception("client reader failed")
            self._stream_lost(stream, f"client reader failed: {exc}")
            return False
        finally:
            stream.body_end = end
        return stream.lost is None

    def _orphan_response(self, msg: list[Any]) -> None:
        if msg[1] is None and msg[2] is not None:
            err = msg[2]
            self._server_error = (": ".join(map(str, err)) if isinstance(err, list)
                                  else str(err))
            log.warning("daemon says: %s", self._server_error)

    def _dispatch_other(self, stream: Stream, msg: Any) -> None:
        if type(msg) is not list or not msg:
            log.warning("ignoring malformed message from the daemon: %.80r", msg)
            return
        kind = msg[0]
        if kind == EVENT and len(msg) == 3:
            self._inbound.on_event(msg[1], msg[2])
        elif kind == CALLBACK and len(msg) == 4:
            self._inbound.on_callback(stream.generation, msg[1], msg[2], msg[3])
        else:
            log.warning("ignoring unexpected message from the daemon: %.80r", msg)

    # -- losing and regaining the connection -------------------------------------------------

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

    def _install(self, sock: socket.socket) -> Future[Any] | None:
        """Make ``sock`` current and send hello plus every module's registration."""
        futures: list[Future[Any]] = []
        with self._send_lock:
            if self._closed.is_set():
                sock.close()
                return None
            self._generation += 1
            stream = self._stream = Stream(sock, self._generation)
            self._connected = True
            self._server_error = None
            self._out = []
            self._out_size = 0
            hello = self._enqueue_locked(
                "hello", {"client": self.name, "pid": os.getpid(), "protocol": PROTOCOL_VERSION},
                self._on_hello)
            futures.append(hello)
            for module_id, params in self._rejoin():
                future = self._enqueue_locked("register", params, None)
                future.add_done_callback(functools.partial(log_reregistration, module_id))
                futures.append(future)
            generation = self._generation
        self.flush()
        hello.add_done_callback(functools.partial(self._check_hello, stream))
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
        """Learn the daemon's limits from its hello answer.

        Raises:
            ProtocolVersionError: the daemon speaks another protocol version (fails the
                hello).
        """
        if isinstance(result, dict):
            version = result.get("version")
            if version != PROTOCOL_VERSION:
                raise version_mismatch(version, self.path)
            self.daemon_info = result
            max_frame = result.get("max_frame_bytes")
            if isinstance(max_frame, int) and max_frame > 0:
                self._max_frame = max_frame
        return result

    def _check_hello(self, stream: Stream, hello: Future[Any]) -> None:
        """A daemon speaking another protocol version (it refused our hello, or it names
        another version in its answer) cannot be talked to: drop the connection, naming
        both versions (pending calls fail with that reason; the reader reconnects, since
        the daemon may be restarted with the right version)."""
        refused = refused_hello(hello.exception(0), self.path)
        if refused is not None:
            self._stream_lost(stream, str(refused))

    def _reconnect_loop(self) -> Stream | None:
        delay = _BACKOFF_FIRST
        while not self._closed.wait(delay):
            delay = min(delay * 2, _BACKOFF_MAX)
            try:
                sock = self._open_socket()
            except NotRunningError:
                continue
            if self._install(sock) is None:
                return None
            self._reconnects += 1
            log.info("reconnected to the daemon at %s", self.path)
            return self._stream
        return None


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
