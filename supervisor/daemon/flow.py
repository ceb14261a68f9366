"""Flow control for the socket server: when it stops reading publishers.

The :class:`~modcoord.supervisor.daemon.server.Server` owns the connections and its loop
(:mod:`~modcoord.supervisor.daemon.loop`) the selector; the flow-control objects own the
*rules* and their state, and act on a connection only through the :class:`FlowHooks` the
server gives them (``update_interest``: register the selector interest the connection
needs now; ``close``: close it with a reason; ``count``: add to a ``ServerStatistics``
counter). Everything runs on the server's
I/O thread except where a method says "any thread". There are three: this module's
:class:`PublisherFlow` (when reading stops), :mod:`~modcoord.supervisor.daemon.input_budget`
(what incomplete frames may hold) and :mod:`~modcoord.supervisor.daemon.accept_gate`
(when accepting stops).

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
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from loguru import logger

from modcoord.supervisor.daemon.connection import Connection

__all__ = [
    "DEFAULT_BACKLOG_HIGH_WATER",
    "DEFAULT_BACKLOG_LOW_WATER",
    "DEFAULT_BACKLOG_STALL_S",
    "LIMIT_LOG_INTERVAL_S",
    "OUTPUT_POLL_S",
    "PUBLISHER_WINDOW_S",
    "STALL_CHECK_S",
    "THROTTLE_POLL_S",
    "BackpressureState",
    "FlowHooks",
    "PublisherFlow",
]

DEFAULT_BACKLOG_HIGH_WATER = 20_000
DEFAULT_BACKLOG_LOW_WATER = 5_000
DEFAULT_BACKLOG_STALL_S = 2.0
LIMIT_LOG_INTERVAL_S = 5.0
"""At most one log line per this interval for each limit (with the count since); every
flow-control rule logs at this pace."""
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
