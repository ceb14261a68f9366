"""Closing a connection of the server, and the server's shutdown.

When a :class:`~modcoord.supervisor.daemon.connection.Connection` closes, for any reason,
whatever is discarded (the deliveries still queued or held for it) is counted
(``undelivered_updates``, ``undelivered_bytes``) and logged with the modules concerned,
its input reservation is released, its outstanding callbacks are answered with
``"connection closed"`` and its modules are unregistered. At shutdown the listener is
closed, the posted jobs run, queued output is flushed (up to ``drain_timeout``), every
connection is closed (``"server stopping"``) and the request threads are stopped.

Each function taking a ``server`` is a method of the server (bound in its class body).
"""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING

from loguru import logger

from modcoord.supervisor.daemon.connection import Connection, safe_reply

if TYPE_CHECKING:
    from modcoord.supervisor.daemon.server import Server

__all__ = ["close_connection", "shutdown"]

_log = logger.bind(actor="server")


def close_connection(server: Server, conn: Connection, reason: str) -> None:
    with conn.lock:
        if conn.closed:
            return
        conn.closed = True
        callbacks = conn.callbacks
        conn.callbacks = {}
        modules = list(conn.module_ids)
        lost_bytes = len(conn.out)
        lost_updates = sum(n for _, n in conn.out_frames) + conn.held_updates
        conn.out_frames.clear()
        conn.out.clear()
        conn.held.clear()
        conn.held_updates = 0
        server.output_taken(conn, lost_bytes, 0)
    server._conns.pop(conn.conn_id, None)
    if conn.partial_since is not None or conn.reserved or conn.input_waiting:
        server._input.end(conn)
    if server._selector is not None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            server._selector.unregister(conn.sock)
    with contextlib.suppress(OSError):
        conn.sock.shutdown(socket.SHUT_RDWR)
    conn.sock.close()
    conn.backlog.clear()
    server.count("closed")
    _log.debug("connection closed", connection=conn.conn_id, reason=reason)
    if lost_updates:
        server.count_undelivered(conn, lost_updates, lost_bytes,
                                 f"connection {conn.conn_id} closed ({reason}) before "
                                 "taking them")
    if callbacks:
        server.count("callbacks_failed", len(callbacks))
        for reply in callbacks.values():
            safe_reply(reply, None, "connection closed")
    if modules:
        server._requests.unregister_all(conn, modules)


def shutdown(server: Server) -> None:
    server._close_listener()
    server._run_posts()
    server._drain_output()
    for conn in list(server._conns.values()):
        server._close(conn, "server stopping")
    server._requests.close(timeout=5.0)
    if server._selector is not None:
        server._selector.close()
    server._accepting.close()
    for s in (server._wake_r, server._wake_w):
        if s is not None:
            s.close()
    server._wake_w = None
    _log.info("server stopped")
