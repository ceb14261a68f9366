"""Where the daemon lives: the runtime directory and the files in it (SPEC §5).

The runtime directory is, in order: an explicit argument (``--runtime-dir``),
``$MODCOORD_RUNTIME_DIR``, ``$XDG_RUNTIME_DIR/modcoord``, else ``/tmp/modcoord-$UID``.
It holds the socket (``modcoord.sock``) and the pidfile (``modcoord.pid``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "PIDFILE_NAME",
    "SOCKET_NAME",
    "pidfile_path",
    "resolve_runtime_dir",
    "socket_path",
]

SOCKET_NAME = "modcoord.sock"
PIDFILE_NAME = "modcoord.pid"


def resolve_runtime_dir(arg: str | os.PathLike[str] | None = None) -> Path:
    """Return the runtime directory to use (it is not created here).

    Args:
        arg: an explicit directory (``--runtime-dir``); ``None`` or ``""`` means "use the
            environment".

    Returns:
        ``arg``, else ``$MODCOORD_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/modcoord``, else
        ``/tmp/modcoord-$UID``. Empty environment variables count as unset.
    """
    if arg is not None and str(arg) != "":
        return Path(arg).expanduser()
    explicit = os.environ.get("MODCOORD_RUNTIME_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "modcoord"
    return Path(f"/tmp/modcoord-{os.getuid()}")


def socket_path(runtime_dir: str | os.PathLike[str], name: str = SOCKET_NAME) -> Path:
    """Return the path of the daemon's socket in ``runtime_dir``."""
    return Path(runtime_dir) / name


def pidfile_path(runtime_dir: str | os.PathLike[str]) -> Path:
    """Return the path of the daemon's pidfile in ``runtime_dir``."""
    return Path(runtime_dir) / PIDFILE_NAME
