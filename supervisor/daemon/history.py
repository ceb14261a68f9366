"""The performance history's store: the daemon's key figures, kept in SQLite in the
state directory, downsampled round-robin style, surviving restarts.

- :class:`HistoryStore` folds each sample into the :data:`TIERS` (1 s for an hour, 1 min
  for a day, 10 min for 30 days; each bucket keeps min, max, mean and last) and hands the
  finished rows to a writer thread, which writes them in one transaction every
  :data:`FLUSH_INTERVAL_S` (WAL mode) and prunes by time (ranges of the primary key: no
  table scan, however full the file). Nothing is written on the
  request path. The size bound is :func:`row_bound` rows, :func:`byte_bound` bytes.
- If the database cannot be opened, is corrupt, or a write fails (locked by another
  process, disk full), the store goes **degraded**: it logs why once, says so in
  ``status`` (``history``: ``state``, ``reason``) and keeps the history in memory (a ring
  per tier, bounded like the file), so ``history`` queries and trends keep working. The
  daemon never stops for it.

What samples it and answers for it in the daemon: :mod:`modcoord.supervisor.daemon.sampling`.
Time is injected (``now``: wall seconds; tests pass a ``MockClock``'s ``monotonic``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from loguru import logger

__all__ = [
    "DB_NAME",
    "FLUSH_INTERVAL_S",
    "MAX_METRICS",
    "MAX_METRIC_NAME_CHARS",
    "TIERS",
    "HistoryStore",
    "Tier",
    "byte_bound",
    "row_bound",
]

DB_NAME: Final = "history.sqlite3"
FLUSH_INTERVAL_S: Final = 5.0
"""The writer thread writes the finished rows this often (one transaction)."""
MAX_METRICS: Final = 64
"""At most this many distinct metric names are kept (the size bound rests on it); a new
name beyond it is counted (``history.dropped_metrics``) and logged once, never stored."""
MAX_METRIC_NAME_CHARS: Final = 80
"""A metric name longer than this (a module id that long) is not kept (counted in
``history.dropped_metrics``): the size bound rests on it."""
RECOUNT_FLUSHES: Final = 120
"""Between full counts (every this many writes, 10 min) the row count in ``status`` is
kept by arithmetic: rows added minus rows pruned (exact but after a restart inside an
open bucket)."""
MAX_PENDING_ROWS: Final = 200_000
"""Rows waiting for the writer; beyond it (the writer stuck) the store goes degraded."""
_BYTES_PER_ROW: Final = 56
"""Measured (tests/unit/test_history.py, every name :data:`MAX_METRIC_NAME_CHARS` long):
a full file's bytes per row, rounded up."""


@dataclass(frozen=True)
class Tier:
    """One resolution: buckets of ``resolution_s`` kept for ``retention_s``."""

    resolution_s: int
    retention_s: int

    @property
    def rows_per_metric(self) -> int:
        return self.retention_s // self.resolution_s + 1


TIERS: Final = (Tier(1, 3600), Tier(60, 86_400), Tier(600, 30 * 86_400))


def row_bound(metrics: int = MAX_METRICS) -> int:
    """The most rows the database holds (every tier full for ``metrics`` metrics)."""
    return metrics * sum(t.rows_per_metric for t in TIERS)


def byte_bound(metrics: int = MAX_METRICS) -> int:
    """The stated size bound of the database file (bytes)."""
    return row_bound(metrics) * _BYTES_PER_ROW


# -- the store ------------------------------------------------------------------------------

Row = tuple[int, str, int, float, float, float, float, int]
"""``(tier, metric, bucket_ts, min, max, mean, last, n)``."""


class _Bucket:
    __slots__ = ("last", "max", "min", "n", "start", "total")

    def __init__(self, start: int, value: float) -> None:
        self.start = start
        self.min = self.max = self.last = self.total = value
        self.n = 1

    def add(self, value: float) -> None:
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        self.last = value
        self.total += value
        self.n += 1

    def row(self, tier: int, metric: str) -> Row:
        return (tier, metric, self.start, self.min, self.max, self.total / self.n,
                self.last, self.n)


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS metrics (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
    """CREATE TABLE IF NOT EXISTS samples (
    metric INTEGER NOT NULL, tier INTEGER NOT NULL, ts INTEGER NOT NULL,
    min REAL NOT NULL, max REAL NOT NULL, mean REAL NOT NULL, last REAL NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (metric, tier, ts)) WITHOUT ROWID""",
)
"""Metric names are kept once (``metrics``); a sample row holds the name's id."""


