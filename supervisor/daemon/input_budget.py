"""The server's input limits: what incomplete frames may hold (flow control, like
:mod:`~modcoord.supervisor.daemon.flow`, through its :class:`FlowHooks`).

:class:`InputBudget`:

- An incomplete frame must be completed within ``frame_timeout_s`` of its first byte
  (counted while the connection is read); otherwise it gets a ``FramingError`` frame
  naming the limit and is closed (``frame_timeouts``).
- Incomplete frames larger than :data:`SMALL_FRAME_BYTES` reserve what their prefix
  announces, at most ``max_input_bytes`` together; one frame is always admitted when
  nothing is reserved. A connection whose frame does not fit is not read until it does
  (in arrival order; ``input_waits``, one log line per
  :data:`~modcoord.supervisor.daemon.flow.LIMIT_LOG_INTERVAL_S`); meanwhile unreserved
  connections are read in :data:`SMALL_FRAME_BYTES` chunks.
"""

from __future__ import annotations

import contextlib
from collections import deque

from loguru import logger

from modcoord.supervisor.daemon.connection import Connection
from modcoord.supervisor.daemon.flow import LIMIT_LOG_INTERVAL_S, FlowHooks
from modcoord.supervisor.protocol.framing import RESPONSE, encode_frame

__all__ = [
    "DEFAULT_FRAME_TIMEOUT_S",
    "DEFAULT_MAX_INPUT_BYTES",
    "SMALL_FRAME_BYTES",
    "InputBudget",
]

DEFAULT_FRAME_TIMEOUT_S = 10.0
"""An incomplete frame must be completed this long after its first byte (while read)."""
DEFAULT_MAX_INPUT_BYTES = 32 << 20
"""What the incomplete large frames of all connections may reserve together."""
SMALL_FRAME_BYTES = 16 * 1024
"""Frames up to this size (prefix included) never wait for the input budget; it is also
the read size for unreserved connections while others wait."""

_log = logger.bind(actor="server")


