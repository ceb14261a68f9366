"""Latency histograms: exact Prometheus buckets and quantiles within 1%.

A :class:`LatencyHistogram` keeps, since start and over a recent window made of rotating
slices:

- log-linear (HDR-style) buckets: each power of two from :data:`MIN_TRACKED_S` (2^-20 s,
  about 0.95 µs) to :data:`MAX_TRACKED_S` (2^10 s, 1024 s) split into
  :data:`SUB_BUCKETS` equal parts, so a bucket is at most 1/64 of its lower edge wide.
  Quantiles are read as the middle of the bucket holding the rank, clamped to the exact
  minimum and maximum: within 1/128 (0.8%) of the exact sample quantile for every value
  in the tracked range. Values below the range are reported as at most
  :data:`MIN_TRACKED_S`, above it as at most the exact maximum.
- since start only, one exact counter per exported Prometheus bound
  (:data:`PROMETHEUS_BUCKETS_S`): an observation is counted under the first bound it is
  ``<=`` to, so every cumulative ``le`` bucket counts every observation at or below its
  bound, exactly.

Recording is O(1) (a ``frexp``, a ``bisect`` over 16 bounds, a few increments) and
thread-safe. Memory is bounded: :data:`N_BUCKETS` counters per counts object, one for the
totals and one per window slice (at most ``slices``).
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left, bisect_right
from collections import Counter
from dataclasses import dataclass
from functools import partial

from modcoord.actors.clock import Clock

__all__ = [
    "MAX_TRACKED_S",
    "MIN_TRACKED_S",
    "N_BUCKETS",
    "PROMETHEUS_BUCKETS_S",
    "SUB_BUCKETS",
    "HistogramSnapshot",
    "LatencyHistogram",
]

_MIN_EXP = -19  # frexp exponent of MIN_TRACKED_S: 2^-20 = 0.5 * 2^-19
_MAX_EXP = 11   # frexp exponent just above MAX_TRACKED_S: 2^10 = 0.5 * 2^11
SUB_BUCKETS = 64
"""Linear parts of each power of two (relative bucket width at most 1/SUB_BUCKETS)."""
MIN_TRACKED_S = math.ldexp(0.5, _MIN_EXP)
"""Smallest value told apart from zero (2^-20 s); smaller ones share the underflow bucket."""
MAX_TRACKED_S = math.ldexp(0.5, _MAX_EXP)
"""Largest value resolved (2^10 s); larger ones share the overflow bucket."""
N_BUCKETS = (_MAX_EXP - _MIN_EXP) * SUB_BUCKETS + 2  # plus underflow (0) and overflow (last)
_OVERFLOW = N_BUCKETS - 1

PROMETHEUS_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)
"""The ``le`` bounds exported to Prometheus (seconds), each counted exactly."""


def _bucket(seconds: float) -> int:
    """Index of the fine bucket holding ``seconds`` (>= 0)."""
    if seconds < MIN_TRACKED_S:
        return 0
    m, e = math.frexp(seconds)  # seconds = m * 2^e, 0.5 <= m < 1
    if e >= _MAX_EXP:
        return _OVERFLOW
    return 1 + (e - _MIN_EXP) * SUB_BUCKETS + int((m - 0.5) * (2 * SUB_BUCKETS))


def _bounds(i: int) -> tuple[float, float]:
    """``[lower, upper)`` of fine bucket ``i``."""
    if i == 0:
        return 0.0, MIN_TRACKED_S
    if i == _OVERFLOW:
        return MAX_TRACKED_S, math.inf
    octave, part = divmod(i - 1, SUB_BUCKETS)
    e = octave + _MIN_EXP
    lower = math.ldexp(0.5 + part / (2 * SUB_BUCKETS), e)
    upper = math.ldexp(0.5 + (part + 1) / (2 * SUB_BUCKETS), e)
    return lower, upper


_LOWER_BOUNDS: tuple[float, ...] = tuple(_bounds(i)[0] for i in range(1, N_BUCKETS))
_fine_bucket = partial(bisect_right, _LOWER_BOUNDS)
"""``_fine_bucket(seconds)`` is :func:`_bucket`'s index at C speed (for many values): the
number of buckets above the underflow whose (exact, binary) lower bound is at most
``seconds``."""


@dataclass(frozen=True)
class HistogramSnapshot:
    """Summary of a histogram (all times in milliseconds)."""

    count: int
    p50: float
    p95: float
    p99: float
    max: float
    mean: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "count": self.count, "p50": self.p50, "p95": self.p95, "p99": self.p99,
            "max": self.max, "mean": self.mean,
        }


class _Counts:
    __slots__ = ("buckets", "count", "max", "min", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * N_BUCKETS
        self.count = 0
        self.sum = 0.0
        self.max = 0.0
        self.min = math.inf

    def add(self, i: int, seconds: float) -> None:
        self.buckets[i] += 1
        self.count += 1
        self.sum += seconds
        if seconds > self.max:
            self.max = seconds
        if seconds < self.min:
            self.min = seconds

    def add_many(self, buckets: Counter[int], n: int, total_s: float, high: float,
                 low: float) -> None:
        """Add ``n`` observations: ``buckets`` counts them per fine bucket, ``total_s`` is
        their sum, ``high`` and ``low`` their extremes."""
        mine = self.buckets
        for i, k in buckets.items():
            mine[i] += k
        self.count += n
        self.sum += total_s
        if high > self.max:
            self.max = high
        if low < self.min:
            self.min = low

    def merge(self, other: _Counts) -> None:
        for i, n in enumerate(other.buckets):
            if n:
                self.buckets[i] += n
        self.count += other.count
        self.sum += other.sum
        self.max = max(self.max, other.max)
        self.min = min(self.min, other.min)

    def quantile(self, q: float) -> float:
        """The ``ceil(q * count)``-th smallest value, within 1/128 (0.0 if empty)."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for i, n in enumerate(self.buckets):
            seen += n
            if seen >= rank:
                lower, upper = _bounds(i)
                estimate = self.max if math.isinf(upper) else (lower + upper) / 2
                return min(max(estimate, self.min), self.max)
        return self.max

    def snapshot(self) -> HistogramSnapshot:
        ms = 1000.0
        return HistogramSnapshot(
            count=self.count,
            p50=self.quantile(0.50) * ms,
            p95=self.quantile(0.95) * ms,
            p99=self.quantile(0.99) * ms,
            max=self.max * ms,
            mean=(self.sum / self.count * ms) if self.count else 0.0,
        )


