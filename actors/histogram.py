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
thread-safe; recording many at once (:meth:`LatencyHistogram.record_many`, a batch's
latencies) finds every value's bucket at C speed, from the bits of its IEEE double.
Memory is bounded: :data:`N_BUCKETS` counters per counts object, one for the
totals and one per window slice (at most ``slices``).
"""

from __future__ import annotations

import math
import threading
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from itertools import repeat
from operator import rshift

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
    if seconds >= MAX_TRACKED_S:  # infinity included
        return _OVERFLOW
    m, e = math.frexp(seconds)  # seconds = m * 2^e, 0.5 <= m < 1
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


# A positive double is 1.f x 2^(E - 1023), E its 11 exponent bits and f its 52 mantissa
# bits; the top log2(SUB_BUCKETS) bits of f are exactly ``int((m - 0.5) * 2 * SUB_BUCKETS)``
# of :func:`_bucket` (``m = 1.f / 2``, ``e = E - 1022``). So a value's bits shifted right
# by ``_BITS_SHIFT`` are ``E * SUB_BUCKETS + sub-bucket``: its fine bucket plus
# ``_BITS_OFFSET`` (before clamping into the underflow and overflow buckets).
_SUB_BITS = SUB_BUCKETS.bit_length() - 1
assert 1 << _SUB_BITS == SUB_BUCKETS, "SUB_BUCKETS must be a power of two"
_BITS_SHIFT = 52 - _SUB_BITS
_BITS_OFFSET = (1022 + _MIN_EXP) * SUB_BUCKETS - 1


def _le_of(i: int) -> int:
    """The exported bound index (``bisect_left`` over :data:`PROMETHEUS_BUCKETS_S`) of
    every value in fine bucket ``i``, or -1 when a bound lies inside the bucket (its
    values must then be compared one by one)."""
    lower, upper = _bounds(i)
    first = bisect_left(PROMETHEUS_BUCKETS_S, lower)
    inside = first < len(PROMETHEUS_BUCKETS_S) and PROMETHEUS_BUCKETS_S[first] < upper
    return -1 if inside else first


_LE_OF_BUCKET: tuple[int, ...] = tuple(_le_of(i) for i in range(N_BUCKETS))
_le_index = partial(bisect_left, PROMETHEUS_BUCKETS_S)


def _counts_of(values: list[float]) -> tuple[dict[int, int], Mapping[int, int]]:
    """``values`` (each >= 0) counted per fine bucket (:func:`_bucket`) and per exported
    bound index (``bisect_left`` over :data:`PROMETHEUS_BUCKETS_S`), exactly, with no
    Python step per value: the buckets come from the values' bits, and a bound's index
    from the bucket unless a bound lies inside a value's bucket."""
    by_bits = Counter(map(rshift, array("q", array("d", values).tobytes()),
                          repeat(_BITS_SHIFT)))
    fine: dict[int, int] = {}
    le: dict[int, int] = {}
    straddled = False
    for bits, k in by_bits.items():
        i = bits - _BITS_OFFSET
        if i < 0:
            i = 0
        elif i > _OVERFLOW:
            i = _OVERFLOW
        fine[i] = fine.get(i, 0) + k
        j = _LE_OF_BUCKET[i]
        if j < 0:
            straddled = True
        else:
            le[j] = le.get(j, 0) + k
    if straddled:
        return fine, Counter(map(_le_index, values))
    return fine, le


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

    def add_many(self, buckets: Mapping[int, int], n: int, total_s: float, high: float,
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
        """Add several observations (seconds) under one lock acquisition.

        Exactly what :meth:`record` of each would count, at a fraction of the cost per
        value: every step per value runs in C (the clamp at zero, each value's bucket
        from its bits, counting them), and the rest is done per distinct bucket — a
        batch's latencies fall into a few.
        """
        if len(values) < 2:
            if values:
                self.record(values[0])
            return
        number = int(self._clock.monotonic() // self._slice_s)
        values = [v if v > 0.0 else 0.0 for v in values]  # NaN and negatives count as 0
        fine, le = _counts_of(values)
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
