"""The connection's reading side: the reading token (leader/follower), the reader
thread's loop, and decoding and dispatching what the daemon sends.

Reading (leader/follower): one thread at a time holds the *reading token* and decodes
frames — answers settle their futures, events and callback requests go to the
:class:`~._sending.Inbound` handler (the callback thread) in arrival order. A thread that
waits for a pending future takes the token itself when it is free and reads until its own
future is done (so a blocking call costs the daemon's thread and the caller's, no third
wake-up); other waiting threads wait for their future or for the token to be handed to
them. A background reader thread reads whenever no caller does: it waits for the socket to
become readable without holding the token, and stays parked while a caller reads (and for a
millisecond after; it looks every millisecond meanwhile), so that it does not wake for data
a caller is about to read. Done-callbacks run in whichever thread settles the future (keep
them short, and do not wait for another future of the same client in them: that wait could
only time out). A frame from the daemon that breaks the framing or is not one msgpack value
loses the connection (and reconnects).

:class:`_Reading` builds on :class:`~._sending._Sending` (the state, the buffer, losing a
stream); :class:`~.connection.Connection` starts the reader thread, whose loop runs
:meth:`_Reading._serve` on each stream, and reconnects.
"""

from __future__ import annotations

import contextlib
import math
import select
import socket
import threading
import time
from typing import Any

from modcoord.supervisor.client._log import log
from modcoord.supervisor.client._rows import LAZY_MIN_BYTES, lazy_batch_event
from modcoord.supervisor.client._sending import _HEADER_SIZE, _Sending
from modcoord.supervisor.client.future import Future
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
    EVENT,
    HEADER,
    RESPONSE,
    decode_body,
)

__all__ = ["_Reading"]

_unpack_header = HEADER.unpack
_LINGER = 0.001                # the reader thread stays parked this long after a caller read
_LONG_LEAD = 0.02              # a caller reading longer than this lets the reader sleep
_PARK_MAX = 1.0                # no wait in the client is longer than this without a recheck
_MSG_DONTWAIT = socket.MSG_DONTWAIT
_monotonic = time.monotonic
_get_ident = threading.get_ident
_allocate_lock = threading.Lock


class _Reading(_Sending):
    """The connection's reading side (see the module docstring), on its state and sending
    side; the base of :class:`~.connection.Connection`."""

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
            started = _monotonic()
            consulted = deadline > started  # the policy decides this wait
            budget = spinning = spin.spin_budget() if consulted else 0.0
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
            elif consulted and not budget:
                spin.blocked(_monotonic() - started)
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

    # -- reading: the reader thread --------------------------------------------------------

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
                    if end - tell() < LAZY_MIN_BYTES:
                        msg = unpacker.unpack()
                    else:  # a large frame: a batch's rows stay undecoded (see _rows)
                        body = unpacker.read_bytes(end - tell())
                        msg = lazy_batch_event(body)
                        if msg is None:
                            msg = decode_body(body)
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
