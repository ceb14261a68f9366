"""The log's format: the file's name, the level table, and the human-readable line.

What every side of the log agrees on lives here: the file name (:data:`LOG_FILE`), the
actor of a record with none bound (:data:`DEFAULT_ACTOR`), the severity of each level
(:data:`LEVELS`, :func:`level_number`; a level filter keeps that level and above), the lnav
format shipped in the package data (:func:`lnav_format_path`), and the one rendering of a
record as a line for people (:func:`format_record`), used by the daemon's stderr sink
(:mod:`modcoord.supervisor.daemon.logs`) and by ``modcoord logs``
(:mod:`modcoord.supervisor.daemon.log_reader` reads the records).

Rendering never fails on a record's content: a missing or unparsable time is shown as it
is (or ``??:??:??.???``), a missing level as ``?``, and a value JSON cannot encode as its
``str()``. Colour only on a terminal and never with ``NO_COLOR`` (:func:`color_wanted`).
An unknown level name is refused by :func:`level_number` with a ``ValueError`` naming the
known ones.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from loguru import logger

__all__ = [
    "DEFAULT_ACTOR",
    "LEVELS",
    "LNAV_FORMAT",
    "LOG_FILE",
    "color_wanted",
    "format_record",
    "level_number",
    "lnav_format_path",
]

LOG_FILE = "modcoord.jsonl"
#: The lnav format file for the JSON log, shipped in the package data.
LNAV_FORMAT = Path(__file__).resolve().parent / "data" / "modcoord.lnav.json"
DEFAULT_ACTOR = "daemon"

#: Severity of loguru's standard levels; a level filter keeps this level and above.
LEVELS: dict[str, int] = {
    "TRACE": 5, "DEBUG": 10, "INFO": 20, "SUCCESS": 25, "WARNING": 30, "ERROR": 40,
    "CRITICAL": 50,
}

# Fields format_record shows in fixed places rather than as key=value.
_SHOWN_APART = frozenset(("time", "level", "message", "actor", "mode", "pid", "module",
                          "source", "exception"))


def _json_default(value: Any) -> str:
    return str(value)


def color_wanted(stream: Any) -> bool:
    """Whether to colour what goes to ``stream``: only a terminal, and never when
    ``NO_COLOR`` is set to a non-empty value (https://no-color.org). A stream without a
    usable ``isatty`` (closed, replaced) gets no colour."""
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def lnav_format_path() -> Path:
    """Return the path of the packaged lnav format file (``lnav -i PATH`` installs it)."""
    return LNAV_FORMAT


def level_number(level: str | int) -> int:
    """Return the severity number of a level name (case-insensitive) or number.

    Raises:
        ValueError: if the name is neither a standard nor a registered loguru level.
    """
    if isinstance(level, int):
        return level
    name = str(level).strip().upper()
    if name in LEVELS:
        return LEVELS[name]
    try:
        return int(logger.level(name).no)
    except ValueError:
        raise ValueError(
            f"unknown log level {level!r}; choose one of {', '.join(LEVELS)}"
        ) from None


# --------------------------------------------------------------------------- formatting

_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_WHO = "\x1b[36m"
_LEVEL_COLORS: dict[str, str] = {
    "TRACE": "\x1b[36m",          # cyan
    "DEBUG": "\x1b[34m",          # blue
    "INFO": "\x1b[1m",            # bold
    "SUCCESS": "\x1b[1;32m",      # bold green
    "WARNING": "\x1b[1;33m",      # bold yellow
    "ERROR": "\x1b[1;31m",        # bold red
    "CRITICAL": "\x1b[1;37;41m",  # bold white on red
}


def _clock_time(value: Any) -> str:
    if not isinstance(value, str):
        return "??:??:??.???"
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return value
    return stamp.strftime("%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}"


def _plain_value(value: Any) -> str:
    if isinstance(value, str) and value and not any(c.isspace() or c in "\"=" for c in value):
        return value
    return json.dumps(value, ensure_ascii=False, default=_json_default)


def format_record(rec: dict[str, Any], color: bool = False, with_time: bool = True) -> str:
    """Render a record as ``HH:MM:SS.mmm LEVEL    actor[module] message key=value ...``.

    The time is shown as written (the daemon's local time); ``with_time=False`` leaves it
    out (journald stamps each line itself). ``[module]`` appears only
    when the record concerns a module. Other fields follow as ``key=value`` (values with
    spaces or quotes JSON-quoted); an exception follows on the next lines. With ``color``
    the level is coloured by severity and the keys are dimmed (ANSI escapes).
    """
    level = str(rec.get("level", "?"))
    when = _clock_time(rec.get("time"))
    who = str(rec.get("actor") or DEFAULT_ACTOR)
    module = rec.get("module")
    if module is not None:
        who += f"[{module}]"
    message = str(rec.get("message", ""))
    fields = [(k, v) for k, v in rec.items() if k not in _SHOWN_APART]
    if color:
        tint = _LEVEL_COLORS.get(level, "")
        head = (f"{_DIM}{when}{_RESET} " if with_time else "") + (
            f"{tint}{level:<8}{_RESET} {_WHO}{who}{_RESET} {tint}{message}{_RESET}")
        tail = "".join(f" {_DIM}{k}={_RESET}{_plain_value(v)}" for k, v in fields)
    else:
        head = (f"{when} " if with_time else "") + f"{level:<8} {who} {message}"
        tail = "".join(f" {k}={_plain_value(v)}" for k, v in fields)
    line = head + tail
    exc = rec.get("exception")
    if exc:
        text = str(exc)
        line += "\n" + (f"\x1b[31m{text}{_RESET}" if color else text)
    return line