class LatencyHistogram:
    """A thread-safe latency histogram over all time and over a recent window.

    Args:
        clock: where the recent window reads time.
        window_s: length of the recent window in seconds.
        slices: how many slices the window rotates through (resolution of its edge).
    """

    def __init__(self, clock: Clock, window_s: float = 60.0, slices: int = 6) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._total = _Counts()
        # Exact counts per exported bound: [i] counts values in (bound[i-1], bound[i]],
        # the last slot those above every bound.
        self._le = [0] * (len(PROMETHEUS_BUCKETS_S) + 1)
        self.window_s = window_s
        self._slice_s = window_s / slices
        self._slices: list[tuple[int, _Counts]] = []  # (slice number, counts), oldest first
        self._n_slices = slices

    def _current_slice(self, number: int) -> _Counts:
        if not self._slices or self._slices[-1][0] != number:
            self._slices.append((number, _Counts()))
            if len(self._slices) > self._n_slices:
                del self._slices[0]
        return self._slices[-1][1]

    def record(self, seconds: float) -> None:
        """Add one observation, in seconds (negative values count as zero)."""
        seconds = max(0.0, seconds)
        i = _bucket(seconds)
        le = bisect_left(PROMETHEUS_BUCKETS_S, seconds)
        number = int(self._clock.monotonic() // self._slice_s)
        with self._lock:
            self._total.add(i, seconds)
            self._le[le] += 1
            self._current_slice(number).add(i, seconds)

    def record_many(self, values: list[float]) -> None:
        """Add several observations (seconds) under one lock acquisition."""
        if not values:
            return
        number = int(self._clock.monotonic() // self._slice_s)
        # Per value only what must be: its bucket; the rest is counted per distinct bucket
        # (a batch's latencies fall into a few), C-speed sums and extremes.
        values = [v if v > 0.0 else 0.0 for v in values]
        fine = Counter(map(_fine_bucket, values))
        le = Counter(map(partial(bisect_left, PROMETHEUS_BUCKETS_S), values))
        n, total_s, high, low = len(values), sum(values), max(values), min(values)
        le_counts = self._le
        with self._lock:
            for counts in (self._total, self._current_slice(number)):
                counts.add_many(fine, n, total_s, high, low)
            for i, k in le.items():
                le_counts[i] += k

    def total(self) -> HistogramSnapshot:
        """Return the summary since start."""
        with self._lock:
            return self._total.snapshot()

    def recent(self) -> HistogramSnapshot:
        """Return the summary over the recent window."""
        oldest = int(self._clock.monotonic() // self._slice_s) - self._n_slices + 1
        merged = _Counts()
        with self._lock:
            for number, counts in self._slices:
                if number >= oldest:
                    merged.merge(counts)
        return merged.snapshot()

    def cumulative_buckets(self) -> tuple[list[tuple[float, int]], int, float]:
        """Return ``([(le, cumulative count), ...], count, sum_seconds)`` since start.

        ``le`` runs over :data:`PROMETHEUS_BUCKETS_S`; each cumulative count is the exact
        number of observations ``<= le`` (``+Inf`` is left out: it equals ``count``).
        """
        with self._lock:
            le_counts = list(self._le)
            count, total = self._total.count, self._total.sum
        out: list[tuple[float, int]] = []
        seen = 0
        # le_counts has one slot more (above every bound: +Inf only), left out here.
        for le, n in zip(PROMETHEUS_BUCKETS_S, le_counts, strict=False):
            seen += n
            out.append((le, seen))
        return out, count, total

    def trim(self) -> None:
        """Forget the recent window (memory cleanup); totals are kept."""
        with self._lock:
            self._slices.clear()
