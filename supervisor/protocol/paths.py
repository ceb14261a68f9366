"""Where the daemon lives: the runtime directory and the files in it.

The runtime directory is, in order: an explicit argument (``--runtime-dir``),
``$MODCOORD_RUNTIME_DIR``, ``$XDG_RUNTIME_DIR/modcoord``, else ``/tmp/modcoord-$UID``.
It holds the socket (``modcoord.sock``) and the pidfile (``modcoord.pid``).

The daemon often runs as root, so the directories it writes into and the files it writes
are checked (:func:`prepare_private_dir`, :func:`check_writable_dir`,
:func:`open_for_writing`, :func:`write_file_atomic`):

- a directory must belong to the daemon's user and must not be writable by group or
  others (else another user could plant a symlink in it); a symlink to it is followed only
  if it belongs to the daemon's user or root;
- files are opened with ``O_NOFOLLOW`` (a planted symlink is refused, never written
  through) and must be regular files; a file that is rewritten whole (``daemon.json``) is
  written to a new temporary file (``O_EXCL``) and renamed over the old one.

Every refusal raises :class:`UnsafePathError`, naming the path, its owner and mode and the
fix; the daemon exits with code 78 for it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import stat
from pathlib import Path

from modcoord.actors.errors import ModcoordError

__all__ = [
    "PIDFILE_NAME",
    "SOCKET_NAME",
    "UnsafePathError",
    "check_writable_dir",
    "open_for_writing",
    "pidfile_path",
    "prepare_private_dir",
    "resolve_runtime_dir",
    "resolve_state_dir",
    "socket_path",
    "write_file_atomic",
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


def resolve_state_dir(arg: str | os.PathLike[str] | None = None) -> Path:
    """Return the state directory (persistent: the history database; not created here).

    Returns:
        ``arg`` (``--state-dir``), else ``$MODCOORD_STATE_DIR``, else
        ``$XDG_STATE_HOME/modcoord``, else ``~/.local/state/modcoord``. Empty values count
        as unset.
    """
    if arg is not None and str(arg) != "":
        return Path(arg).expanduser()
    explicit = os.environ.get("MODCOORD_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg:
        return Path(xdg) / "modcoord"
    return Path.home() / ".local" / "state" / "modcoord"


def socket_path(runtime_dir: str | os.PathLike[str], name: str = SOCKET_NAME) -> Path:
    """Return the path of the daemon's socket in ``runtime_dir``."""
    return Path(runtime_dir) / name


def pidfile_path(runtime_dir: str | os.PathLike[str]) -> Path:
    """Return the path of the daemon's pidfile in ``runtime_dir``."""
    return Path(runtime_dir) / PIDFILE_NAME


class UnsafePathError(ModcoordError):
    """A directory or file the daemon would write is unsafe or unusable (wrong owner,
    writable by others, a symlink, not a directory or regular file, not writable).

    Attributes:
        path: the offending path.
    """

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        super().__init__(message)
        self.path = str(path)


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
             (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def _describe(st: os.stat_result) -> str:
    return f"owner {_user(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):04o}"


def prepare_private_dir(path: Path, role: str, *, tighten: bool) -> Path:
    """Create ``path`` (mode 0700, with parents) if missing, then check that it is safe to
    write into.

    Args:
        path: the directory.
        role: what it is for the messages ("runtime directory", "log directory").
        tighten: remove the group/other read and search bits of an existing directory
            (the runtime directory is private); write bits are never fixed silently.

    Returns:
        ``path``.

    Raises:
        UnsafePathError: it cannot be created; it is not a directory; it (or a symlink
            naming it) belongs to another user; or it is writable by group or others.
    """
    path = Path(path)
    me = os.geteuid()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        pass  # not a directory: reported below
    except OSError as exc:
        raise UnsafePathError(path, (
            f"{role} {path} cannot be created: {exc.strerror}; create it or choose "
            "another one")) from None
    try:
        link = path.lstat()
        st = path.stat()
    except OSError as exc:
        raise UnsafePathError(path, f"{role} {path} cannot be examined: {exc.strerror}"
                              ) from None
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (me, 0):
        raise UnsafePathError(path, (
            f"{role} {path} is a symlink belonging to {_user(link.st_uid)}, not to "
            f"{_user(me)} the daemon runs as; remove it or choose another directory"))
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(path, (
            f"{role} {path} is {_kind(st.st_mode)}, not a directory ({_describe(st)}); "
            "remove it or choose another one"))
    if st.st_uid != me:
        raise UnsafePathError(path, (
            f"{role} {path} belongs to {_user(st.st_uid)}, not to {_user(me)} the daemon "
            f"runs as ({_describe(st)}); use a directory of your own"))
    if st.st_mode & 0o022:
        raise UnsafePathError(path, (
            f"{role} {path} is writable by group or others ({_describe(st)}), so another "
            f"user could plant files in it; run 'chmod go-w {path}' or choose another one"))
    if tighten and st.st_mode & 0o077:
        path.chmod(0o700)
    return path


def check_writable_dir(path: Path, role: str) -> None:
    """Check that the daemon can create files in the directory ``path`` (by creating and
    removing a probe file, which also works for root and read-only file systems).

    Raises:
        UnsafePathError: naming the directory and why.
    """
    probe = Path(path) / f".modcoord-probe-{os.getpid()}"
    try:
        with contextlib.suppress(FileNotFoundError):
            probe.unlink()
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except OSError as exc:
        raise UnsafePathError(path, (
            f"{role} {path} is not writable: {exc.strerror}; fix its permissions or "
            "choose another one")) from None
    os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        probe.unlink()


def _refusal(path: Path, exc: OSError) -> UnsafePathError:
    if exc.errno == errno.ELOOP:
        return UnsafePathError(path, (
            f"{path} is a symbolic link; the daemon does not write through symlinks "
            "(remove it)"))
    if exc.errno == errno.ENXIO:  # a FIFO without reader, opened non-blocking
        return UnsafePathError(path, f"{path} is a FIFO, not a regular file (remove it)")
    return UnsafePathError(path, f"cannot open {path}: {exc.strerror}")


def open_for_writing(path: Path, flags: int, mode: int = 0o600) -> int:
    """Open ``path`` for writing (``flags``: e.g. ``O_RDWR | O_CREAT``), refusing symlinks
    and anything but a regular file; returns a blocking, close-on-exec descriptor.

    The open is non-blocking (a planted FIFO or device cannot block it); ``O_NONBLOCK`` is
    cleared once ``fstat`` shows a regular file.

    Raises:
        UnsafePathError: the final component is a symlink, or not a regular file, or the
            open failed (its reason in the message).
    """
    path = Path(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                     mode)
    except OSError as exc:
        raise _refusal(path, exc) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(path, (
                f"{path} is {_kind(st.st_mode)}, not a regular file ({_describe(st)}); "
                "the daemon writes only regular files (remove it)"))
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_file_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with a file holding ``data``: written to a new temporary file
    (``O_EXCL | O_NOFOLLOW``) beside it, then renamed over it. A symlink at ``path`` is
    replaced, never followed.

    Raises:
        UnsafePathError: the temporary file cannot be created or renamed (the reason in the
            message); ``path`` is then left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a leftover of a daemon that had our pid: never ours to follow
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode)
    except OSError as exc:
        raise _refusal(tmp, exc) from None
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise UnsafePathError(path, f"cannot write {path}: {exc.strerror}") from None
