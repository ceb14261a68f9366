"""What the commands share: finding the daemon, the exit codes, ``--json`` output and
errors in user words.

- :class:`ExitCode` (from :mod:`modcoord.supervisor.exitcodes`) is the exit-code contract.
- A command reports a failure by raising :class:`CliError` (or :class:`UsageError`) with a
  message in the operator's words, the exit code and, for ``--json``, extra fields;
  ``main`` prints it: ``modcoord: <message>`` on stderr and, with ``--json``, the object
  ``{"ok": false, "error": <message>, "exit_code": <code>, ...}`` on stdout.
- :func:`emit` prints a command's answer: the JSON object (with ``"ok": true``) for
  ``--json``, else the human lines.
- :func:`user_error` turns the client's errors (not running, timeout, connection lost, a
  refusal by the daemon) into a :class:`CliError` without the wire's wording.
"""

from __future__ import annotations

import json
import sys
from argparse import ArgumentTypeError, Namespace
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from modcoord.actors.errors import ModcoordError
from modcoord.supervisor.exitcodes import ExitCode

__all__ = [
    "CliError",
    "ExitCode",
    "UsageError",
    "client",
    "emit",
    "error_object",
    "format_uptime",
    "mode_name",
    "print_json",
    "quiet_client_log",
    "runtime_dir",
    "user_error",
]


class CliError(ModcoordError):
    """A command failed; ``message`` is in the operator's words and suggests the fix.

    Attributes:
        code: the exit code (:class:`ExitCode`).
        details: more fields for the ``--json`` error object.
        prefix: what goes before the message on stderr.
    """

    prefix: ClassVar[str] = "modcoord: "

    def __init__(self, message: str, code: int = ExitCode.FAILURE,
                 **details: Any) -> None:
        super().__init__(message)
        self.code = int(code)
        self.details = details


class UsageError(CliError):
    """The command line is wrong (exit 2, like argparse's own errors)."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, ExitCode.USAGE, **details)


def runtime_dir(args: Namespace) -> Path:
    from modcoord.supervisor.protocol.paths import resolve_runtime_dir

    return Path(resolve_runtime_dir(args.runtime_dir))


def client(args: Namespace, timeout: float = 10.0) -> Any:
    """Connect to the daemon of ``--runtime-dir`` (raises NotRunningError if none)."""
    from modcoord.supervisor.client import connect

    return connect(runtime_dir=runtime_dir(args), timeout=timeout, reconnect=False)


def quiet_client_log() -> None:
    """Do not print the client library's log records (``modcoord.client``), e.g. the
    "connection to the daemon lost" that ``stop`` causes by design when the daemon hangs
    up: the command reports what matters itself, in user words. (It imports
    :mod:`logging`, so only the commands that need it call it: ``status --json`` stays
    light.)"""
    import logging

    from modcoord.supervisor.client._log import LOGGER_NAME

    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def emit(args: Namespace, data: dict[str, Any], lines: str | Iterable[str] = ()) -> None:
    """Print a command's answer: with ``--json`` the object ``data`` (``"ok": true`` added
    unless it says otherwise), else ``lines`` (a string or one string per line)."""
    if getattr(args, "json", False):
        print_json({"ok": True, **data})
        return
    for line in [lines] if isinstance(lines, str) else lines:
        print(line)


def error_object(message: str, code: int, details: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """The ``--json`` object of a failure (what ``main`` prints on stdout)."""
    return {**(details or {}), "ok": False, "error": message, "exit_code": int(code)}


def mode_name(value: str) -> str:
    """An argparse ``type=``: the canonical mode name (any case, ``-`` or ``_``).

    Raises:
        ArgumentTypeError: not a mode; argparse then exits 2 (usage) with the message,
            which lists the valid modes. ``start --mode``, ``mode`` and ``config show
            --mode`` all use it, so the mistake reads and exits the same everywhere.
    """
    from modcoord.actors.modes import MODES, mode_or_none

    canonical = mode_or_none(value)
    if canonical is None:
        raise ArgumentTypeError(f"unknown mode {value!r}; choose one of {', '.join(MODES)}")
    return canonical


def user_error(exc: ModcoordError) -> CliError:
    """The client's error ``exc`` as the operator should read it (no wire wording: no
    method prefix, no ``$.field`` path, no remote type name)."""
    from modcoord.actors.errors import (
        CallTimeoutError,
        ConnectionLostError,
        InvalidMessageError,
        NotRunningError,
        RemoteError,
    )

    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, NotRunningError):
        return CliError(str(exc), ExitCode.NOT_RUNNING)
    if isinstance(exc, CallTimeoutError):
        return CliError("the daemon did not answer in time; it may be overloaded or stuck "
                        "(see 'modcoord logs' and 'modcoord status')")
    if isinstance(exc, ConnectionLostError):
        return CliError("the daemon closed the connection before answering (it stopped or "
                        "crashed; see 'modcoord status' and 'modcoord logs')")
    if isinstance(exc, RemoteError):
        return CliError(f"the daemon failed to do it: {exc.remote_message} "
                        "(see 'modcoord logs')")
    if isinstance(exc, InvalidMessageError):
        return CliError(f"the daemon refused it: {_without_wire(str(exc))}")
    return CliError(str(exc))


def _without_wire(text: str) -> str:
    """``"set_mode: 'mode' must be ... - at `$.mode`"`` -> ``"'mode' must be ..."``."""
    from modcoord.supervisor.protocol.calls import METHODS

    head, sep, rest = text.partition(": ")
    if sep and head in METHODS:
        text = rest
    return text.split(" - at `$", 1)[0]


def format_uptime(seconds: float) -> str:
    """Seconds for humans: ``"42s"``, ``"3m 07s"``, ``"2h 03m 14s"``, ``"5d 02h 03m 14s"``."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m {secs:02d}s"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