class HistoryStore:
    """The history: buckets per tier, a SQLite file written by a writer thread, and a
    bounded in-memory copy used while degraded.

    Args:
        path: the database file (``None``: memory only, state ``memory``).
        now: wall-clock seconds (injected; tests pass a MockClock's ``monotonic``).
        tiers: the resolutions (default :data:`TIERS`).
        unusable: why ``path`` cannot be used (its directory is read-only), known before:
            the store starts degraded with that reason and never opens the file.

    Failure: opening, reading or writing the database never raises out of the store; the
    store goes ``degraded`` (reason in :meth:`status` and one log record) and keeps the
    history in memory from then on.
    """

    def __init__(self, path: Path | None, now: Callable[[], float] = time.time,
                 tiers: tuple[Tier, ...] = TIERS, unusable: str | None = None) -> None:
        self.path = path
        self.now = now
        self.tiers = tiers
        self._lock = threading.Lock()
        self._open: dict[tuple[int, str], _Bucket] = {}
        self._pending: list[Row] = []
        self._memory: dict[tuple[int, str], deque[Row]] = {}
        self._metrics: set[str] = set()
        self._ids: dict[str, int] = {}
        self._last_seen: dict[str, float] = {}
        self.dropped_metrics = 0
        self.write_failures = 0
        self.rows_written = 0
        self.cpu_s = 0.0
        """CPU seconds spent writing (the writer's flushes) since start."""
        self._rows = 0
        self._flushes = 0
        self._open_written: dict[tuple[int, str], int] = {}
        self.state = "memory" if path is None else "ok"
        self.reason: str | None = None if path is not None else "no state directory"
        self._db: sqlite3.Connection | None = None
        self._log = logger.bind(actor="history")
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        if path is not None and unusable is not None:
            self._degrade(unusable)
        elif path is not None:
            self._open_db(path)

    # -- database ---------------------------------------------------------------------------

    def _open_db(self, path: Path) -> None:
        try:
            db = sqlite3.connect(str(path), timeout=0.2, check_same_thread=False,
                                 isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                for statement in _SCHEMA:
                    db.execute(statement)
                check = db.execute("PRAGMA quick_check").fetchone()
                if check is None or check[0] != "ok":
                    raise sqlite3.DatabaseError(f"integrity check failed: {check}")
                for ident, metric in db.execute("SELECT id, name FROM metrics"):
                    self._metrics.add(metric)
                    self._ids[metric] = int(ident)
                    self._last_seen[metric] = self.now()
                self._rows = int(db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
            except BaseException:
                db.close()
                raise
        except (sqlite3.Error, OSError) as exc:
            self._degrade(f"cannot open {path}: {exc}")
            return
        with contextlib.suppress(OSError):
            path.chmod(0o600)
        self._db = db
        self._log.bind(path=str(path), metrics=len(self._metrics)).info("history opened")

    def _degrade(self, reason: str) -> None:
        """Go memory-only (the caller holds no lock on the db); logged once."""
        if self.state == "degraded":
            return
        self.state = "degraded"
        self.reason = (f"{reason}; keeping a memory-only history (fix or remove the file "
                       "and restart the daemon)")
        self._log.bind(path=str(self.path), reason=reason).error(
            "history database unusable: keeping history in memory")
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()

    # -- sampling ---------------------------------------------------------------------------

    def add(self, values: Mapping[str, float], at: float | None = None) -> None:
        """Fold one sample (metric → value, taken at wall time ``at``, default now) into
        every tier. Cheap: no I/O (finished buckets wait for the writer)."""
        at = self.now() if at is None else at
        finished: list[Row] = []
        with self._lock:
            for metric, value in values.items():
                if metric not in self._metrics:
                    if len(self._metrics) >= MAX_METRICS or len(metric) > MAX_METRIC_NAME_CHARS:
                        self.dropped_metrics += 1
                        if self.dropped_metrics == 1:
                            self._log.bind(metric=metric[:MAX_METRIC_NAME_CHARS],
                                           limit=MAX_METRICS).warning(
                                "history: too many metric names (or one too long), "
                                "new ones not kept")
                        continue
                    self._metrics.add(metric)
                self._last_seen[metric] = at
                for index, tier in enumerate(self.tiers):
                    start = int(at // tier.resolution_s) * tier.resolution_s
                    key = (index, metric)
                    bucket = self._open.get(key)
                    if bucket is not None and bucket.start == start:
                        bucket.add(value)
                        continue
                    if bucket is not None:
                        finished.append(bucket.row(index, metric))
                    self._open[key] = _Bucket(start, value)
            for row in finished:
                self._remember(row)
            if self._db is not None:
                self._pending.extend(finished)
                if len(self._pending) > MAX_PENDING_ROWS:
                    self._pending.clear()
                    self._degrade(f"the writer fell {MAX_PENDING_ROWS} rows behind")

    def _remember(self, row: Row) -> None:
        """Keep ``row`` in the memory ring of its tier and metric (bounded by the tier's
        retention; always kept, so a later degradation loses no recent history)."""
        key = (row[0], row[1])
        ring = self._memory.get(key)
        if ring is None:
            ring = self._memory[key] = deque(maxlen=self.tiers[row[0]].rows_per_metric)
        if ring and ring[-1][2] == row[2]:
            ring[-1] = row
        else:
            ring.append(row)

    # -- writing ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (while memory-only it forgets idle metrics)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._writer, name="history-writer",
                                        daemon=True)
        self._thread.start()

    def _writer(self) -> None:
        while not self._stopping:
            self._wake.wait(FLUSH_INTERVAL_S)
            self._wake.clear()
            self.flush()

    def flush(self) -> int:
        """Write the finished rows and the open buckets (replacing their earlier partial
        rows), then prune what is past each tier's retention; returns rows written.

        Failure: a database error degrades the store (the rows stay in memory)."""
        started = time.thread_time()
        try:
            return self._flush()
        finally:
            self.cpu_s += time.thread_time() - started

    def _flush(self) -> int:
        with self._lock:
            now = self.now()
            idle = [m for m, seen in self._last_seen.items()
                    if seen < now - self.tiers[-1].retention_s]
            db = self._db
            if db is None:
                for metric in idle:
                    self._forget(metric)
                return 0
            rows = self._pending
            self._pending = []
            rows.extend(b.row(t, m) for (t, m), b in self._open.items())
            # A row is new unless it replaces the open bucket written at the last flush.
            written = self._open_written
            added = sum(1 for r in rows if written.get((r[0], r[1])) != r[2])
            cutoffs = [(i, int(now - t.retention_s)) for i, t in enumerate(self.tiers)]
            self._flushes += 1
            try:
                db.execute("BEGIN IMMEDIATE")
                ids = self._ids
                for name in {r[1] for r in rows} - ids.keys():
                    cursor = db.execute("INSERT OR IGNORE INTO metrics (name) VALUES (?)",
                                        (name,))
                    ids[name] = int(cursor.lastrowid or db.execute(
                        "SELECT id FROM metrics WHERE name = ?", (name,)).fetchone()[0])
                db.executemany("INSERT OR REPLACE INTO samples VALUES (?,?,?,?,?,?,?,?)",
                               [(ids[r[1]], r[0], r[2], r[3], r[4], r[5], r[6], r[7])
                                for r in rows])
                # By primary key (metric, tier, ts): a range per metric and tier, no scan.
                pruned = db.executemany(
                    "DELETE FROM samples WHERE metric = ? AND tier = ? AND ts < ?",
                    [(ident, i, cutoff) for ident in ids.values() for i, cutoff in cutoffs]
                ).rowcount
                db.executemany("DELETE FROM metrics WHERE name = ?", [(m,) for m in idle])
                db.execute("COMMIT")
                self._rows += added - max(0, pruned)
                if self._flushes % RECOUNT_FLUSHES == 0:  # a full count now and then
                    self._rows = int(db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
            except (sqlite3.Error, OSError) as exc:
                self.write_failures += 1
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                self._degrade(f"cannot write {self.path}: {exc}")
                return 0
            self.rows_written += len(rows)
            self._open_written = {key: b.start for key, b in self._open.items()}
            for metric in idle:  # nothing of it is left in any tier: its name is free
                self._forget(metric)
            return len(rows)

    def _forget(self, metric: str) -> None:
        self._metrics.discard(metric)
        self._ids.pop(metric, None)
        self._last_seen.pop(metric, None)
        for index in range(len(self.tiers)):
            self._open.pop((index, metric), None)
            self._memory.pop((index, metric), None)

    def close(self) -> None:
        """Stop the writer, write what is left, close the file."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()
        with self._lock:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._db = None

    # -- queries ----------------------------------------------------------------------------

    def tier_for(self, since_s: float) -> int:
        """The finest tier that covers ``since_s`` seconds back."""
        for index, tier in enumerate(self.tiers):
            if since_s <= tier.retention_s:
                return index
        return len(self.tiers) - 1

    def metrics(self) -> list[str]:
        with self._lock:
            return sorted(self._metrics)

    def series(self, metrics: Iterable[str] | None, since_s: float,
               tier: int | None = None) -> dict[str, Any]:
        """The series of ``metrics`` (``None``: all) over the last ``since_s`` seconds:
        ``{"resolution_s", "since_s", "columns", "series": {metric: [[ts, min, max, mean,
        last], ...]}}``, oldest first, open buckets included. From the database while it
        is ok, else from memory (a read failure degrades and falls back)."""
        index = self.tier_for(since_s) if tier is None else tier
        res = self.tiers[index].resolution_s
        cutoff = int(self.now() - since_s)
        with self._lock:
            wanted = sorted(self._metrics) if metrics is None else list(dict.fromkeys(metrics))
            rows: dict[str, dict[int, list[float]]] = {m: {} for m in wanted}
            db = self._db
            if db is not None:
                names = {self._ids[m]: m for m in wanted if m in self._ids}
                try:
                    marks = ",".join("?" * len(names))
                    for ident, ts, lo, hi, mean, last in db.execute(
                            "SELECT metric, ts, min, max, mean, last FROM samples "
                            f"WHERE tier = ? AND ts >= ? AND metric IN ({marks}) ORDER BY ts",
                            (index, cutoff, *names)):
                        rows[names[ident]][ts] = [ts, lo, hi, mean, last]
                except (sqlite3.Error, OSError) as exc:
                    self._degrade(f"cannot read {self.path}: {exc}")
                    db = None
            if db is None:
                for metric in wanted:
                    for r in self._memory.get((index, metric), ()):
                        if r[2] >= cutoff:
                            rows[metric][r[2]] = [r[2], r[3], r[4], r[5], r[6]]
            for (t, metric), bucket in self._open.items():
                if t == index and metric in rows and bucket.start >= cutoff:
                    r = bucket.row(t, metric)
                    rows[metric][r[2]] = [r[2], r[3], r[4], r[5], r[6]]
        return {"resolution_s": res, "since_s": since_s,
                "columns": ["ts", "min", "max", "mean", "last"],
                "series": {m: [v for _, v in sorted(pts.items())] for m, pts in rows.items()}}

    def values(self, metric: str, since_s: float, tier: int = 0) -> list[tuple[float, float]]:
        """``(ts, mean)`` of one metric over the last ``since_s`` s (for the trend rules)."""
        return [(p[0], p[3]) for p in self.series([metric], since_s, tier)["series"][metric]]

    def row_count(self) -> int:
        """Rows in the database at the last write (in memory while degraded)."""
        with self._lock:
            if self._db is not None:
                return self._rows
            return sum(len(r) for r in self._memory.values())

    def status(self) -> dict[str, Any]:
        """The ``status`` document's ``history`` field."""
        return {"path": None if self.path is None else str(self.path), "state": self.state,
                "reason": self.reason, "rows": self.row_count(),
                "metrics": len(self._metrics), "dropped_metrics": self.dropped_metrics,
                "write_failures": self.write_failures, "rows_written": self.rows_written,
                "max_rows": row_bound(), "max_bytes": byte_bound()}
