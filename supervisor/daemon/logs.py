"""Structured logging: one flat JSON object per line, rotated by size; reading and following.

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

Readers (the ``logs`` command) use :func:`iter_records` (current and rotated files, filtered,
``-n``), :func:`follow_records` (``-f``: follows the file by name across rotation and
truncation) and :func:`format_record` (a human-readable, optionally coloured line).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from loguru import logger

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

LOG_FILE = "modcoord.jsonl"
#: The lnav format file for the JSON log, shipped in the package data.
LNAV_FORMAT = Path(__file__).resolve().parent / "data" / "modcoord.lnav.json"
DEFAULT_ACTOR = "daemon"

#: Severity of loguru's standard levels; a level filter keeps this level and above.
LEVELS: dict[str, int] = {
    "TRACE": 5, "DEBUG": 10, "INFO": 20, "SUCCESS": 25, "WARNING": 30, "ERROR": 40,
    "CRITICAL": 50,
}

# Fields every record has at its top level (written first, in this order); bound extras
# never override them.
_CORE_FIELDS = ("time", "level", "message", "actor", "mode", "pid")
_PROTECTED = frozenset(("time", "level", "message", "pid"))
# Fields format_record shows in fixed places rather than as key=value.
_SHOWN_APART = frozenset(("time", "level", "message", "actor", "mode", "pid", "module",
                          "source", "exception"))
# The JSON line is handed from the format function to loguru's formatter under this
# private top-level record key, so the format string is a constant (no markup parsing of
# the data, no brace escaping) and nothing is added to ``record["extra"]``.
_RECORD_KEY = "_modcoord_json"

_ROTATED_RE = re.compile(
    r"^modcoord\.(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_\d{6})(?:\.(\d+))?\.jsonl$"
)

_state_lock = threading.Lock()
_handler_ids: list[int] = []


# --------------------------------------------------------------------------- writing


def _json_default(value: Any) -> str:
    return str(value)


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


def lnav_format_path() -> Path:
    """Return the path of the packaged lnav format file (``lnav -i PATH`` installs it)."""
    return LNAV_FORMAT


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ReadStatistics:
    """What a reader has seen: lines read, records that parsed, malformed lines skipped."""

    lines: int
    records: int
    malformed: int


class ReadStats:
    """A thread-safe counter of lines read; pass one to the readers to learn what they skipped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lines = 0
        self._records = 0
        self._malformed = 0

    def _count(self, parsed: bool) -> None:
        with self._lock:
            self._lines += 1
            if parsed:
                self._records += 1
            else:
                self._malformed += 1

    def statistics(self) -> ReadStatistics:
        """Return a snapshot of the counts."""
        with self._lock:
            return ReadStatistics(self._lines, self._records, self._malformed)


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


def _record_level(rec: dict[str, Any]) -> int:
    name = rec.get("level")
    if not isinstance(name, str):
        return 0
    try:
        return level_number(name)
    except ValueError:
        return 0


class _Filter:
    __slots__ = ("actor", "min_level", "module")

    def __init__(self, level: str | int | None, actor: str | None, module: str | None) -> None:
        self.min_level = level_number(level) if level is not None else None
        self.actor = actor
        self.module = module

    def __call__(self, rec: dict[str, Any]) -> bool:
        if self.min_level is not None and _record_level(rec) < self.min_level:
            return False
        if self.actor is not None and rec.get("actor") != self.actor:
            return False
        return self.module is None or rec.get("module") == self.module


def _parse(line: bytes, stats: ReadStats | None) -> dict[str, Any] | None:
    if not line.strip():
        return None
    try:
        rec = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        rec = None
    ok = isinstance(rec, dict)
    if stats is not None:
        stats._count(ok)
    return rec if ok else None


def _rotated_key(path: Path) -> tuple[str, int, int]:
    m = _ROTATED_RE.match(path.name)
    stamp, counter = (m.group(1), int(m.group(2) or 1)) if m else ("", 0)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = 0
    return stamp, counter, mtime


def log_files(log_dir: Path) -> list[Path]:
    """Return the log files, oldest first: the rotated ones, then ``modcoord.jsonl``.

    Rotated files are ordered by the creation time in their name, then by loguru's
    collision counter. Missing directory or files give a shorter (possibly empty) list.
    """
    log_dir = Path(log_dir)
    try:
        names = os.listdir(log_dir)
    except OSError:
        return []
    rotated = sorted((log_dir / n for n in names if _ROTATED_RE.match(n)), key=_rotated_key)
    current = log_dir / LOG_FILE
    return [*rotated, current] if current.is_file() else rotated


def _read_lines(path: Path) -> list[bytes]:
    """Return the complete lines of a file; a trailing partial line (being written) is left."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return []
    lines = data.split(b"\n")
    return lines[:-1]  # last element is b"" or an unterminated partial line


def _records_of(lines: Iterable[bytes], match: _Filter, stats: ReadStats | None
                ) -> Iterator[dict[str, Any]]:
    for line in lines:
        rec = _parse(line, stats)
        if rec is not None and match(rec):
            yield rec


def iter_records(
    log_dir: Path,
    *,
    n: int | None = None,
    level: str | int | None = None,
    actor: str | None = None,
    module: str | None = None,
    stats: ReadStats | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the matching records of the log, oldest first.

    Args:
        log_dir: the log directory.
        n: only the last ``n`` matching records; older rotated files are read only as
            far as needed. ``None`` means all of them.
        level: keep this level and more severe ones (name or number).
        actor: keep records of this actor only.
        module: keep records concerning this module only.
        stats: counts lines read and malformed lines (which are skipped).

    Raises:
        ValueError: if ``level`` is unknown or ``n`` is negative (raised on first use).
    """
    if n is not None and n < 0:
        raise ValueError("n must not be negative")
    match = _Filter(level, actor, module)
    files = log_files(log_dir)
    if n is None:
        for path in files:
            yield from _records_of(_read_lines(path), match, stats)
        return
    if n == 0:
        return
    chunks: list[list[dict[str, Any]]] = []
    found = 0
    for path in reversed(files):
        tail: deque[dict[str, Any]] = deque(
            _records_of(_read_lines(path), match, stats), maxlen=n - found
        )
        chunks.append(list(tail))
        found += len(tail)
        if found >= n:
            break
    for chunk in reversed(chunks):
        yield from chunk


