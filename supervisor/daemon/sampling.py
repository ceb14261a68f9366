"""The daemon's side of the performance history: what is sampled, the sampling thread,
and what the controller answers.

- :func:`figures` turns one ``status`` snapshot (and the previous one, for rates) into
  ``{metric: value}``: coordination and publish-to-delivery latency, update rates, the
  collapse ratio, the cache, the batch queue, memory, modules, restarts, the adaptive
  parameters' effective values and the update rates of the busiest modules.
- :class:`ModuleRates` counts each module's publishes (a dict increment per publish item,
  on the request path; read by the sampler), for the per-module rates.
- :class:`Sampler` is the thread that takes a snapshot every :data:`SAMPLE_INTERVAL_S`
  and folds it into the :class:`~modcoord.supervisor.daemon.history.HistoryStore`.
- :class:`HistoryRecorder` (made by :func:`start_history`) holds the three for the
  controller: ``status``'s ``history`` field, the ``history`` call, the trend insights.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from operator import countOf, itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from loguru import logger

from modcoord.actors.errors import InvalidMessageError
from modcoord.actors.trends import TrendThresholds, trend_insights
from modcoord.supervisor.daemon.history import DB_NAME, HistoryStore

if TYPE_CHECKING:
    from modcoord.supervisor.daemon.config import HistorySettings

__all__ = [
    "MAX_TRACKED_MODULES",
    "SAMPLE_INTERVAL_S",
    "HistoryRecorder",
    "ModuleRates",
    "Sampler",
    "figures",
    "start_history",
]

SAMPLE_INTERVAL_S: Final = 1.0
MAX_TRACKED_MODULES: Final = 1024
""":class:`ModuleRates` counts at most this many module ids (publishes of others are
counted as ``untracked``)."""
_first = itemgetter(0)


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

    def count(self, items: Sequence[Any]) -> None:
        """Count a batch of publish items (``(module_id, ...)``). A batch mostly holds one
        module's items: that is checked in one C loop (``countOf`` over their first
        field, ~40 ns an item) and counted at once; a mixed batch is tallied by
        ``Counter``, then merged per module."""
        if not items:
            return
        first = items[0][0]
        if countOf(map(_first, items), first) == len(items):
            self._add(first, len(items))
            return
        for module, k in Counter(map(_first, items)).items():
            self._add(module, k)

    def _add(self, module: str, k: int) -> None:
        counts = self._counts
        n = counts.get(module)
        if n is not None:
            counts[module] = n + k
        elif len(counts) < self._limit:
            counts[module] = k
        else:
            self.untracked += k

    def forget(self, module_id: str) -> None:
        self._counts.pop(module_id, None)

    def snapshot(self) -> dict[str, int]:
        return self._counts.copy()


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
        self.cpu_s = 0.0
        """CPU seconds spent sampling (snapshots and folding) since start."""
        self._previous: tuple[Mapping[str, Any], float, dict[str, int] | None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: str | None = None
        #: Each tracked module's publishes per second over the last sample interval (all
        #: of them, not only the busiest kept in the history): the dashboard's module table.
        self.module_rates_now: dict[str, float] = {}

    def sample(self) -> dict[str, float]:
        """Take one sample now; returns its figures (``{}`` if the snapshot failed). The
        CPU time it takes (this thread's) is added to :attr:`cpu_s`."""
        started = time.thread_time()
        try:
            return self._sample()
        finally:
            self.cpu_s += time.thread_time() - started

    def _sample(self) -> dict[str, float]:
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
        if counts is not None and previous_counts is not None and now > before:
            self.module_rates_now = {m: (n - previous_counts.get(m, 0)) / (now - before)
                                     for m, n in counts.items()}
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
        out = {**self.store.status(), "sample_failures": self.sampler.failures,
               "untracked_modules": self.rates.untracked}
        out["cpu_s"] = round(self.sampler.cpu_s + self.store.cpu_s, 6)
        return out

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


def start_history(controller: Any, settings: HistorySettings, state_dir: Path,
                  unusable: str | None = None) -> HistoryRecorder | None:
    """Open the history in ``state_dir`` and start sampling the controller's engine
    (``None`` when ``history.enabled`` is false). Sets ``controller.history``.

    Failure: a database that cannot be used, or ``unusable`` (why the state directory
    cannot be written: a read-only file system), gives a degraded, memory-only history
    (see :class:`HistoryStore`), never an exception.
    """
    if not settings.enabled:
        return None
    engine = controller.coordinator
    histogram = engine.metrics.histogram

    def extra() -> dict[str, float]:
        return {"publish_to_delivery_p99_ms": histogram("publish_to_delivery").recent().p99}

    store = HistoryStore(state_dir / DB_NAME, unusable=unusable)
    rates = ModuleRates()
    sampler = Sampler(store, engine.status, extra, rates, settings.busiest_modules)
    recorder = HistoryRecorder(store, sampler, rates, settings.trend.thresholds())
    controller.history = recorder
    recorder.start()
    return recorder
