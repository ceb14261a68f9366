"""One client connection of the daemon's socket server, and the endpoint of its modules.

A :class:`Connection` queues output without ever blocking the sender (any thread), holds
deliveries unencoded behind a full output buffer (a subscriber that lags costs references,
not encoded copies), counts whatever it cannot deliver, and carries the callbacks sent to
its modules' processes. It reports to its :class:`ConnectionHost` (the server): output
accounting, counters, and work for the I/O thread.
"""

from __future__ import annotations

import itertools
import selectors
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from loguru import logger

from modcoord.actors.update import Batch
from modcoord.supervisor.protocol.delivery import encode_batch, spliced_frame
from modcoord.supervisor.protocol.framing import CALLBACK, EVENT, FrameDecoder, encode_frame
from modcoord.supervisor.protocol.module import Reply

__all__ = ["Connection", "ConnectionHost", "PeerCredentials", "peer_credentials",
           "safe_reply"]

_READ = selectors.EVENT_READ
_PEERCRED = struct.Struct("3i")
_log = logger.bind(actor="server")


class ConnectionHost(Protocol):
    """What a :class:`Connection` needs from its server (every method: any thread).

    Attributes:
        max_frame_bytes: the frame limit (each delivery frame at most this).
        max_buffer_bytes: a connection's output high-water mark.
        output_budget_bytes: the output budget across connections.
        out_total: unsent output across connections now.
        oversized_batch: the id of the last batch that needed several frames.
    """

    max_frame_bytes: int
    max_buffer_bytes: int
    output_budget_bytes: int
    oversized_batch: int

    @property
    def out_total(self) -> int:
        """Unsent output across connections now."""
        ...

    def now(self) -> float:
        """The server's clock."""
        ...

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name`` (a ``ServerStatistics`` field)."""
        ...

    def post(self, kind: str, conn: Connection | None, reason: str) -> None:
        """Queue work for the I/O thread (``"pressure"``, ``"write"``, ``"close"``)."""
        ...

    def post_write(self, conn: Connection) -> None:
        """Ask the I/O thread to flush ``conn``'s output."""
        ...

    def post_close(self, conn: Connection, reason: str) -> None:
        """Ask the I/O thread to close ``conn``."""
        ...

    def output_added(self, conn: Connection, added: int, buffered: int) -> bool:
        """Output was queued on ``conn``; returns whether output pressure should start."""
        ...

    def output_taken(self, conn: Connection, taken: int, buffered: int) -> None:
        """Output of ``conn`` went (sent or discarded)."""
        ...

    def output_held(self, conn: Connection) -> bool:
        """``conn`` holds a delivery; returns whether output pressure should start."""
        ...

    def over_budget(self) -> bool:
        """Whether the output of all connections is over the budget."""
        ...

    def count_undelivered(self, conn: Connection, updates: int, size: int, reason: str,
                          module_id: str | None = None) -> None:
        """Count and log deliveries discarded."""
        ...

    def count_undeliverable(self, module_id: str, batch_id: int,
                            failed: Sequence[tuple[Any, str]], sent: int) -> None:
        """Count and log updates left out of a delivery (they cannot be encoded)."""
        ...


@dataclass(frozen=True)
class PeerCredentials:
    """The credentials of a connected peer (``SO_PEERCRED``)."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials | None:
    """Return the peer's pid/uid/gid, or None if the platform cannot tell."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except (OSError, AttributeError):
        return None
    pid, uid, gid = _PEERCRED.unpack(raw)
    return PeerCredentials(pid, uid, gid)



