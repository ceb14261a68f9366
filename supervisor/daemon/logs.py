"""Structured logging: one flat JSON object per line, rotated by size.

The daemon is the only writer. :func:`setup_logging` replaces loguru's default handler with
one file sink writing ``<log_dir>/modcoord.jsonl``; each line is a flat JSON object::

    {"time": "2026-11-27T04:31:45.123+00:00", "level": "INFO", "message": "module registered",
     "actor": "supervisor", "mode": "HYBRID", "pid": 4242, "module": "editor",
     "source": "modcoord.supervisor.supervisor:_register:88"}

``actor`` comes from ``logger.bind(actor=...)`` (``"daemon"`` when unbound), ``mode`` from
the ``context()`` callable given to :func:`setup_logging` (so every record carries the
current mode), and every other bound field (``module``, ``insight``, ``reason``, ``file``,
``key``...) sits at the top level too; an exception becomes an ``exception`` text field.

The message says what happened in constant words and the values go in named fields, never
into the text: ``log.info("optimized", flushed=2, delivered=2, cache_cleared=20)``, not
``log.info("flushed {f}", f=2)`` (``tests/unit/test_log_calls.py`` checks every call).

With ``also_stderr`` (the daemon in the foreground, or with stderr on the journal) a second
sink writes each record as a :func:`format_record` line on stderr; when stderr is systemd's
journal stream (:func:`stderr_is_journal`) every line starts with the level's sd-daemon
``<N>`` priority (:data:`JOURNAL_PRIORITIES`) and the time is left to journald. Colour only
on a terminal and never with ``NO_COLOR`` (:func:`color_wanted`). The lnav format of the
JSON log is the package data file :func:`lnav_format_path`.

Loguru rotates the file by size, renaming the full one next to it as
``modcoord.<YYYY-MM-DD_HH-MM-SS_ffffff>.jsonl`` (the file's creation time, local time; a
``.<n>`` counter is added before ``.jsonl`` when that name is taken), and keeps at most
``keep`` of these old files.

The daemon's side lives here: the sinks and :func:`setup_logging`/:func:`shutdown_logging`.
The record's vocabulary and its human line are :mod:`modcoord.supervisor.daemon.log_format`;
the readers (the ``logs`` command) are :mod:`modcoord.supervisor.daemon.log_reader`. Both
are re-exported here, so every name is importable from this module as before.

Writing never loses a record to its content: a context that raises adds a
``context_error`` field, a value JSON cannot encode is written as its ``str()``. A failed
write (the disk full, a symlink planted at the name when rotation reopens the file) is
reported by loguru on stderr and that record is dropped; the daemon carries on.
:func:`setup_logging` itself raises when the directory or file cannot be used.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loguru import logger

from modcoord.supervisor.daemon.log_format import (
    DEFAULT_ACTOR,
    LEVELS,
    LOG_FILE,
    _json_default,
    color_wanted,
    format_record,
    level_number,
    lnav_format_path,
)
from modcoord.supervisor.daemon.log_format import LNAV_FORMAT as LNAV_FORMAT
from modcoord.supervisor.daemon.log_reader import (
    ReadStatistics,
    ReadStats,
    follow_records,
    iter_records,
    log_files,
)
from modcoord.supervisor.protocol.paths import open_for_writing

__all__ = [
    "DEFAULT_ACTOR",
    "JOURNAL_PRIORITIES",
    "LEVELS",
    "LOG_FILE",
    "ReadStatistics",
    "ReadStats",
    "color_wanted",
    "follow_records",
    "format_record",
    "iter_records",
    "level_number",
    "lnav_format_path",
    "log_files",
    "setup_logging",
    "shutdown_logging",
    "stderr_is_journal",
]

# Fields every record has at its top level (written first, in this order); bound extras
# never override them.
_CORE_FIELDS = ("time", "level", "message", "actor", "mode", "pid")
_PROTECTED = frozenset(("time", "level", "message", "pid"))
# The JSON line is handed from the format function to loguru's formatter under this
# private top-level record key, so the format string is a constant (no markup parsing of
# the data, no brace escaping) and nothing is added to ``record["extra"]``.
_RECORD_KEY = "_modcoord_json"

_state_lock = threading.Lock()
_handler_ids: list[int] = []


# --------------------------------------------------------------------------- writing


def _make_formatter(context: Callable[[], dict[str, Any]] | None
                    ) -> Callable[[Any], str]:
    def build(record: Any) -> str:
        out: dict[str, Any] = {
            "time": record["time"].isoformat(timespec="milliseconds"),
            "level": record["level"].name,
            "message": record["message"],
            "actor": DEFAULT_ACTOR,
            "mode": None,
            "pid": record["process"].id,
        }
        if context is not None:
            try:
                extra_context = context()
            except Exception as exc:  # a broken context never loses the record
                extra_context = {"context_error": repr(exc)}
            for key, value in extra_context.items():
                if key not in _PROTECTED:
                    out[str(key)] = value
        for key, value in record["extra"].items():
            out[f"extra_{key}" if key in _PROTECTED else key] = value
        if out.get("actor") is None:
            out["actor"] = DEFAULT_ACTOR
        out.setdefault("source", f"{record['name']}:{record['function']}:{record['line']}")
        failure = record["exception"]
        if failure is not None:
            out["exception"] = "".join(
                traceback.format_exception(failure.type, failure.value, failure.traceback)
            ).rstrip("\n")
        try:
            line = json.dumps(out, ensure_ascii=False, default=_json_default)
        except (TypeError, ValueError):  # e.g. circular structures, non-str dict keys
            line = json.dumps({k: (v if isinstance(v, (str, int, float, bool, type(None)))
                                   else str(v)) for k, v in out.items()},
                              ensure_ascii=False, allow_nan=True)
        record[_RECORD_KEY] = line
        return "{" + _RECORD_KEY + "}\n"

    return build


def _open_log_file(path: str, flags: int) -> int:
    """``opener`` of the file sink (also used when rotation reopens it): never through a
    symlink, only a regular file.

    Raises:
        modcoord.supervisor.protocol.paths.UnsafePathError: a symlink or a non-regular file.
    """
    return open_for_writing(Path(path), flags, 0o666)  # the umask applies, as with open()


#: sd-daemon(3) priority of each loguru level, written as a ``<N>`` prefix on the journal.
JOURNAL_PRIORITIES: dict[str, int] = {
    "TRACE": 7, "DEBUG": 7, "INFO": 6, "SUCCESS": 5, "WARNING": 4, "ERROR": 3, "CRITICAL": 2,
}


def stderr_is_journal(fd: int = 2) -> bool:
    """Whether ``fd`` is the journal stream systemd connected us to: ``$JOURNAL_STREAM``
    (``device:inode``) names the file ``fd`` is open on. Merely set (a child of a service
    whose stderr was redirected elsewhere) does not count, as sd-daemon(3) advises.
    Unset, malformed or a closed ``fd``: False."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def _human_formatter(journal: bool, color: bool) -> Callable[[Any], str]:
    """Format function of the stderr sink: :func:`format_record` lines. For the journal
    every line of a record (an exception's too) starts with the level's ``<N>`` priority
    and the time is left to journald; elsewhere the line starts with the time."""

    def build(record: Any) -> str:
        rec: dict[str, Any] = {
            "time": record["time"].isoformat(timespec="milliseconds"),
            "level": record["level"].name,
            "message": record["message"],
            "actor": record["extra"].get("actor", DEFAULT_ACTOR),
        }
        rec.update({k: v for k, v in record["extra"].items() if k not in _PROTECTED})
        if record["exception"] is not None:
            exc = record["exception"]
            rec["exception"] = "".join(
                traceback.format_exception(exc.type, exc.value, exc.traceback)
            ).rstrip("\n")
        text = format_record(rec, color=color, with_time=not journal)
        if journal:
            prefix = f"<{JOURNAL_PRIORITIES.get(rec['level'], 6)}>"
            text = "\n".join(prefix + line for line in text.split("\n"))
        record["_modcoord_human"] = text
        return "{_modcoord_human}\n"

    return build


