"""Where the daemon lives: the runtime directory and the files in it (SPEC §5).

The runtime directory is, in order: an explicit argument (``--runtime-dir``),
``$MODCOORD_RUNTIME_DIR``, ``$XDG_RUNTIME_DIR/modcoord``, else ``/tmp/modcoord-$UID``.
It holds the socket (``modcoord.sock``) and the pidfile (``modcoord.pid``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = [
    "PIDFILE_NAME",
    "SOCKET_NAME",
    "ensure_runtime_dir",
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


def ensure_runtime_dir(runtime_dir: str | os.PathLike[str]) -> Path:
    """Create ``runtime_dir`` with mode 0700 if needed and check that it is safe to use.

    An existing directory owned by this user has its mode tightened to 0700.

    Raises:
        PermissionError: the path exists but is not a directory owned by this user (another
            user could then reach the socket).
        OSError: the directory cannot be created.
    """
    path = Path(runtime_dir)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionError(f"runtime directory {path} is not a directory")
    if st.st_uid != os.getuid():
        raise PermissionError(
            f"runtime directory {path} belongs to uid {st.st_uid}, not to this user "
            f"({os.getuid()}); choose another with --runtime-dir"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path
