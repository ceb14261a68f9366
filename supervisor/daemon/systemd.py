"""A tiny ``sd_notify``: tell systemd about readiness and reloads, without libsystemd.

systemd passes the address of its notification socket in ``$NOTIFY_SOCKET``: a path, or an
abstract socket name written with a leading ``@``. A notification is one datagram of
newline-separated ``KEY=VALUE`` assignments, e.g. ``READY=1`` or
``RELOADING=1\\nMONOTONIC_USEC=123`` (for ``Type=notify-reload`` services).
"""

from __future__ import annotations

import os
import socket
import time

from loguru import logger

__all__ = ["monotonic_usec", "reloading_state", "sd_notify"]


def monotonic_usec() -> int:
    """Return ``CLOCK_MONOTONIC`` in microseconds, as systemd's ``MONOTONIC_USEC`` expects.

    This is a protocol value that systemd compares with its own clock, so it is read from
    the system, not from an injected clock.
    """
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def reloading_state() -> str:
    """Return the notification that announces a reload: ``RELOADING=1`` with the time."""
    return f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}"


def sd_notify(state: str) -> bool:
    """Send ``state`` to systemd's notification socket, if there is one.

    Args:
        state: newline-separated ``KEY=VALUE`` assignments, e.g. ``"READY=1"``.

    Returns:
        True if the datagram was sent; False when ``$NOTIFY_SOCKET`` is unset or empty,
        names an unsupported address (such as ``vsock:``), or sending failed (the
        failure is logged at DEBUG; never raised, as notifications are best effort).
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        target = "\0" + address[1:]
    elif address.startswith("/"):
        target = address
    else:
        logger.bind(actor="daemon", address=address).debug(
            "unsupported NOTIFY_SOCKET address")
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        logger.bind(actor="daemon", address=address, error=str(exc)).debug(
            "sd_notify failed")
        return False
    return True