def setup_logging(
    log_dir: Path,
    *,
    level: str = "INFO",
    max_bytes: int = 10 * 1024 * 1024,
    keep: int = 5,
    context: Callable[[], dict[str, Any]] | None = None,
    also_stderr: bool = False,
) -> int:
    """Send every loguru record to ``<log_dir>/modcoord.jsonl`` as one flat JSON object a line.

    Removes loguru's default stderr handler and any handler a previous call added, then
    adds one file sink (thread-safe, written in the logging thread: ``enqueue=False``).
    The file is rotated when a record would take it past ``max_bytes``; at most ``keep``
    rotated files are kept (the oldest are deleted).

    Args:
        log_dir: the log directory, created (with parents) if missing.
        level: the minimum level written (a loguru level name).
        max_bytes: rotation size in bytes.
        keep: how many rotated files to keep.
        context: called for every record; the fields it returns (normally ``{"mode": ...}``)
            are added to it, bound fields taking precedence. It must be quick and must not
            log. If it raises, the record is still written, with a ``context_error`` field.
        also_stderr: also write human-readable lines (see :func:`format_record`) to stderr,
            at the same level: coloured on a terminal unless ``NO_COLOR`` is set; with
            sd-daemon ``<N>`` priority prefixes and no time when stderr is the journal
            (:func:`stderr_is_journal`). A failed write to stderr is reported by loguru
            on stderr and never stops the file sink.

    Returns:
        The loguru handler id of the file sink.

    The file is opened with ``O_NOFOLLOW`` and must be a regular file: a symlink or FIFO
    planted at its name is refused, never written through (also when rotation reopens it;
    loguru then reports the error on stderr and drops that record).

    Raises:
        OSError: if the directory cannot be created.
        UnsafePathError: if the file cannot be opened, or is a symlink or not a regular
            file (the message names it).
        ValueError: if ``level`` is unknown to loguru, or ``max_bytes``/``keep`` < 1.
    """
    if max_bytes < 1 or keep < 1:
        raise ValueError("max_bytes and keep must be at least 1")
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    with _state_lock:
        _remove_handlers_locked()
        with contextlib.suppress(ValueError):  # already gone
            logger.remove(0)  # loguru's default stderr handler
        handler_id = logger.add(
            str(log_dir / LOG_FILE),
            level=level,
            format=_make_formatter(context),
            rotation=max_bytes,
            retention=keep,
            enqueue=False,
            colorize=False,
            backtrace=False,
            diagnose=False,
            catch=True,
            encoding="utf-8",
            opener=_open_log_file,
        )
        _handler_ids.append(handler_id)
        if also_stderr:
            journal = stderr_is_journal()
            _handler_ids.append(logger.add(
                sys.stderr, level=level, colorize=False,
                format=_human_formatter(journal, color=not journal and color_wanted(sys.stderr)),
                backtrace=False, diagnose=False, catch=True,
            ))
    return handler_id


def _remove_handlers_locked() -> None:
    while _handler_ids:
        with contextlib.suppress(ValueError):  # removed elsewhere already
            logger.remove(_handler_ids.pop())


def shutdown_logging() -> None:
    """Remove the handlers :func:`setup_logging` added, closing the log file (idempotent)."""
    with _state_lock:
        _remove_handlers_locked()
