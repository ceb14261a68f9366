"""Flow control for the socket server: when it stops reading, and when it stops accepting.

The :class:`~modcoord.supervisor.daemon.server.Server` owns the selector loop and the
connections; the three objects here own the *rules* and their state, and act on a
connection only through the callbacks the server gives them (``update_interest``: register
the selector interest the connection needs now; ``close``: close it with a reason;
``count``: add to a ``ServerStatistics`` counter). Everything runs on the server's I/O
thread except where a method says "any thread".

:class:`PublisherFlow` — publishers are slowed, never refused (two reasons to pause them):

- *Backlog.* Right after the publishes of a read went to the engine, if its
  ``publish_backlog()`` (updates accepted but not yet taken in by the debouncer) exceeds
  ``backlog_high_water`` (or a debounce timer is overdue), reading stops from every
  connection that published in the last :data:`PUBLISHER_WINDOW_S`. While paused it is
  re-checked every :data:`THROTTLE_POLL_S`; reading resumes once the backlog is down to
  ``backlog_low_water``. A pause in which the backlog does not fall for
  ``backlog_stall_s`` ends anyway, with a warning, and pausing rests for as long again.
- *Output pressure.* On while some connection's unsent output is above
  ``max_buffer_bytes`` (until down to half of it) or all connections' together are above
  ``output_budget_bytes`` (until down to half). Publishers are paused as for the backlog.
  Under pressure, every :data:`STALL_CHECK_S`, a connection with output queued that took
  none of it for ``output_stall_s`` is disconnected as *not reading* (counted in
  ``stalled_disconnects``, logged). A connection without queued output is never judged.
- Paused publishers are read again only when neither reason holds.

:class:`InputBudget` — what incomplete frames may hold:

- An incomplete frame must be completed within ``frame_timeout_s`` of its first byte
  (counted while the connection is read); otherwise it gets a ``FramingError`` frame
  naming the limit and is closed (``frame_timeouts``).
- Incomplete frames larger than :data:`SMALL_FRAME_BYTES` reserve what their prefix
  announces, at most ``max_input_bytes`` together; one frame is always admitted when
  nothing is reserved. A connection whose frame does not fit is not read until it does
  (in arrival order; ``input_waits``, one log line per :data:`LIMIT_LOG_INTERVAL_S`);
  meanwhile unreserved connections are read in :data:`SMALL_FRAME_BYTES` chunks.

:class:`AcceptGate` — connections are capped below the descriptor limit:

- The cap is ``RLIMIT_NOFILE`` less the descriptors open at start and
  :data:`FD_RESERVE`. At the cap a new peer gets a ``ConnectionRefused`` error frame
  naming the limit and the fix, and is closed (``refused_at_limit``). If ``accept``
  fails (``EMFILE``), a reserve descriptor is given up to accept and refuse the pending
  peer, then taken back (``accept_errors``).
- Either way accepting rests :data:`ACCEPT_PAUSE_S` (the listener leaves the selector: no
  busy loop; ``accept_pauses``), logged at most once per :data:`LIMIT_LOG_INTERVAL_S`
  with the count since. Existing connections are served throughout.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from modcoord.supervisor.daemon.connection import Connection
from modcoord.supervisor.protocol.framing import RESPONSE, encode_frame

__all__ = [
    "ACCEPT_PAUSE_S",
    "DEFAULT_BACKLOG_HIGH_WATER",
    "DEFAULT_BACKLOG_LOW_WATER",
    "DEFAULT_BACKLOG_STALL_S",
    "DEFAULT_FRAME_TIMEOUT_S",
    "DEFAULT_MAX_INPUT_BYTES",
    "FD_RESERVE",
    "LIMIT_LOG_INTERVAL_S",
    "OUTPUT_POLL_S",
    "PUBLISHER_WINDOW_S",
    "SMALL_FRAME_BYTES",
    "STALL_CHECK_S",
    "THROTTLE_POLL_S",
    "AcceptGate",
    "BackpressureState",
    "FlowHooks",
    "InputBudget",
    "PublisherFlow",
    "connection_cap",
    "raise_nofile_limit",
]

DEFAULT_BACKLOG_HIGH_WATER = 20_000
DEFAULT_BACKLOG_LOW_WATER = 5_000
DEFAULT_BACKLOG_STALL_S = 2.0
DEFAULT_FRAME_TIMEOUT_S = 10.0
"""An incomplete frame must be completed this long after its first byte (while read)."""
DEFAULT_MAX_INPUT_BYTES = 32 << 20
"""What the incomplete large frames of all connections may reserve together."""
SMALL_FRAME_BYTES = 16 * 1024
"""Frames up to this size (prefix included) never wait for the input budget; it is also
the read size for unreserved connections while others wait."""
FD_RESERVE = 32
"""Descriptors kept free of connections, for the daemon's own work."""
ACCEPT_PAUSE_S = 0.25
"""How long accepting rests at the connection or descriptor limit."""
LIMIT_LOG_INTERVAL_S = 5.0
"""At most one log line per this interval for each limit (with the count since)."""
THROTTLE_POLL_S = 0.001
"""How often a server pausing publishers for the backlog re-checks it."""
OUTPUT_POLL_S = 0.01
"""How often, under output pressure, the server re-checks the output."""
STALL_CHECK_S = 0.05
"""How often, under output pressure, it looks for connections that are not reading."""
PUBLISHER_WINDOW_S = 1.0
"""A connection that published this recently is a publisher (paused with the others)."""