def _tail_before(fh: Any, path: Path, log_dir: Path, n: int, match: _Filter,
                 stats: ReadStats | None) -> tuple[list[dict[str, Any]], bytes]:
    """Read the open current file to its end and older files as needed: last n records.

    Returns the records and the unterminated rest of the current file.
    """
    data = fh.read()
    lines = data.split(b"\n")
    partial = lines.pop()
    own = os.fstat(fh.fileno())
    if n <= 0:
        return [], partial
    found: deque[dict[str, Any]] = deque(_records_of(lines, match, stats), maxlen=n)
    result = list(found)
    for older in reversed(log_files(log_dir)):
        if len(result) >= n:
            break
        try:
            st = older.stat()
        except OSError:
            continue
        if (st.st_ino, st.st_dev) == (own.st_ino, own.st_dev):
            continue  # the file we hold open (renamed meanwhile, or the current one)
        tail = deque(_records_of(_read_lines(older), match, stats), maxlen=n - len(result))
        result = [*tail, *result]
    return result, partial


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_dev


def _rotated_between(log_dir: Path, old: tuple[int, int], old_mtime_ns: int,
                     new: tuple[int, int]) -> list[Path]:
    """Return the rotated files newer than the file ``old`` and older than the file ``new``.

    ``old`` is located among the rotated files by identity; if retention already deleted
    it, files modified after ``old_mtime_ns`` count as newer.
    """
    rotated = [p for p in log_files(log_dir) if p.name != LOG_FILE]
    idents = [_identity(p) for p in rotated]
    if old in idents:
        start = idents.index(old) + 1
    else:
        start = 0
        while start < len(rotated):
            try:
                if rotated[start].stat().st_mtime_ns > old_mtime_ns:
                    break
            except OSError:
                pass
            start += 1
    end = idents.index(new) if new in idents else len(rotated)
    return rotated[start:end]


def follow_records(
    log_dir: Path,
    *,
    n: int = 0,
    level: str | int | None = None,
    actor: str | None = None,
    module: str | None = None,
    stop: threading.Event | None = None,
    poll_interval: float = 0.25,
    stats: ReadStats | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield matching records as they are written, following ``modcoord.jsonl`` by name.

    First yields the last ``n`` matching records already written (0: none; older rotated
    files are read as needed), then every new matching record. When the file is rotated
    (the name points to another inode) the rest of the old file is read, then the new
    file from its start; when it is truncated, reading restarts at its beginning. A file
    that does not exist yet is waited for. Polls every ``poll_interval`` seconds.

    The generator returns promptly (within one poll) once ``stop`` is set; without
    ``stop`` it runs until closed. The file is closed when it returns or is closed.

    Raises:
        ValueError: if ``level`` is unknown (raised on first use).
    """
    match = _Filter(level, actor, module)
    stop = stop if stop is not None else threading.Event()
    log_dir = Path(log_dir)
    path = log_dir / LOG_FILE
    fh: Any = None
    identity: tuple[int, int] | None = None
    rotated_from: tuple[tuple[int, int], int] | None = None  # (identity, mtime) of the old file
    buffer = b""

    def open_current() -> bool:
        nonlocal fh, identity, buffer
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed in finally / on rotation
        except FileNotFoundError:
            return False
        st = os.fstat(fh.fileno())
        identity = (st.st_ino, st.st_dev)
        buffer = b""
        return True

    def drain() -> Iterator[dict[str, Any]]:
        nonlocal buffer
        while True:
            data = fh.read(1 << 16)
            if not data:
                return
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            yield from _records_of(lines, match, stats)

    try:
        if open_current():
            backlog, buffer = _tail_before(fh, path, log_dir, n, match, stats)
            yield from backlog
        elif n > 0:
            yield from iter_records(log_dir, n=n, level=level, actor=actor, module=module,
                                    stats=stats)
        while not stop.is_set():
            if fh is None:
                if not open_current():
                    stop.wait(poll_interval)
                    continue
                if rotated_from is not None:
                    # Files rotated out between the one we read and the one now current
                    # (a burst can rotate several times within one poll) are read whole.
                    assert identity is not None
                    for between in _rotated_between(log_dir, *rotated_from, identity):
                        yield from _records_of(_read_lines(between), match, stats)
                    rotated_from = None
            got = False
            for rec in drain():
                got = True
                yield rec
                if stop.is_set():
                    return
            if got:
                continue
            try:
                st = os.stat(path)
            except FileNotFoundError:
                st = None
            if st is not None and (st.st_ino, st.st_dev) != identity:
                yield from drain()  # whatever was written before the rename
                assert identity is not None
                rotated_from = (identity, os.fstat(fh.fileno()).st_mtime_ns)
                fh.close()
                fh = None
                continue  # open the new file at once
            if st is not None and st.st_size < fh.tell():
                fh.seek(0)
                buffer = b""
                continue
            stop.wait(poll_interval)
    finally:
        if fh is not None:
            fh.close()


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