class Connection:
    """One client connection, and the endpoint of the modules registered on it.

    :meth:`send` and the endpoint methods may be called from any thread; everything else
    belongs to the server's I/O thread.

    Attributes:
        conn_id: a number unique within the server.
        peer: the peer's credentials.
        module_ids: the modules registered on this connection.
        closed: whether the connection is closed.
    """

    def __init__(self, server: ConnectionHost, sock: socket.socket, peer: PeerCredentials,
                 conn_id: int) -> None:
        self.conn_id = conn_id
        self.peer = peer
        self.sock = sock
        self.module_ids: set[str] = set()
        self.closed = False
        self.client_name = ""
        self._server = server
        self.lock = threading.Lock()
        self.out = bytearray()
        self._out_base = 0  # bytes sent out of ``_out`` so far (a position in the stream)
        # (stream position where it ends, updates in it) of each delivery frame in _out.
        self.out_frames: deque[tuple[int, int]] = deque()
        self.progress_at = 0.0  # server clock: output last taken (or started queuing)
        self.full = False  # above max_buffer_bytes or holding, until down to half of it
        self.held: deque[tuple[str, Batch]] = deque()  # deliveries not encoded yet
        self.held_updates = 0
        self._lost_in_encoding = 0
        self.want_write = False
        self.callbacks: dict[int, Reply] = {}
        self._callback_ids = itertools.count(1)
        # I/O-thread state.
        self.decoder = FrameDecoder(server.max_frame_bytes)
        self.coalesce: list[bytes] | None = None
        self.paused = False
        self.backlog: deque[Any] = deque()
        self.close_when_flushed = False
        self.reading = True
        self.throttled = False  # not read from: backpressure
        self.events = _READ  # the selector interest registered now (0: unregistered)
        self.last_publish = float("-inf")  # time.monotonic() of its last publishing read
        # Input limits (I/O thread): the incomplete frame, if any.
        self.partial_since: float | None = None  # when it began (server clock)
        self.partial_frames = 0  # decoder.frames when it began: a change means a new frame
        self.reserved = 0  # input budget reserved for it
        self.input_waiting = False  # not read: its frame waits for the input budget
        # When output last drained or was taken (server clock): see live().
        self.out_progress_at = server.now()

    def __repr__(self) -> str:
        return f"<Connection {self.conn_id} pid={self.peer.pid} modules={sorted(self.module_ids)}>"

    # -- writing ---------------------------------------------------------------------------

    def send(self, data: bytes, updates: int = 0) -> bool:
        """Queue ``data`` (whole frames) for sending; never blocks, never cuts.

        Args:
            data: whole frames.
            updates: how many updates ``data`` delivers (one delivery frame), so that they
                are counted if the connection closes before taking them.

        Returns:
            False if the connection is closed (the data is dropped; its updates are
            counted as undelivered and logged), else True. Output queuing above the
            server's marks turns output pressure on (see the module doc).
        """
        with self.lock:
            lost, pressure, wake = self._queue_locked(data, updates)
        return self._after_queue(lost, pressure, wake, updates, len(data))

    def _queue_locked(self, data: bytes, updates: int) -> tuple[str, bool, bool]:
        """Send or buffer ``data`` (lock held). Returns ``(why it was lost or "",
        output pressure to turn on, the loop to wake)``."""
        server = self._server
        if self.closed:
            return f"connection {self.conn_id} is closed", False, False
        out = self.out
        before = len(out)
        if not out:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                server.post_close(self, f"send failed: {exc}")
                return f"send failed: {exc}", False, False
            if sent == len(data):
                return "", False, False
            self.progress_at = server.now()  # the stall clock starts
            out += memoryview(data)[sent:]
        else:
            out += data
        if updates:
            self.out_frames.append((self._out_base + len(out), updates))
        pressure = server.output_added(self, len(out) - before, len(out))
        wake = not self.want_write
        self.want_write = True
        return "", pressure, wake

    def _after_queue(self, lost: str, pressure: bool, wake: bool, updates: int,
                     size: int) -> bool:
        server = self._server
        if lost:
            if updates:
                server.count_undelivered(self, updates, size, lost)
            return False
        if pressure:
            server.post("pressure", self, "")
        if wake:
            server.post_write(self)
        return True

    def flush_out(self) -> bool | None:
        """Send buffered output (I/O thread). True: drained; False: more; None: failed.

        Once the buffer is down to half the per-connection mark, held deliveries are
        encoded into it (see :meth:`deliver`)."""
        failed: list[tuple[str, int, list[tuple[Any, str]], int]] = []
        pressure = False
        try:
            with self.lock:
                out = self.out
                if out:
                    try:
                        sent = self.sock.send(out)
                    except (BlockingIOError, InterruptedError):
                        return False
                    except OSError:
                        return None
                    if sent:
                        del out[:sent]
                        base = self._out_base = self._out_base + sent
                        frames = self.out_frames
                        while frames and frames[0][0] <= base:
                            frames.popleft()
                        self.progress_at = self._server.now()
                        self._server.output_taken(self, sent, len(out))
                half = self._server.max_buffer_bytes // 2
                while self.held and len(out) <= half and not self.closed:
                    if out and self._server.over_budget():
                        break
                    module_id, batch = self.held.popleft()
                    self.held_updates -= len(batch.updates)
                    lost, p, _ = self._encode_locked(module_id, batch, failed)
                    pressure |= p
                    if lost:
                        break
                if not self.held:
                    self._server.output_taken(self, 0, len(out))  # may leave the full set
                if out:
                    return False
                self.want_write = False
                return True
        finally:
            for module_id, batch_id, bad, sent_n in failed:
                self._server.count_undeliverable(module_id, batch_id, bad, sent_n)
            if pressure:
                self._server.post("pressure", self, "")

    def _encode_locked(self, module_id: str, batch: Batch,
                       failed: list[tuple[str, int, list[tuple[Any, str]], int]]
                       ) -> tuple[str, bool, bool]:
        """Encode ``batch`` (lock held) and queue its frames while this connection is
        under its mark and the budget allows (one frame at least); hold the rest, in
        front of anything held. Returns what :meth:`_queue_locked` does.

        A batch that came in wire form (:attr:`Batch.wire`) and fits one frame is spliced
        into it, its updates never looked at; otherwise it is encoded from its updates."""
        server = self._server
        if batch.wire is not None:
            frame = spliced_frame(module_id, batch.batch_id, batch.reason, batch.wire,
                                  server.max_frame_bytes)
            if frame is not None:
                n = len(batch.updates)
                lost, pressure, wake = self._queue_locked(frame, n)
                if lost:
                    self._lost_in_encoding = n
                return lost, pressure, wake
        allowance = max(1, min(server.max_buffer_bytes - len(self.out),
                               server.output_budget_bytes - server.out_total))
        encoded = encode_batch(module_id, batch.batch_id, batch.reason, batch.updates,
                               server.max_frame_bytes, max_bytes=allowance,
                               whole=batch.batch_id != server.oversized_batch)
        if encoded.oversized:
            server.oversized_batch = batch.batch_id
            server.count("split_batches")
        if encoded.failed:
            failed.append((module_id, batch.batch_id, encoded.failed,
                           sum(n for _, n in encoded.frames)))
        lost, pressure, wake = "", False, False
        frames = encoded.frames
        for i, (frame, n) in enumerate(frames):
            lost, p, w = self._queue_locked(frame, n)
            if lost:
                self._lost_in_encoding = sum(k for _, k in frames[i:])
                return lost, False, False
            pressure |= p
            wake |= w
        if encoded.rest < len(batch.updates):
            rest = Batch(batch.batch_id, batch.updates[encoded.rest:], batch.reason)
            self.held.appendleft((module_id, rest))
            self.held_updates += len(rest.updates)
            pressure |= server.output_held(self)
            if not self.want_write:
                # The frames went whole into the socket: nothing is queued, so no write
                # event would come to encode what is held (it would wait forever, and the
                # connection stay full: output pressure would never end). Ask for one.
                self.want_write = True
                wake = True
        return "", pressure, wake

    def buffered(self) -> int:
        return len(self.out)

    def live(self, stall_s: float) -> bool:
        """Whether the connection is open and takes what it is sent (any thread).

        A live connection is activity (the memory manager does not sweep its modules): it
        is live unless it is closed or closing, or output has been waiting for
        ``stall_s`` seconds or more without the peer taking any of it.
        """
        if self.closed or self.close_when_flushed:
            return False
        now = self._server.now()
        if not self.out:
            self.out_progress_at = now
            return True
        return now - self.out_progress_at < stall_s

    def release_buffers(self) -> None:
        """Have the I/O thread give back the buffer capacity a burst left behind
        (:meth:`release_buffers_now`); any thread, returns at once."""
        if not self.closed:
            self._server.post("release_buffers", self, "")

    def release_buffers_now(self) -> None:
        """Give back buffer capacity (I/O thread): an empty output buffer is replaced by a
        new one (a ``bytearray`` keeps its largest size), and so is the decoder's buffer
        between frames (:meth:`FrameDecoder.release_buffer`); what is pending stays."""
        with self.lock:
            if not self.out and not self.closed:
                self.out = bytearray()
        self.decoder.release_buffer()

    def swept(self, module_id: str, notice: dict[str, Any]) -> None:
        """Tell ``module_id``'s process its subscriptions were removed: a ``swept`` event
        (``notice`` is its params; any thread, non-blocking; dropped if closed)."""
        try:
            frame = encode_frame([EVENT, "swept", {**notice, "module_id": module_id}])
        except Exception as exc:
            _log.bind(module=module_id, error=str(exc)).error(
                "swept notice cannot be encoded")
            return
        self.send(frame)

    # -- ModuleEndpoint ----------------------------------------------------------------------

    def deliver(self, module_id: str, batch: Batch) -> None:
        """Send a ``batch`` event to ``module_id``'s process (any thread, non-blocking).

        The batch goes in frames of at most ``max_frame_bytes`` (several, with the same
        ``batch_id``, if it is larger). An update that cannot be encoded, or alone does
        not fit a frame, is left out, counted (``undeliverable_updates``) and logged;
        the rest is delivered. To a closed connection nothing goes: counted and logged.

        Encoded output per connection stops at ``max_buffer_bytes`` (plus one frame), and
        while the output budget is spent at one frame for a connection with output
        queued: what is beyond is *held* unencoded (its updates are shared with every
        other subscriber's copy, so a subscriber that lags costs references, not another
        encoded copy), in order, and encoded as the output drains to half the mark.
        Holding turns output pressure on, and always leaves a write pending (also when
        the frames that went were taken by the socket at once), so that what is held is
        encoded on the I/O thread's next round rather than waiting for an event that
        would not come.
        """
        server = self._server
        failed: list[tuple[str, int, list[tuple[Any, str]], int]] = []
        lost, pressure, wake = "", False, False
        lost_n = len(batch.updates)
        with self.lock:
            out = self.out
            if self.closed:
                lost = f"connection {self.conn_id} is closed"
            elif self.held or (out and (len(out) > server.max_buffer_bytes
                                         or server.over_budget())):
                self.held.append((module_id, batch))
                self.held_updates += len(batch.updates)
                pressure = server.output_held(self)
            else:
                lost, pressure, wake = self._encode_locked(module_id, batch, failed)
                if lost:
                    lost_n = self._lost_in_encoding
        for mid, batch_id, bad, sent_n in failed:
            server.count_undeliverable(mid, batch_id, bad, sent_n)
        if lost:
            server.count_undelivered(self, lost_n, 0, lost, module_id)
            return
        if pressure:
            server.post("pressure", self, "")
        if wake:
            server.post_write(self)

    def mode_change(self, module_id: str, mode: str, strategy: str,
                    context: dict[str, Any], reply: Reply) -> None:
        """Ask the module's process to run ``on_mode_change``; ``reply`` gets the answer."""
        self._callback(module_id, "on_mode_change",
                       {"module_id": module_id, "mode": mode, "strategy": strategy,
                        "context": context}, reply)

    def performance_metrics(self, module_id: str, reply: Reply) -> None:
        """Ask the module's process for ``get_performance_metrics()``."""
        self._callback(module_id, "get_performance_metrics", {"module_id": module_id}, reply)

    def _callback(self, module_id: str, method: str, params: dict[str, Any],
                  reply: Reply) -> None:
        with self.lock:
            closed = self.closed
            if not closed:
                cid = next(self._callback_ids)
                self.callbacks[cid] = reply
        if closed:
            self._server.count("callbacks_failed")
            safe_reply(reply, None, "connection closed")
            return
        try:
            frame = encode_frame([CALLBACK, cid, method, params])
        except Exception as exc:
            with self.lock:
                pending = self.callbacks.pop(cid, None)
            if pending is not None:
                safe_reply(pending, None, f"cannot encode {method} request: {exc}")
            return
        self._server.count("callbacks_sent")
        self.send(frame)

    def take_callback(self, cid: int) -> Reply | None:
        with self.lock:
            return self.callbacks.pop(cid, None)


def safe_reply(reply: Callable[..., Any], *args: Any) -> None:
    """Call ``reply(*args)``; an exception it raises is logged, never propagated."""
    try:
        reply(*args)
    except Exception:
        _log.opt(exception=True).error("reply callback raised")
