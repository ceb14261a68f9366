"""The daemon's socket server: one I/O thread serving every module connection.

A :class:`Server` listens on a Unix socket (mode 0600) and runs one ``selectors`` loop over
the listening socket and every non-blocking connection. What each inbound message does —
validation against the call table before anything reaches the coordinator, the publish fast
path, the registration thread, the control threads — is
:class:`~modcoord.supervisor.daemon.requests.Requests`, whose docstring states the rules;
the loop keeps itself free of blocking work.

The server's parts, each a module beside this one: the I/O loop — waiting for events,
serving them, the jobs other threads post, the flow-control points of each round, the
drain at stop — is :mod:`~modcoord.supervisor.daemon.loop`; the listening socket —
binding it, replacing a stale socket file, accepting and refusing peers, closing it — is
:mod:`~modcoord.supervisor.daemon.listener`; closing a connection and the shutdown are
:mod:`~modcoord.supervisor.daemon.closing`. Their functions are bound in the
:class:`Server` class body as its methods (no layer between the loop and a connection).
This module keeps the configuration, the public API (start, stop, statistics), the
cross-thread plumbing (counters, posting jobs, waking the loop) and what a read or a write
of one connection does.

Responses produced while processing one read are coalesced into one ``send``. Other
threads (the batcher delivering, a reply callback) write with :meth:`Connection.send`,
which sends directly when nothing is queued, else buffers and wakes the loop; it never
blocks the sender. A batch event never exceeds ``max_frame_bytes``: a larger batch goes out
as several frames with the same ``batch_id``, and an update that cannot be encoded is left
out (counted in ``undeliverable_updates`` and logged) while the rest of its batch goes.

Flow control — when the server stops reading from publishers (the publish backlog above
its high-water mark, output pressure), disconnects connections that are not reading,
bounds what incomplete frames may hold (``frame_timeout_s``, ``max_input_bytes``) and
caps connections below the descriptor limit — is :mod:`modcoord.supervisor.daemon.flow`,
:mod:`~modcoord.supervisor.daemon.input_budget` and
:mod:`~modcoord.supervisor.daemon.accept_gate`, whose docstrings state the rules; the
server calls them at fixed points (after each publishing read, on each read, in each round
of the loop, on accept) and they act on connections only through the callbacks the server
hands them. Deliveries to a connection already closed are counted
(``undelivered_updates``, ``undelivered_bytes``) and logged with the modules concerned
(what closing discards: :mod:`~modcoord.supervisor.daemon.closing`).

Each :class:`Connection` is the :class:`~modcoord.supervisor.protocol.module.ModuleEndpoint` of the
modules registered on it.
"""

from __future__ import annotations

import functools
import itertools
import os
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from loguru import logger

from modcoord.supervisor.daemon.accept_gate import (
    ACCEPT_PAUSE_S,
    FD_RESERVE,
    AcceptGate,
    raise_nofile_limit,
)
from modcoord.supervisor.daemon.closing import close_connection, shutdown
from modcoord.supervisor.daemon.connection import (
    Connection,
    PeerCredentials,
    peer_credentials,
)
from modcoord.supervisor.daemon.engine import ServerBackend
from modcoord.supervisor.daemon.flow import (
    DEFAULT_BACKLOG_HIGH_WATER,
    DEFAULT_BACKLOG_LOW_WATER,
    DEFAULT_BACKLOG_STALL_S,
    LIMIT_LOG_INTERVAL_S,
    FlowHooks,
    PublisherFlow,
)
from modcoord.supervisor.daemon.input_budget import (
    DEFAULT_FRAME_TIMEOUT_S,
    DEFAULT_MAX_INPUT_BYTES,
    SMALL_FRAME_BYTES,
    InputBudget,
)
from modcoord.supervisor.daemon.listener import (
    LISTENER,
    accept_connections,
    bind_listener,
    close_listener,
    listen,
    refuse_peer,
    remove_stale_socket,
    unlisten,
)
from modcoord.supervisor.daemon.loop import (
    WAKER,
    drain_output,
    drain_waker,
    on_event,
    run,
    run_posts,
    run_timers,
    timer_timeout,
    update_interest,
)
from modcoord.supervisor.daemon.requests import Requests
from modcoord.supervisor.daemon.statistics import COUNTERS, ServerStatistics
from modcoord.supervisor.protocol.errors import FramingError, error_to_wire
from modcoord.supervisor.protocol.framing import (
    RESPONSE,
    encode_frame,
)
from modcoord.supervisor.protocol.limits import (
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_OUTPUT_BUDGET_BYTES,
    DEFAULT_OUTPUT_CONNECTION_BYTES,
    DEFAULT_OUTPUT_STALL_S,
)
from modcoord.supervisor.protocol.waiting import SpinPolicy

