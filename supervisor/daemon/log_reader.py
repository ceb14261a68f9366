"""Reading the log: the records of the current and rotated files, filtered, and following.

The ``logs`` command reads with :func:`iter_records` (current and rotated files, filtered,
``-n``) and :func:`follow_records` (``-f``: follows ``modcoord.jsonl`` by name across
rotation and truncation); :func:`log_files` lists the files oldest first. Loguru names a
rotated file ``modcoord.<YYYY-MM-DD_HH-MM-SS_ffffff>.jsonl`` (its creation time, local
time; a ``.<n>`` counter before ``.jsonl`` when that name is taken), and the readers order
the files by that name.

Reading never fails on the log's content: a line that is not a JSON object is skipped and
counted as malformed in the :class:`ReadStats` passed in; a trailing partial line (being
written) is left until it is complete; a file that vanishes between listing and reading
(rotation, retention) reads as empty. A bad argument (an unknown level, a negative ``n``)
raises ``ValueError`` on first use. The records are rendered by
:func:`~modcoord.supervisor.daemon.log_format.format_record`; the daemon writes them
(:mod:`modcoord.supervisor.daemon.logs`).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modcoord.supervisor.daemon.log_format import LOG_FILE, level_number

__all__ = [
    "ReadStatistics",
    "ReadStats",
    "follow_records",
    "iter_records",
    "log_files",
]

_ROTATED_RE = re.compile(
    r"^modcoord\.(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_\d{6})(?:\.(\d+))?\.jsonl$"
)


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

