"""The daemon's listening socket: binding it, accepting connections, and closing it.

The :class:`~modcoord.supervisor.daemon.server.Server` listens on a Unix socket (mode 0600,
bound under a ``0o177`` umask). A stale socket file at the path is replaced; a live one (a
server answers on it) is not, nor anything that is not a socket. Each accepted peer's
credentials are read (``SO_PEERCRED``): a peer of another uid is refused with a
``PermissionError`` frame and closed. How many connections are accepted, and when
accepting rests, is the accept gate's business
(:class:`~modcoord.supervisor.daemon.accept_gate.AcceptGate`), which takes the listener out of the
selector and puts it back through :func:`unlisten` and :func:`listen`. Closing the listener
removes the socket file if it is still the one this server bound.

Each function taking a ``server`` is a method of the server (bound in its class body), run
on the I/O thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import stat
from typing import TYPE_CHECKING

from loguru import logger

from modcoord.supervisor.daemon.connection import Connection, PeerCredentials, peer_credentials
from modcoord.supervisor.protocol.framing import RESPONSE, encode_frame

if TYPE_CHECKING:
    from modcoord.supervisor.daemon.server import Server

__all__ = ["LISTENER", "accept_connections", "bind_listener", "close_listener", "listen",
           "refuse_peer", "remove_stale_socket", "unlisten"]

LISTENER = object()
"""The selector data of the listening socket."""

_log = logger.bind(actor="server")


def bind_listener(path: str) -> socket.socket:
    """A non-blocking Unix socket listening on ``path`` (mode 0600).

    Raises:
        OSError: the path cannot be bound.
    """
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)
        try:
            listener.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        listener.listen(256)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    return listener


def remove_stale_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        _log.info("removed a stale socket", path=path)
        return
    except OSError:
        pass
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"a server is already listening on {path}")


def accept_connections(server: Server) -> None:
    listener = server._listener
    if listener is None:
        return
    for _ in range(64):
        if server._accepting.at_cap():
            server._accepting.shed(listener)
            return
        try:
            sock, _addr = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            server._accepting.accept_failed(listener, exc)
            return
        peer = peer_credentials(sock)
        if peer is None or peer.uid != server.allowed_uid:
            server._refuse(sock, peer)
            continue
        sock.setblocking(False)
        conn = Connection(server, sock, peer, next(server._conn_ids))
        server._conns[conn.conn_id] = conn
        assert server._selector is not None
        server._selector.register(sock, selectors.EVENT_READ, conn)
        server.count("accepted")
        _log.debug("connection accepted", connection=conn.conn_id, peer_pid=peer.pid)


def refuse_peer(server: Server, sock: socket.socket, peer: PeerCredentials | None) -> None:
    server.count("refused")
    if peer is None:
        reason = "peer credentials unavailable"
    else:
        reason = f"peer uid {peer.uid} (pid {peer.pid}) is not allowed"
    _log.warning("refused a connection", reason=reason)
    try:
        sock.setblocking(False)
        sock.send(encode_frame([RESPONSE, None, ["PermissionError", f"refused: {reason}"],
                                None]))
    except OSError:
        pass
    finally:
        sock.close()


def listen(server: Server) -> None:
    """Put the listener (back) in the selector: accepting resumes."""
    listener = server._listener
    if listener is not None and server._selector is not None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            server._selector.register(listener, selectors.EVENT_READ, LISTENER)


def unlisten(server: Server) -> None:
    """Take the listener out of the selector: accepting rests."""
    listener = server._listener
    if listener is not None and server._selector:
        with contextlib.suppress(KeyError, ValueError, OSError):
            server._selector.unregister(listener)


def close_listener(server: Server) -> None:
    listener = server._listener
    if listener is None:
        return
    server._listener = None
    server._accepting.stop()
    if server._selector is not None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            server._selector.unregister(listener)
    listener.close()
    path = str(server.socket_path)
    try:
        if os.stat(path).st_ino == server._listener_ino:
            os.unlink(path)
    except OSError:
        pass
    _log.info("stopped listening", path=path)