__all__ = [
    "ACCEPT_PAUSE_S",
    "DEFAULT_BACKLOG_HIGH_WATER",
    "DEFAULT_BACKLOG_LOW_WATER",
    "DEFAULT_BACKLOG_STALL_S",
    "DEFAULT_FRAME_TIMEOUT_S",
    "DEFAULT_MAX_BUFFER_BYTES",
    "DEFAULT_MAX_INPUT_BYTES",
    "DEFAULT_OUTPUT_BUDGET_BYTES",
    "DEFAULT_OUTPUT_STALL_S",
    "FD_RESERVE",
    "LIMIT_LOG_INTERVAL_S",
    "SMALL_FRAME_BYTES",
    "Connection",
    "CoordinatorLike",
    "PeerCredentials",
    "Server",
    "ServerBackend",
    "ServerStatistics",
    "peer_credentials",
    "raise_nofile_limit",
]

DEFAULT_MAX_BUFFER_BYTES = DEFAULT_OUTPUT_CONNECTION_BYTES
_RECV_SIZE = 256 * 1024
_log = logger.bind(actor="server")


CoordinatorLike = ServerBackend
"""The former name of :class:`~modcoord.supervisor.daemon.engine.ServerBackend`."""


def _never() -> bool:
    return False


class Server:
    """The Unix-socket server in front of the coordinator.

    Args:
        coordinator: the façade requests go to (see :class:`CoordinatorLike`).
        socket_path: where to listen; the parent directory must exist (its mode is the
            caller's business). A stale socket file there is replaced; a live one is not.
        max_frame_bytes: largest inbound frame body; larger is broken framing.
        control_workers: threads running control calls.
        allowed_uid: the only peer uid accepted (default: this process's uid).
        max_buffer_bytes: a connection's unsent output above which output pressure is on
            (``daemon.output.max_connection_bytes``; see the module doc).
        output_budget_bytes: all connections' unsent output above which output pressure
            is on (``daemon.output.max_total_bytes``).
        output_stall_s: under output pressure, how long a connection may take none of
            its queued output before it is disconnected as not reading
            (``daemon.output.stall_timeout_s``).
        monotonic: the clock the output stall timeout is measured with (a test injects
            a ``MockClock``'s ``monotonic``).
        drain_timeout: on stop, how long to keep flushing queued output before closing.
        backlog_high_water: publish backlog above which publishers are paused (``None``:
            no flow control; also off when the coordinator has no ``publish_backlog``).
        backlog_low_water: publish backlog below which paused publishers resume.
        backlog_stall_s: a pause during which the backlog does not fall for this long
            ends anyway (and flow control rests for as long again).
        frame_timeout_s: how long an incomplete frame may stay incomplete (see the
            module docstring).
        max_input_bytes: the input budget: what incomplete large frames may reserve,
            across connections.
        max_connections: the connection cap (default: ``RLIMIT_NOFILE`` less the
            descriptors open at start and :data:`FD_RESERVE`).
        clock: where the input and accept limits read the time (default
            ``time.monotonic``; tests inject a fake).

    Raises:
        ValueError: ``max_frame_bytes`` below 64, or water marks not
            ``0 <= low < high``, or a non-positive ``backlog_stall_s``,
            ``frame_timeout_s``, ``max_input_bytes``, ``max_connections``,
            ``max_buffer_bytes``, ``output_budget_bytes`` or ``output_stall_s``.
    """

    def __init__(self, coordinator: ServerBackend, socket_path: str | os.PathLike[str],
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, control_workers: int = 2,
                 *, allowed_uid: int | None = None,
                 max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
                 drain_timeout: float = 1.0,
                 backlog_high_water: int | None = DEFAULT_BACKLOG_HIGH_WATER,
                 backlog_low_water: int = DEFAULT_BACKLOG_LOW_WATER,
                 backlog_stall_s: float = DEFAULT_BACKLOG_STALL_S,
                 frame_timeout_s: float = DEFAULT_FRAME_TIMEOUT_S,
                 max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
                 max_connections: int | None = None,
                 output_budget_bytes: int = DEFAULT_OUTPUT_BUDGET_BYTES,
                 output_stall_s: float = DEFAULT_OUTPUT_STALL_S,
                 clock: Callable[[], float] | None = None) -> None:
        if max_frame_bytes < 64:
            raise ValueError("max_frame_bytes must be at least 64")
        if frame_timeout_s <= 0:
            raise ValueError(f"frame_timeout_s must be positive, got {frame_timeout_s}")
        if max_input_bytes <= 0:
            raise ValueError(f"max_input_bytes must be positive, got {max_input_bytes}")
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        if backlog_high_water is not None and not 0 <= backlog_low_water < backlog_high_water:
            raise ValueError("backlog water marks must satisfy 0 <= low < high, got "
                             f"low={backlog_low_water}, high={backlog_high_water}")
        if backlog_stall_s <= 0:
            raise ValueError("backlog_stall_s must be positive")
        if max_buffer_bytes <= 0 or output_budget_bytes <= 0 or output_stall_s <= 0:
            raise ValueError("max_buffer_bytes, output_budget_bytes and output_stall_s must "
                             "be positive")
        self.coordinator = coordinator
        self._conns: dict[int, Connection] = {}
        self.socket_path = Path(socket_path)
        self.max_frame_bytes = max_frame_bytes
        self.max_buffer_bytes = max_buffer_bytes
        self.output_budget_bytes = output_budget_bytes
        self.oversized_batch = 0  # the id of the last batch found not to fit one frame
        self.allowed_uid = os.getuid() if allowed_uid is None else allowed_uid
        self.drain_timeout = drain_timeout
        self.undelivered_bytes_at_stop = 0
        self.now: Callable[[], float] = clock or time.monotonic
        overdue_fn = getattr(coordinator, "timers_overdue", None)
        backlog_fn = getattr(coordinator, "publish_backlog", None)
        # Flow control (daemon/flow.py, input_budget.py, accept_gate.py): the rules and
        # their state; they act on the connections only through these callbacks.
        hooks = FlowHooks(update_interest=self._update_interest, close=self._close,
                          count=self.count, now=self.now)
        self._flow = PublisherFlow(
            hooks, conns=self._conns.values,
            backlog=(backlog_fn if backlog_high_water is not None and callable(backlog_fn)
                     else None),
            overdue=(overdue_fn if backlog_high_water is not None and callable(overdue_fn)
                     else _never),
            high_water=backlog_high_water, low_water=backlog_low_water,
            stall_s=backlog_stall_s, max_buffer_bytes=max_buffer_bytes,
            output_budget_bytes=output_budget_bytes, output_stall_s=output_stall_s)
        self._input = InputBudget(hooks, frame_timeout_s=frame_timeout_s,
                                  max_input_bytes=max_input_bytes)
        self._accepting = AcceptGate(
            hooks, connections=self.connections, listen=self._listen,
            unlisten=self._unlisten, max_connections=max_connections or 0)
        # What a Connection calls (ConnectionHost), bound straight to the flow's methods.
        self.output_added = self._flow.output_added
        self.output_held = self._flow.output_held
        self.output_taken = self._flow.output_taken
        self.over_budget = self._flow.over_budget
        self._rbuf = bytearray(_RECV_SIZE)
        self._rview = memoryview(self._rbuf)
        self._selector: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._listener_ino: int | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._io_ident: int | None = None
        self._posts: deque[tuple[str, Connection | None, str]] = deque()
        self._conn_ids = itertools.count(1)
        self._stopping = False
        self._started = False
        self._counters_lock = threading.Lock()
        self._spin = SpinPolicy()  # the I/O thread's polling (see loop.run)
        self._counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        # What each message does (daemon/requests.py).
        self._requests = Requests(
            coordinator, max_frame_bytes=max_frame_bytes, control_workers=control_workers,
            count=self.count, resume=functools.partial(self.post, "resume", reason=""),
            after_publishing=self._flow.after_publishing)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Server:
        """Bind and listen; returns once connections are accepted (queued until served).

        Raises:
            OSError: the path is in use by a live server (``EADDRINUSE``), is not a socket
                (``EEXIST``), or cannot be bound.
            RuntimeError: already started.
        """
        if self._started:
            raise RuntimeError("server already started")
        path = str(self.socket_path)
        remove_stale_socket(path)
        listener = bind_listener(path)
        self._listener = listener
        self._listener_ino = os.stat(path).st_ino
        self._accepting.open()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, LISTENER)
        self._selector.register(self._wake_r, selectors.EVENT_READ, WAKER)
        self._requests.start()
        self._started = True
        self._thread = threading.Thread(target=self._run, name="modcoord-server-io",
                                        daemon=True)
        self._thread.start()
        _log.info("listening", path=path, max_connections=self.max_connections)
        return self

    def stop_accepting(self) -> None:
        """Close the listening socket (existing connections carry on). Idempotent."""
        self.post("stop_accepting", None, "")

    def pause_reading(self) -> None:
        """Take no new work, for a graceful stop: close the listening socket and answer
        every new request with ``ActorStoppedError`` ("daemon: stopping"), while output
        (deliveries, replies to requests already accepted) still flows and callback
        responses are still taken. Idempotent; :meth:`stop` follows."""
        self._requests.refusing = True
        self.post("stop_accepting", None, "")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop: stop accepting, flush queued output (up to ``drain_timeout``), close every
        connection (failing its callbacks, unregistering its modules), remove the socket.

        Safe to call from any thread, including a control thread; idempotent.
        """
        if not self._started or self._stopping:
            self.wait_closed(timeout)
            return
        self._stopping = True
        self._wake()
        self.wait_closed(timeout)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until the I/O thread has finished. Returns whether it has."""
        thread = self._thread
        if thread is None:
            return True
        if threading.current_thread() is thread:
            return False
        thread.join(timeout)
        return not thread.is_alive()

    def connections(self) -> int:
        """Number of open connections."""
        return len(self._conns)

    @property
    def max_connections(self) -> int:
        """The connection cap (``0`` until :meth:`start` derives it)."""
        return self._accepting.max_connections

    @property
    def out_total(self) -> int:
        """Unsent output across connections now (any thread)."""
        return self._flow.out_total

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def statistics(self) -> ServerStatistics:
        """A snapshot of the counters."""
        conns = list(self._conns.values())
        with self._counters_lock:
            c = dict(self._counters)
        backpressure = self._flow.backpressure()
        buffered = self._flow.out_total
        return ServerStatistics(
            socket_path=str(self.socket_path),
            listening=self.listening,
            connections=len(conns),
            buffered_out=buffered,
            held_updates=sum(conn.held_updates for conn in conns),
            buffered_in=sum(conn.decoder.buffered for conn in conns),
            input_reserved=self._input.reserved,
            input_waiting=sum(1 for conn in conns if conn.input_waiting),
            max_connections=self.max_connections,
            backpressure_pauses=backpressure.pauses,
            backpressure_paused_s=backpressure.paused_s,
            backpressure_active=backpressure.active,
            output_pressure=self._flow.output_pressure,
            output_budget_bytes=self.output_budget_bytes,
            **self._spin.statistics()._asdict(),  # written by the I/O thread alone
            **c,
        )

    def __enter__(self) -> Server:
        return self.start() if not self._started else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- cross-thread plumbing ---------------------------------------------------------------

    def count(self, name: str, n: int = 1) -> None:
        with self._counters_lock:
            self._counters[name] += n

    def _wake(self) -> None:
        wake_w = self._wake_w
        if wake_w is None:
            return
        try:
            wake_w.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # the loop is awake already
        except OSError:
            pass  # shutting down

    def post(self, kind: str, conn: Connection | None, reason: str) -> None:
        self._posts.append((kind, conn, reason))
        if threading.get_ident() != self._io_ident:
            self._wake()

    def post_write(self, conn: Connection) -> None:
        self.post("write", conn, "")

    def post_close(self, conn: Connection, reason: str) -> None:
        self.post("close", conn, reason)


    def count_undelivered(self, conn: Connection, updates: int, size: int, reason: str,
                           module_id: str | None = None) -> None:
        """Count and log deliveries discarded (``reason``: why)."""
        with self._counters_lock:
            self._counters["undelivered_updates"] += updates
            self._counters["undelivered_bytes"] += size
        modules = module_id or ", ".join(sorted(conn.module_ids)) or "no module"
        _log.bind(module=module_id).warning(
            "updates not delivered", updates=updates, modules=modules, bytes=size,
            reason=reason)

    def count_undeliverable(self, module_id: str, batch_id: int,
                             failed: Sequence[tuple[Any, str]], sent: int) -> None:
        """Count and log updates left out of a delivery (they cannot be encoded)."""
        self.count("undeliverable_updates", len(failed))
        first, why = failed[0]
        _log.bind(module=module_id).error(
            "updates cannot be delivered: left out of the batch, the others were sent",
            batch=batch_id, left_out=len(failed), first_source=first.module_id,
            first_key=first.key, first_seq=first.seq, why=why, sent=sent)

    # -- the I/O loop (daemon/loop.py), the listening socket (daemon/listener.py) and
    # closing (daemon/closing.py): functions of the server, bound here as its methods.

    _run = run
    _on_event = on_event
    _drain_waker = drain_waker
    _run_posts = run_posts
    _update_interest = update_interest
    _timer_timeout = timer_timeout
    _run_timers = run_timers
    _drain_output = drain_output
    _accept = accept_connections
    _refuse = refuse_peer
    _listen = listen
    _unlisten = unlisten
    _close_listener = close_listener
    _close = close_connection
    _shutdown = shutdown

    # -- reading and writing a connection (I/O thread) ---------------------------------------

    def _on_writable(self, conn: Connection) -> None:
        drained = conn.flush_out()
        if drained is not None:
            conn.out_progress_at = self.now()  # the peer took some: it reads
        if drained is None:
            self._close(conn, "send failed")
        elif drained:
            if conn.close_when_flushed:
                self._close(conn, "closed after error")
            else:
                self._update_interest(conn)

    def _on_readable(self, conn: Connection) -> None:
        # While connections wait for the input budget, one without a reservation is read
        # in small chunks: whatever large frame it may start, it holds little of it.
        size = SMALL_FRAME_BYTES if self._input.tight and not conn.reserved else _RECV_SIZE
        try:
            n = conn.sock.recv_into(self._rbuf, size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close(conn, f"recv failed: {exc}")
            return
        if not n:
            self._close(conn, "peer closed the connection")
            return
        with self._counters_lock:
            counters = self._counters
            counters["bytes_in"] += n
            counters["reads"] += 1
        # The decoder copies what it keeps: the receive buffer is reused at once.
        decoder = conn.decoder
        messages = decoder.feed(self._rview[:n])
        if conn.partial_since is not None or decoder.buffered:
            self._input.track(conn)
        self._with_coalescing(conn, messages)

    def _with_coalescing(self, conn: Connection, messages: Iterable[Any]) -> None:
        out: list[bytes] = []
        conn.coalesce = out
        try:
            self._requests.process(conn, messages)
        except FramingError as exc:
            self.count("framing_errors")
            _log.warning("broken framing", connection=conn.conn_id, error=str(exc))
            out.append(encode_frame([RESPONSE, None, error_to_wire(exc), None]))
            conn.close_when_flushed = True
        finally:
            conn.coalesce = None
            if out:
                conn.send(b"".join(out) if len(out) > 1 else out[0])
        if conn.close_when_flushed and not conn.closed:
            self._close_after_flush(conn)

    def _close_after_flush(self, conn: Connection) -> None:
        conn.reading = False
        conn.paused = True
        conn.backlog.clear()
        if not conn.want_write:
            self._close(conn, "closed after error")
        else:
            self._update_interest(conn)

    def _resume(self, conn: Connection) -> None:
        if conn.close_when_flushed:
            return
        conn.paused = False
        backlog = conn.backlog
        conn.backlog = deque()
        if backlog:
            self._with_coalescing(conn, backlog)
