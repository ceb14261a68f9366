"""The performance history: the daemon's key figures sampled every second, kept in SQLite
in the state directory, downsampled round-robin style, surviving restarts.

- :func:`figures` turns one ``status`` snapshot (and the previous one, for rates) into
  ``{metric: value}``: coordination and publish-to-delivery latency, update rates, the
  collapse ratio, the cache, the batch queue, memory, modules, restarts, the adaptive
  parameters' effective values and the update rates of the busiest modules.
- :class:`HistoryStore` folds each sample into the :data:`TIERS` (1 s for an hour, 1 min
  for a day, 10 min for 30 days; each bucket keeps min, max, mean and last) and hands the
  finished rows to a writer thread, which writes them in one transaction every
  :data:`FLUSH_INTERVAL_S` (WAL mode) and prunes by time. Nothing is written on the
  request path. The rows of the size bound are :func:`row_bound`.
- If the database cannot be opened, is corrupt, or a write fails (locked by another
  process, disk full), the store goes **degraded**: it logs why once, says so in
  ``status`` (``history``: ``state``, ``reason``) and keeps the history in memory (a ring
  per tier, bounded like the file), so ``history`` queries and trends keep working. The
  daemon never stops for it.
- :class:`Sampler` is the thread that takes a snapshot every :data:`SAMPLE_INTERVAL_S`.
- :class:`ModuleRates` counts each module's publishes (a dict increment per accepted
  publish item, read by the sampler), for the per-module rates.

Time is injected (``now``: wall seconds; tests pass a ``MockClock``'s ``monotonic``).
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from loguru import logger

from modcoord.actors.errors import InvalidMessageError
from modcoord.actors.trends import TrendThresholds, trend_insights

if TYPE_CHECKING:
    from modcoord.supervisor.daemon.config import HistorySettings

__all__ = [
    "DB_NAME",
    "FLUSH_INTERVAL_S",
    "MAX_METRICS",
    "MAX_METRIC_NAME_CHARS",
    "MAX_TRACKED_MODULES",
    "SAMPLE_INTERVAL_S",
    "TIERS",
    "HistoryRecorder",
    "HistoryStore",
    "ModuleRates",
    "Sampler",
    "Tier",
    "byte_bound",
    "figures",
    "row_bound",
    "start_history",
]

DB_NAME: Final = "history.sqlite3"
SAMPLE_INTERVAL_S: Final = 1.0
FLUSH_INTERVAL_S: Final = 5.0
"""The writer thread writes the finished rows this often (one transaction)."""
MAX_METRICS: Final = 64
"""At most this many distinct metric names are kept (the size bound rests on it); a new
name beyond it is counted (``history.dropped_metrics``) and logged once, never stored."""
MAX_METRIC_NAME_CHARS: Final = 80
"""A metric name longer than this (a module id that long) is not kept (counted in
``history.dropped_metrics``): the size bound rests on it."""
MAX_TRACKED_MODULES: Final = 1024
""":class:`ModuleRates` counts at most this many module ids (publishes of others are
counted as ``untracked``)."""
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


# -- figures from a status snapshot --------------------------------------------------------


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def figures(status: Mapping[str, Any], previous: Mapping[str, Any] | None, elapsed: float,
            module_counts: Mapping[str, int] | None = None,
            previous_counts: Mapping[str, int] | None = None,
            busiest: int = 5, publish_p99_ms: float | None = None) -> dict[str, float]:
    """The sampled figures of one ``status`` snapshot (metric name → value).

    Rates (``*_per_s``) need ``previous`` and ``elapsed`` > 0; without them they are left
    out. Per-module rates (``module.<id>.updates_per_s``) are those of the ``busiest``
    modules by publishes since ``previous_counts``. Values that are missing or not finite
    are left out, never guessed.
    """
    out: dict[str, float] = {}

    def put(name: str, value: Any) -> None:
        v = _num(value)
        if v is not None:
            out[name] = v

    perf = status.get("performance_metrics") or {}
    lat = perf.get("coordination_latency_ms") or {}
    put("coordination_p50_ms", lat.get("p50"))
    put("coordination_p99_ms", lat.get("p99"))
    put("publish_to_delivery_p99_ms", publish_p99_ms)
    deb = status.get("debouncer") or {}
    bat = status.get("batcher") or {}
    cache = status.get("cache_stats") or {}
    if previous is not None and elapsed > 0:
        pdeb = previous.get("debouncer") or {}
        pbat = previous.get("batcher") or {}
        for name, now_v, before in (
                ("updates_in_per_s", deb.get("received"), pdeb.get("received")),
                ("updates_delivered_per_s", bat.get("updates"), pbat.get("updates"))):
            a, b = _num(now_v), _num(before)
            if a is not None and b is not None and a >= b:
                out[name] = (a - b) / elapsed
    received, collapsed = _num(deb.get("received")), _num(deb.get("collapsed"))
    if received and collapsed is not None:
        put("collapse_ratio", collapsed / received)
    put("cache_hit_rate", perf.get("cache_hit_rate"))
    put("cache_size", cache.get("size"))
    put("batch_efficiency", perf.get("batch_efficiency"))
    put("batch_queue_depth", (status.get("batch_queue") or {}).get("pending"))
    put("memory_rss_bytes", perf.get("memory_usage_bytes"))
    put("modules", status.get("modules"))
    actors = status.get("actors") or {}
    put("restarts", sum(int(a.get("restarts", 0)) for a in actors.values()))
    params = (status.get("adaptive") or {}).get("parameters") or {}
    for name, p in params.items():
        if isinstance(p, Mapping):
            put(f"adaptive.{name}", p.get("effective"))
    if module_counts is not None and previous_counts is not None and elapsed > 0:
        deltas = [(module_counts[m] - previous_counts.get(m, 0), m) for m in module_counts]
        deltas.sort(key=lambda d: (-d[0], d[1]))
        for delta, module in deltas[:busiest]:
            if delta > 0:
                out[f"module.{module}.updates_per_s"] = delta / elapsed
    return out


class ModuleRates:
    """Publishes per module (for the busiest modules' rates): :meth:`count` is called by
    the request path with each accepted batch of publish items, :meth:`snapshot` by the
    sampler (a copy: one dict copy, atomic under the GIL)."""

    def __init__(self, limit: int = MAX_TRACKED_MODULES) -> None:
        self._counts: dict[str, int] = {}
        self._limit = limit
        self.untracked = 0

    def count(self, items: Iterable[Any]) -> None:
        counts = self._counts
        for item in items:
            module = item[0]
            n = counts.get(module)
            if n is not None:
                counts[module] = n + 1
            elif len(counts) < self._limit:
                counts[module] = 1
            else:
                self.untracked += 1

    def forget(self, module_id: str) -> None:
        self._counts.pop(module_id, None)

    def snapshot(self) -> dict[str, int]:
        return self._counts.copy()


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

    Failure: opening, reading or writing the database never raises out of the store; the
    store goes ``degraded`` (reason in :meth:`status` and one log record) and keeps the
    history in memory from then on.
    """

    def __init__(self, path: Path | None, now: Callable[[], float] = time.time,
                 tiers: tuple[Tier, ...] = TIERS) -> None:
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
        self._rows = 0
        self.state = "memory" if path is None else "ok"
        self.reason: str | None = None if path is not None else "no state directory"
        self._db: sqlite3.Connection | None = None
        self._log = logger.bind(actor="history")
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        if path is not None:
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
            cutoffs = [(i, int(now - t.retention_s)) for i, t in enumerate(self.tiers)]
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
                db.executemany("DELETE FROM samples WHERE tier = ? AND ts < ?", cutoffs)
                db.executemany("DELETE FROM metrics WHERE name = ?", [(m,) for m in idle])
                db.execute("COMMIT")
                self._rows = int(db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
            except (sqlite3.Error, OSError) as exc:
                self.write_failures += 1
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                self._degrade(f"cannot write {self.path}: {exc}")
                return 0
            self.rows_written += len(rows)
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


# -- the sampler thread ---------------------------------------------------------------------


class Sampler:
    """Takes a snapshot every :data:`SAMPLE_INTERVAL_S` and folds its figures into the
    store, on a thread of its own.

    Args:
        store: the history.
        snapshot: returns the ``status`` document (the controller's).
        extra: returns extra figures (e.g. publish-to-delivery p99), or ``None``.
        module_rates: the publish counts per module, or ``None``.
        busiest: how many modules' rates to keep (``history.busiest_modules``).

    Failure: a snapshot that raises is logged (once per kind of failure) and skipped.
    """

    def __init__(self, store: HistoryStore, snapshot: Callable[[], Mapping[str, Any]],
                 extra: Callable[[], Mapping[str, float]] | None = None,
                 module_rates: ModuleRates | None = None, busiest: int = 5,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.snapshot = snapshot
        self.extra = extra
        self.module_rates = module_rates
        self.busiest = busiest
        self.monotonic = monotonic
        self.failures = 0
        self._previous: tuple[Mapping[str, Any], float, dict[str, int] | None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: str | None = None

    def sample(self) -> dict[str, float]:
        """Take one sample now; returns its figures (``{}`` if the snapshot failed)."""
        try:
            status = self.snapshot()
            extra = dict(self.extra()) if self.extra is not None else {}
        except Exception as exc:
            self.failures += 1
            if str(exc) != self._last_error:
                self._last_error = str(exc)
                logger.bind(actor="history", error=str(exc)).warning(
                    "history sample failed (skipped)")
            return {}
        now = self.monotonic()
        counts = self.module_rates.snapshot() if self.module_rates is not None else None
        previous, before, previous_counts = self._previous or (None, now, None)
        values = figures(status, previous, now - before, counts, previous_counts,
                         self.busiest, extra.pop("publish_to_delivery_p99_ms", None))
        values.update(extra)
        self._previous = (status, now, counts)
        self.store.add(values)
        return values

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="history-sampler",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


# -- the daemon's part ----------------------------------------------------------------------


class HistoryRecorder:
    """The daemon's history: the store, the sampler and the publish counts, with what the
    controller answers (``status``'s ``history`` field, the ``history`` call, the trend
    insights).

    Args:
        store: the history store.
        sampler: its sampler (started by :meth:`start`).
        rates: the per-module publish counts the request path feeds.
        thresholds: the ``history.trend`` settings.
    """

    def __init__(self, store: HistoryStore, sampler: Sampler, rates: ModuleRates,
                 thresholds: TrendThresholds) -> None:
        self.store = store
        self.sampler = sampler
        self.rates = rates
        self.thresholds = thresholds

    def start(self) -> None:
        self.store.start()
        self.sampler.start()

    def stop(self) -> None:
        """Stop sampling, write what is left and close the database."""
        self.sampler.stop()
        self.store.close()

    def status(self) -> dict[str, Any]:
        return {**self.store.status(), "sample_failures": self.sampler.failures,
                "untracked_modules": self.rates.untracked}

    def query(self, metrics: list[str] | None, since_s: float) -> dict[str, Any]:
        """The ``history`` call's answer (see the call table).

        Raises:
            InvalidMessageError: a metric the history does not hold (naming the known ones).
        """
        known = self.store.metrics()
        if metrics:
            unknown = [m for m in metrics if m not in known]
            if unknown:
                raise InvalidMessageError(
                    f"history: unknown metric(s) {', '.join(unknown)}; the history holds "
                    f"{', '.join(known) or 'nothing yet'}")
        out = self.store.series(metrics or None, since_s)
        out["state"] = self.store.state
        out["now"] = self.store.now()
        return out

    def trends(self) -> list[dict[str, Any]]:
        """The trend insights now (:func:`~modcoord.actors.trends.trend_insights`)."""
        store = self.store
        tier = store.tier_for(self.thresholds.window_s)
        return trend_insights(lambda m, s: store.values(m, s, tier), store.metrics(),
                              store.now(), self.thresholds)


def start_history(controller: Any, settings: HistorySettings, state_dir: Path
                  ) -> HistoryRecorder | None:
    """Open the history in ``state_dir`` and start sampling the controller's engine
    (``None`` when ``history.enabled`` is false). Sets ``controller.history``.

    Failure: a database that cannot be used gives a degraded, memory-only history (see
    :class:`HistoryStore`), never an exception.
    """
    if not settings.enabled:
        return None
    engine = controller.coordinator
    histogram = engine.metrics.histogram

    def extra() -> dict[str, float]:
        return {"publish_to_delivery_p99_ms": histogram("publish_to_delivery").recent().p99}

    store = HistoryStore(state_dir / DB_NAME)
    rates = ModuleRates()
    sampler = Sampler(store, engine.status, extra, rates, settings.busiest_modules)
    recorder = HistoryRecorder(store, sampler, rates, settings.trend.thresholds())
    controller.history = recorder
    recorder.start()
    return recorder