_log = logger.bind(actor="server")



@dataclass(frozen=True)
class FlowHooks:
    """What flow control may do to the server (I/O thread).

    Attributes:
        update_interest: re-register a connection's selector interest (after
            ``conn.throttled`` or ``conn.input_waiting`` changed).
        close: close a connection with a reason.
        count: add to a ``ServerStatistics`` counter.
        now: the server's clock (timeouts and log intervals are measured with it).
    """

    update_interest: Callable[[Connection], None]
    close: Callable[[Connection, str], None]
    count: Callable[[str, int], None]
    now: Callable[[], float]


class BackpressureState:
    """A snapshot of the backlog pauses (read together, under one lock).

    Attributes:
        pauses: times the backlog crossed the high-water mark.
        active: whether publishers are paused for the backlog now.
        paused_s: total time paused, in seconds (including the current pause).
    """

    __slots__ = ("active", "paused_s", "pauses")

    def __init__(self, pauses: int, active: bool, paused_s: float) -> None:
        self.pauses = pauses
        self.active = active
        self.paused_s = paused_s


class PublisherFlow:
    """When publishers are paused: the publish backlog and output pressure (see the
    module doc for the rules).

    Args:
        hooks: what it may do to the server.
        conns: the open connections now.
        backlog: the engine's ``publish_backlog`` (``None``: no backlog flow control).
        overdue: the engine's ``timers_overdue`` (pause while a debounce timer is late).
        high_water, low_water, stall_s: the backlog marks and the stall limit.
        max_buffer_bytes, output_budget_bytes, output_stall_s: the output marks and the
            not-reading limit.
    """

    def __init__(self, hooks: FlowHooks, *, conns: Callable[[], Iterable[Connection]],
                 backlog: Callable[[], int] | None,
                 overdue: Callable[[], bool], high_water: int | None, low_water: int,
                 stall_s: float, max_buffer_bytes: int, output_budget_bytes: int,
                 output_stall_s: float) -> None:
        self._conns = conns
        self._hooks = hooks
        self._backlog = backlog
        self._overdue = overdue
        self.high_water = high_water
        self.low_water = low_water
        self.stall_s = stall_s
        self.max_buffer_bytes = max_buffer_bytes
        self.output_budget_bytes = output_budget_bytes
        self.output_stall_s = output_stall_s
        # Output accounting (any thread, under _out_lock; a connection's lock first).
        self._out_lock = threading.Lock()
        self._out_total = 0
        self._out_full: set[Connection] = set()
        # Output pressure (I/O thread).
        self._out_pressure = False
        self._out_stall_check = float("-inf")
        # Backlog pauses (I/O thread; what statistics read, under _state_lock).
        self._state_lock = threading.Lock()
        self._throttling = False
        self._pauses = 0
        self._since = 0.0
        self._paused_total_s = 0.0
        self._throttled: list[Connection] = []
        self._low = 0  # the lowest backlog seen in this pause
        self._progress_at = 0.0  # when it last fell
        self._rest_until = float("-inf")  # after a stall: no pausing before this

    # -- state -------------------------------------------------------------------------------

    @property
    def throttling(self) -> bool:
        """Whether publishers are paused for the backlog."""
        return self._throttling

    @property
    def output_pressure(self) -> bool:
        """Whether output pressure is on."""
        return self._out_pressure

    @property
    def out_total(self) -> int:
        """Unsent output across connections now (any thread)."""
        return self._out_total

    def backpressure(self) -> BackpressureState:
        """The backlog pauses, read together (any thread)."""
        with self._state_lock:
            paused_s = self._paused_total_s
            if self._throttling:
                paused_s += time.monotonic() - self._since
            return BackpressureState(self._pauses, self._throttling, paused_s)

    def poll_timeout(self) -> float | None:
        """How long the loop may block: short while a pause or pressure is re-checked."""
        if self._throttling:
            return THROTTLE_POLL_S
        return OUTPUT_POLL_S if self._out_pressure else None

    # -- output accounting (any thread) -----------------------------------------------------

    def output_added(self, conn: Connection, added: int, buffered: int) -> bool:
        """``added`` bytes were queued on ``conn`` (its lock held), which has ``buffered``
        now. Returns whether output pressure should be turned on."""
        with self._out_lock:
            self._out_total = total = self._out_total + added
            newly_full = not conn.full and buffered > self.max_buffer_bytes
            if newly_full:
                conn.full = True
                self._out_full.add(conn)
        return newly_full or (total > self.output_budget_bytes and not self._out_pressure)

    def over_budget(self) -> bool:
        """Whether all connections' unsent output is above the budget."""
        return self._out_total > self.output_budget_bytes

    def output_held(self, conn: Connection) -> bool:
        """``conn`` holds a delivery (its lock held). Returns whether output pressure
        should be turned on."""
        with self._out_lock:
            if conn.full:
                return not self._out_pressure
            conn.full = True
            self._out_full.add(conn)
            return True

    def output_taken(self, conn: Connection, taken: int, buffered: int) -> None:
        """``taken`` bytes of ``conn``'s output went (sent or discarded; its lock held)."""
        with self._out_lock:
            self._out_total -= taken
            if conn.full and buffered <= self.max_buffer_bytes // 2 and not conn.held:
                conn.full = False
                self._out_full.discard(conn)

    # -- the backlog (I/O thread) -------------------------------------------------------------

    def after_publishing(self, conn: Connection) -> None:
        """Right after handing publishes to the engine (before anything releases the GIL,
        so the debouncer cannot have taken them in yet): pause publishers if the backlog
        is above the high-water mark. ``conn`` stops being read after the messages
        already received."""
        if conn.closed:
            return
        now = time.monotonic()
        conn.last_publish = now
        if self._throttling or self._out_pressure:
            self._throttle(conn)
            return
        if self._backlog is None:
            return
        high = self.high_water
        assert high is not None
        if now < self._rest_until:
            return
        value = self._read_backlog()
        if value is not None and (value > high or self._overdue()):
            self._start_throttling(now, value)

    def _read_backlog(self) -> int | None:
        """The engine's publish backlog, or ``None`` without backlog flow control. If
        reading it fails, backlog flow control is switched off (counted in
        ``internal_errors`` and logged) and ``None`` returned."""
        backlog = self._backlog
        if backlog is None:
            return None
        try:
            return backlog()
        except Exception:
            self._hooks.count("internal_errors", 1)
            _log.opt(exception=True).error("publish_backlog() failed: no flow control")
            self._backlog = None
            return None

    def _start_throttling(self, now: float, value: int) -> None:
        with self._state_lock:
            self._throttling = True
            self._since = now
            self._pauses += 1
        self._low = value
        self._progress_at = now
        _log.debug("publish backlog high: pausing publishers", backlog=value,
                   high_water=self.high_water)
        self._throttle_publishers(now)

    def _throttle_publishers(self, now: float) -> None:
        recent = now - PUBLISHER_WINDOW_S
        for conn in list(self._conns()):
            if conn.last_publish >= recent and not conn.closed:
                self._throttle(conn)

    def _throttle(self, conn: Connection) -> None:
        if conn.throttled:
            return
        conn.throttled = True
        self._throttled.append(conn)
        self._hooks.count("backpressure_throttled", 1)
        self._hooks.update_interest(conn)

    def check_backlog(self) -> None:
        """While paused (each round of the loop): resume below the low-water mark, or when
        the backlog is stuck."""
        value = self._read_backlog() or 0
        now = time.monotonic()
        if value <= self.low_water and not self._overdue():
            self._stop_throttling(now)
            return
        if value < self._low:
            self._low = value
            self._progress_at = now
        elif now - self._progress_at >= self.stall_s:
            self._hooks.count("backpressure_stalls", 1)
            _log.warning(
                "publish backlog stuck: resuming publishers anyway (is the debouncer "
                "running?)", backlog=value, stalled_s=self.stall_s)
            self._rest_until = now + self.stall_s
            self._stop_throttling(now)

    def _stop_throttling(self, now: float) -> None:
        with self._state_lock:
            self._throttling = False
            self._paused_total_s += now - self._since
        if not self._out_pressure:
            self._release_publishers()

    def _release_publishers(self) -> None:
        """Read from the paused publishers again (neither reason to pause holds)."""
        throttled, self._throttled = self._throttled, []
        for conn in throttled:
            conn.throttled = False
            if not conn.closed:
                self._hooks.update_interest(conn)

    # -- output pressure (I/O thread) ---------------------------------------------------------

    def start_output_pressure(self) -> None:
        """Output is above a mark: pause the publishers (see the module doc)."""
        if self._out_pressure:
            return
        with self._out_lock:
            total = self._out_total
            full = len(self._out_full)
        if not full and total <= self.output_budget_bytes:
            return  # drained meanwhile
        self._out_pressure = True
        self._out_stall_check = self._hooks.now()
        self._hooks.count("output_pauses", 1)
        _log.info("output pressure: pausing publishers", queued_bytes=total,
                  full_connections=full, max_connection_bytes=self.max_buffer_bytes,
                  max_total_bytes=self.output_budget_bytes)
        self._throttle_publishers(time.monotonic())

    def check_output(self) -> None:
        """Under output pressure (each round of the loop): resume once below the low marks;
        disconnect the connections that are not reading (queued output, none taken for
        ``output_stall_s``)."""
        with self._out_lock:
            total = self._out_total
            full = bool(self._out_full)
        if not full and total <= self.output_budget_bytes // 2:
            self._out_pressure = False
            _log.info("output pressure over: resuming publishers", queued_bytes=total)
            if not self._throttling:
                self._release_publishers()
            return
        now = self._hooks.now()
        if now - self._out_stall_check < STALL_CHECK_S:
            return
        self._out_stall_check = now
        for conn in list(self._conns()):
            if conn.closed or not conn.want_write or not conn.buffered():
                continue  # nothing queued (a write may be pending to encode what it holds)
            idle = now - conn.progress_at
            if idle >= self.output_stall_s:
                self._hooks.count("stalled_disconnects", 1)
                reason = (f"not reading: {conn.buffered()} bytes of output queued and none "
                          f"taken for {idle:.1f} s under output pressure (limit "
                          f"daemon.output.stall_timeout_s = {self.output_stall_s:g} s)")
                _log.warning("disconnecting", connection=str(conn), reason=reason)
                self._hooks.close(conn, reason)


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


