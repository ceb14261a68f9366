"""The server's accept limits: connections are capped below the descriptor limit (flow
control, like :mod:`~modcoord.supervisor.daemon.flow`, through its :class:`FlowHooks`).

:class:`AcceptGate`:

- The cap is ``RLIMIT_NOFILE`` less the descriptors open at start and
  :data:`FD_RESERVE`. At the cap a new peer gets a ``ConnectionRefused`` error frame
  naming the limit and the fix, and is closed (``refused_at_limit``). If ``accept``
  fails (``EMFILE``), a reserve descriptor is given up to accept and refuse the pending
  peer, then taken back (``accept_errors``).
- Either way accepting rests :data:`ACCEPT_PAUSE_S` (the listener leaves the selector: no
  busy loop; ``accept_pauses``), logged at most once per
  :data:`~modcoord.supervisor.daemon.flow.LIMIT_LOG_INTERVAL_S` with the count since.
  Existing connections are served throughout.

:func:`raise_nofile_limit` lifts the soft descriptor limit at start; :func:`connection_cap`
is the cap it leaves.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
from collections.abc import Callable
from pathlib import Path

from loguru import logger

from modcoord.supervisor.daemon.flow import LIMIT_LOG_INTERVAL_S, FlowHooks
from modcoord.supervisor.protocol.framing import RESPONSE, encode_frame

__all__ = [
    "ACCEPT_PAUSE_S",
    "FD_RESERVE",
    "AcceptGate",
    "connection_cap",
    "raise_nofile_limit",
]

FD_RESERVE = 32
"""Descriptors kept free of connections, for the daemon's own work."""
ACCEPT_PAUSE_S = 0.25
"""How long accepting rests at the connection or descriptor limit."""

_log = logger.bind(actor="server")


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
