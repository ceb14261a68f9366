"""The exit codes of ``modcoord``, in ONE place: every command and the daemon process use
these (LSB init-script conventions for ``status``; 78 is ``EX_CONFIG`` of sysexits.h).

This module imports nothing heavy: the command line and the daemon both take it.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ExitCode"]


class ExitCode(IntEnum):
    """What a ``modcoord`` exit status means (the same mistake, the same code, everywhere)."""

    #: It worked (``status``: the daemon runs).
    OK = 0
    #: It failed: the daemon refused or could not do it (a rejected reload, an invalid
    #: config found by ``config validate``, a daemon that did not stop in time), or
    #: ``status`` found a dead daemon's stale pidfile (LSB: "dead and pid file exists").
    FAILURE = 1
    #: The command line is wrong: an unknown command or option, a bad value (an unknown
    #: mode for ``start --mode`` and ``mode`` alike), options that exclude each other.
    USAGE = 2
    #: No daemon runs on the runtime directory (LSB: "not running").
    NOT_RUNNING = 3
    #: The daemon could not start: its config is invalid or a path it writes is unsafe.
    CONFIG = 78

    @property
    def meaning(self) -> str:
        """One line for the docs and ``--help``."""
        return _MEANINGS[self]


_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success (status: the daemon runs)",
    ExitCode.FAILURE: "failure (refused, rejected, timed out; status: dead daemon, stale pidfile)",
    ExitCode.USAGE: "usage error (unknown command, option or mode; a bad value)",
    ExitCode.NOT_RUNNING: "no daemon runs on the runtime directory",
    ExitCode.CONFIG: "start refused: invalid config or unsafe path",
}