class AcceptGate:
    """The connection cap and the descriptor limit (see the module doc for the rules).

    Args:
        hooks: what it may do to the server (``count`` and ``now``).
        connections: how many connections are open now.
        listen, unlisten: put the listener back in the selector, take it out.
        max_connections: the cap (``0``: derive it from ``RLIMIT_NOFILE`` in
            :meth:`open`).
    """

    def __init__(self, hooks: FlowHooks, *, connections: Callable[[], int],
                 listen: Callable[[], None], unlisten: Callable[[], None],
                 max_connections: int = 0) -> None:
        self._connections = connections
        self._listen = listen
        self._unlisten = unlisten
        self._hooks = hooks
        self.max_connections = max_connections
        self._reserve_fd: int | None = None
        self._resume_at: float | None = None  # accepting rests until then
        self._logged_at = float("-inf")
        self._unlogged = 0

    @property
    def has_reserve(self) -> bool:
        """Whether the reserve descriptor is held."""
        return self._reserve_fd is not None

    def open(self) -> None:
        """At start: derive the cap (unless given) and take the reserve descriptor."""
        if not self.max_connections:
            self.max_connections = connection_cap()
        self._reserve_fd = _open_reserve()

    def close(self) -> None:
        """At stop: give the reserve descriptor back."""
        if self._reserve_fd is not None:
            os.close(self._reserve_fd)
            self._reserve_fd = None

    def stop(self) -> None:
        """The listener closed: no rest to end."""
        self._resume_at = None

    def at_cap(self) -> bool:
        """Whether the connections have reached the cap."""
        return self._connections() >= self.max_connections

    def due(self) -> float | None:
        """When accepting resumes (``None``: it does not rest)."""
        return self._resume_at

    def run(self, now: float) -> None:
        """Resume accepting if the rest is over."""
        if self._resume_at is not None and now >= self._resume_at:
            self._resume()

    def shed(self, listener: socket.socket) -> None:
        """At the connection cap: refuse the pending peers politely, then rest (if there
        were any: with none pending the listener is not readable, nothing spins)."""
        refused = 0
        for _ in range(64):
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.accept_failed(listener, exc)
                return
            self._refuse(sock)
            refused += 1
        if refused:
            self._pause(f"at the connection limit ({self._connections()} of "
                        f"{self.max_connections} connections)")

    def accept_failed(self, listener: socket.socket, exc: OSError) -> None:
        """``accept`` failed: out of descriptors (``EMFILE``/``ENFILE``) or worse. Give up
        the reserve descriptor to accept and refuse the pending peer (so it is told, not
        left waiting), take it back, and rest instead of retrying at once."""
        self._hooks.count("accept_errors", 1)
        self._unlogged += 1
        if exc.errno in (errno.EMFILE, errno.ENFILE) and self._reserve_fd is not None:
            os.close(self._reserve_fd)
            self._reserve_fd = None
            try:
                sock, _addr = listener.accept()
            except OSError:
                pass
            else:
                self._refuse(sock)
            self._reserve_fd = _open_reserve()
        self._pause(f"accept failed: {exc}")

    def _refuse(self, sock: socket.socket) -> None:
        self._hooks.count("refused_at_limit", 1)
        self._unlogged += 1
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        text = (f"refused: the daemon is at its connection limit ({self._connections()} "
                f"connections, {self.max_connections} allowed by RLIMIT_NOFILE {soft}); "
                "close idle clients, or raise the daemon's open-files limit "
                "(LimitNOFILE= in its systemd unit, ulimit -n)")
        try:
            sock.setblocking(False)
            sock.send(encode_frame([RESPONSE, None, ["ConnectionRefused", text], None]))
        except OSError:
            pass
        finally:
            sock.close()

    def _pause(self, reason: str) -> None:
        """Take the listener out of the selector for ``ACCEPT_PAUSE_S`` (no busy loop at a
        limit); log at most once per ``LIMIT_LOG_INTERVAL_S``, with the count since."""
        now = self._hooks.now()
        if self._resume_at is None:
            self._unlisten()
        self._resume_at = now + ACCEPT_PAUSE_S
        self._hooks.count("accept_pauses", 1)
        if now - self._logged_at >= LIMIT_LOG_INTERVAL_S:
            _log.warning(
                "accepting paused: connection attempts refused or failed, existing "
                "connections are served; close idle clients or raise the open-files limit "
                "(LimitNOFILE=, ulimit -n)", reason=reason, pause_s=ACCEPT_PAUSE_S,
                refused=self._unlogged)
            self._logged_at = now
            self._unlogged = 0

    def _resume(self) -> None:
        self._resume_at = None
        if self._reserve_fd is None:
            self._reserve_fd = _open_reserve()
        self._listen()


# -- descriptors -----------------------------------------------------------------------------


def _open_reserve() -> int | None:
    """A spare descriptor to give up when ``accept`` fails for want of one (None: none)."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _open_fds() -> int:
    """Descriptors open in this process now (an estimate of 64 where /proc is missing)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 64


def connection_cap() -> int:
    """Connections the descriptor limit allows beside what is open and ``FD_RESERVE``."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(1, soft - _open_fds() - FD_RESERVE)


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (a daemon serving many clients
    needs descriptors; the soft default, often 1024, is for interactive shells).

    An infinite hard limit means the kernel's ``fs.nr_open``. Never raises: if the limit
    cannot be changed it stays as it is.

    Returns:
        ``(before, after)``: the soft limit before and after.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft >= target:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft, soft
    return soft, target