class InputBudget:
    """The input limits: incomplete frames time out, large ones share a budget (see the
    module doc for the rules).

    Args:
        hooks: what it may do to the server.
        frame_timeout_s: how long a frame may stay incomplete while read.
        max_input_bytes: what incomplete large frames may reserve together.
    """

    def __init__(self, hooks: FlowHooks, *, frame_timeout_s: float,
                 max_input_bytes: int) -> None:
        self._hooks = hooks
        self.frame_timeout_s = frame_timeout_s
        self.max_input_bytes = max_input_bytes
        self._partials: dict[int, Connection] = {}  # connections with an incomplete frame
        self._reserved = 0
        self._waiters: deque[Connection] = deque()
        self._tight = False  # waiters exist: read unreserved connections in small chunks
        self._check_at = 0.0
        self._waits_logged_at = float("-inf")
        self._waits_unlogged = 0

    @property
    def reserved(self) -> int:
        """Bytes of the budget reserved now."""
        return self._reserved

    @property
    def tight(self) -> bool:
        """Whether connections wait for the budget (then unreserved ones are read in
        :data:`SMALL_FRAME_BYTES` chunks)."""
        return self._tight

    def due(self) -> float | None:
        """When the frame timeouts are next checked (``None``: no incomplete frame)."""
        return self._check_at if self._partials else None

    def run(self, now: float) -> None:
        """Check the frame timeouts if they are due."""
        if self._partials and now >= self._check_at:
            self._check_at = now + self._check_interval()
            self._check_timeouts(now)

    def _check_interval(self) -> float:
        return min(1.0, self.frame_timeout_s / 4)

    def track(self, conn: Connection) -> None:
        """After a read: note when ``conn``'s incomplete frame began, reserve the input
        budget for a large one, or hold the connection back when it does not fit."""
        decoder = conn.decoder
        if not decoder.buffered:
            self.end(conn)
            return
        if conn.partial_since is None or decoder.frames != conn.partial_frames:
            now = self._hooks.now()
            conn.partial_since = now
            conn.partial_frames = decoder.frames
            if not self._partials:
                self._check_at = now + self._check_interval()
            self._partials[conn.conn_id] = conn
        size = decoder.pending_size
        want = size if size > SMALL_FRAME_BYTES else 0
        if want <= conn.reserved:
            if want < conn.reserved:
                self._release(conn, conn.reserved - want)
            return
        if not self._reserve(conn, want):
            self._wait(conn)

    def end(self, conn: Connection) -> None:
        """``conn`` holds no incomplete frame (any more, or it closed): release what it
        reserved."""
        conn.partial_since = None
        self._partials.pop(conn.conn_id, None)
        if conn.input_waiting:
            conn.input_waiting = False
            with contextlib.suppress(ValueError):
                self._waiters.remove(conn)
            self._tight = bool(self._waiters)
        if conn.reserved:
            self._release(conn, conn.reserved)

    def _reserve(self, conn: Connection, want: int) -> bool:
        """Reserve ``want`` bytes for ``conn``'s frame if they fit (always when nothing
        else is reserved, so that one frame can always make progress)."""
        delta = want - conn.reserved
        others = self._reserved - conn.reserved
        if others and self._reserved + delta > self.max_input_bytes:
            return False
        conn.reserved = want
        self._reserved += delta
        return True

    def _wait(self, conn: Connection) -> None:
        conn.input_waiting = True
        self._waiters.append(conn)
        self._tight = True
        self._hooks.count("input_waits", 1)
        self._hooks.update_interest(conn)
        self._waits_unlogged += 1
        now = self._hooks.now()
        if now - self._waits_logged_at >= LIMIT_LOG_INTERVAL_S:
            _log.warning(
                "input budget full: connections held back (not read) until frames complete; "
                "raise max_input_buffer_bytes in daemon.yaml if this is normal load",
                reserved_bytes=self._reserved, max_input_bytes=self.max_input_bytes,
                held_back=self._waits_unlogged)
            self._waits_logged_at = now
            self._waits_unlogged = 0

    def _release(self, conn: Connection, amount: int) -> None:
        conn.reserved -= amount
        self._reserved -= amount
        if self._waiters:
            self._admit_waiters()

    def _admit_waiters(self) -> None:
        """Read again, in arrival order, the held-back connections whose frame now fits."""
        waiters = self._waiters
        while waiters:
            conn = waiters[0]
            if conn.closed or not conn.input_waiting:
                waiters.popleft()
                continue
            size = conn.decoder.pending_size
            if not self._reserve(conn, size if size > SMALL_FRAME_BYTES else 0):
                break
            waiters.popleft()
            conn.input_waiting = False
            conn.partial_since = self._hooks.now()  # its time runs again from now
            self._hooks.update_interest(conn)
        self._tight = bool(waiters)

    def _check_timeouts(self, now: float) -> None:
        limit = self.frame_timeout_s
        for conn in list(self._partials.values()):
            if conn.closed:
                self._partials.pop(conn.conn_id, None)
                continue
            if conn.input_waiting or conn.throttled or not conn.reading:
                conn.partial_since = now  # not read now: its time starts when it is again
                continue
            since = conn.partial_since
            if since is not None and now - since >= limit:
                self._timed_out(conn, now - since)

    def _timed_out(self, conn: Connection, elapsed: float) -> None:
        decoder = conn.decoder
        size = decoder.pending_size
        announced = f" of {size}" if size > decoder.buffered else ""
        reason = (f"a frame stayed incomplete for {elapsed:.1f} s ({decoder.buffered}"
                  f"{announced} bytes received), longer than frame_timeout_s "
                  f"({self.frame_timeout_s:g} s)")
        self._hooks.count("frame_timeouts", 1)
        _log.warning("closing connection", connection=conn.conn_id, peer_pid=conn.peer.pid,
                     reason=reason)
        with contextlib.suppress(Exception):
            conn.send(encode_frame([RESPONSE, None, ["FramingError", (
                f"{reason}; send each frame whole (frame_timeout_s in daemon.yaml sets the "
                "limit)")], None]))
        self._hooks.close(conn, reason)
