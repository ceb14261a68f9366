"""The server's I/O loop: one ``selectors`` loop over the listener and every connection.

The loop runs on the server's one I/O thread and keeps itself free of blocking work. Each
round it waits for events (right after activity it first polls for a moment, when that
pays: :class:`~modcoord.supervisor.protocol.waiting.SpinPolicy`), serves them (the
listener accepts, a connection writes then reads), runs the jobs other threads posted
(:meth:`~modcoord.supervisor.daemon.server.Server.post`: a write pending, a close, a
resume, output pressure, stop accepting; posting from another thread wakes the loop
through a socket pair), and calls flow control at its fixed points (the publish backlog
while throttling, the input and accept timers when due, the output while under pressure;
the rules: :mod:`~modcoord.supervisor.daemon.flow`,
:mod:`~modcoord.supervisor.daemon.input_budget`, :mod:`~modcoord.supervisor.daemon.accept_gate`).
A connection's selector interest
follows its state (:func:`update_interest`). On stop, queued output is flushed for up to
``drain_timeout`` (:func:`drain_output`).

Each function taking a ``server`` is a method of the server (bound in its class body), run
on the I/O thread.
"""

from __future__ import annotations

import contextlib
import selectors
import threading
import time
from typing import TYPE_CHECKING, Any

from loguru import logger

from modcoord.supervisor.daemon.connection import Connection
from modcoord.supervisor.daemon.listener import LISTENER

if TYPE_CHECKING:
    from modcoord.supervisor.daemon.server import Server

__all__ = ["WAKER", "drain_output", "drain_waker", "on_event", "run", "run_posts",
           "run_timers", "timer_timeout", "update_interest"]

WAKER = object()
"""The selector data of the waker socket (what other threads write to wake the loop)."""

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_log = logger.bind(actor="server")


def run(server: Server) -> None:
    server._io_ident = server._requests.io_ident = threading.get_ident()
    selector = server._selector
    assert selector is not None
    busy = False
    perf = time.perf_counter
    spin = server._spin
    flow, inputs, accepting = server._flow, server._input, server._accepting
    try:
        while not server._stopping:
            try:
                events: list[tuple[selectors.SelectorKey, int]] = []
                consulted = busy and not flow.throttling  # the policy decides this wait
                spin_s = spin.spin_budget() if consulted else 0.0
                if spin_s:
                    # Adaptive polling: right after activity, poll for a moment
                    # before blocking. A request-reply client sends its next request
                    # within tens of µs; blocking would let this CPU idle, and waking
                    # an idle virtual CPU costs ~50 µs, more than serving the call.
                    # Only when it pays (protocol/waiting.py): never without an idle
                    # CPU, nor for a while after polls that saw nothing.
                    until = perf() + spin_s
                    while not events and perf() < until:
                        events = selector.select(0)
                    spin.spun(bool(events))
                if not events:
                    timeout = flow.poll_timeout()
                    if inputs.due() is not None or accepting.due() is not None:
                        timeout = server._timer_timeout(timeout)
                    blocked_at = perf()
                    events = selector.select(timeout)
                    if consulted and not spin_s and events:
                        spin.blocked(perf() - blocked_at)
                busy = bool(events)
            except InterruptedError:
                continue
            for key, mask in events:
                server._on_event(key.data, mask)
            server._run_posts()
            if flow.throttling:
                flow.check_backlog()
            if inputs.due() is not None or accepting.due() is not None:
                server._run_timers()
            if flow.output_pressure:
                flow.check_output()
        server._shutdown()
    except BaseException:
        _log.opt(exception=True).critical("server I/O loop failed")
        with contextlib.suppress(Exception):
            server._shutdown()
        raise


def on_event(server: Server, data: Any, mask: int) -> None:
    try:
        if data is LISTENER:
            server._accept()
        elif data is WAKER:
            server._drain_waker()
        else:
            conn: Connection = data
            if mask & _WRITE and not conn.closed:
                server._on_writable(conn)
            if (mask & _READ and not conn.closed and not conn.throttled
                    and not conn.input_waiting):
                server._on_readable(conn)
    except Exception:
        server.count("internal_errors")
        _log.opt(exception=True).error("unexpected error in the I/O loop")
        if isinstance(data, Connection):
            server._close(data, "internal error")


def drain_waker(server: Server) -> None:
    assert server._wake_r is not None
    try:
        while server._wake_r.recv(4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def run_posts(server: Server) -> None:
    posts = server._posts
    while posts:
        kind, conn, reason = posts.popleft()
        try:
            if kind == "write":
                if conn is not None and not conn.closed:
                    conn.out_progress_at = server.now()  # output starts waiting
                    server._update_interest(conn)
            elif kind == "close":
                if conn is not None:
                    server._close(conn, reason)
            elif kind == "resume":
                if conn is not None and not conn.closed:
                    server._resume(conn)
            elif kind == "pressure":
                server._flow.start_output_pressure()
            elif kind == "stop_accepting":
                server._close_listener()
            elif kind == "release_buffers" and conn is not None and not conn.closed:
                conn.release_buffers_now()
        except Exception:
            server.count("internal_errors")
            _log.opt(exception=True).error("error handling a job", kind=kind)
            if conn is not None:
                server._close(conn, "internal error")


def update_interest(server: Server, conn: Connection) -> None:
    """Register the selector interest ``conn`` needs now (read unless it is closing or
    throttled, write while output is queued); a no-op when unchanged."""
    selector = server._selector
    assert selector is not None
    events = (_READ if conn.reading and not conn.throttled and not conn.input_waiting
              else 0) | (_WRITE if conn.want_write else 0)
    if events == conn.events:
        return
    if events == 0:
        if not conn.reading:
            # Nothing to wait for: it was closing once flushed.
            server._close(conn, "closed after error")
            return
        selector.unregister(conn.sock)  # throttled, nothing to send
    elif conn.events == 0:
        selector.register(conn.sock, events, conn)
    else:
        selector.modify(conn.sock, events, conn)
    conn.events = events


def timer_timeout(server: Server, timeout: float | None) -> float:
    """The select timeout that wakes the loop for the next input or accept timer."""
    due = min(d for d in (server._input.due(), server._accepting.due(), float("inf"))
              if d is not None)
    wait = max(0.0, due - server.now())
    return wait if timeout is None else min(timeout, wait)


def run_timers(server: Server) -> None:
    now = server.now()
    server._accepting.run(now)
    server._input.run(now)


def drain_output(server: Server) -> None:
    """Keep sending queued output for up to ``drain_timeout`` seconds."""
    assert server._selector is not None
    deadline = time.monotonic() + server.drain_timeout
    while True:
        pending = [c for c in server._conns.values() if c.want_write and not c.closed]
        if not pending:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            lost = sum(c.buffered() for c in pending)
            server.undelivered_bytes_at_stop = lost
            _log.warning(
                "drain timeout: output to slow clients not delivered at stop; raise "
                "shutdown_timeout_s in daemon.yaml", timeout_s=server.drain_timeout,
                bytes=lost, clients=len(pending))
            return
        for conn in pending:
            conn.reading = False
            server._update_interest(conn)
        for key, mask in server._selector.select(min(remaining, 0.05)):
            data = key.data
            if isinstance(data, Connection) and mask & selectors.EVENT_WRITE:
                server._on_writable(data)
            elif data is WAKER:
                server._drain_waker()
        server._run_posts()
