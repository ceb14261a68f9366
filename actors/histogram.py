"""Latency histograms with sub-millisecond resolution.

A :class:`LatencyHistogram` keeps log-linear buckets (8 per octave, about 9% relative
width) from 1 µs to about 1000 s, both since start and over a recent window made of
rotating slices. Recording is O(1) and thread-safe; percentiles are read from the buckets
(upper bound of the bucket holding the rank, never above the exact maximum).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from modcoord.actors.clock import Clock

__all__ = ["PROMETHEUS_BUCKETS_S", "HistogramSnapshot", "LatencyHistogram"]

_MIN_S = 1e-6
_PER_OCTAVE = 8
_N_BUCKETS = _PER_OCTAVE * 30 + 2  # 1 µs .. ~1074 s, plus underflow and overflow
_UPPER = [_MIN_S * 2 ** (i / _PER_OCTAVE) for i in range(_N_BUCKETS - 1)] + [math.inf]

PROMETHEUS_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)


def _bucket(seconds: float) -> int:
    if seconds <= _MIN_S:
        return 0
    i = math.ceil(math.log2(seconds / _MIN_S) * _PER_OCTAVE - 1e-9)
    return min(i, _N_BUCKETS - 1)


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
    __slots__ = ("buckets", "count", "max", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * _N_BUCKETS
        self.count = 0
        self.sum = 0.0
        self.max = 0.0

    def add(self, i: int, seconds: float) -> None:
        self.buckets[i] += 1
        self.count += 1
        self.sum += seconds
        if seconds > self.max:
            self.max = seconds

    def merge(self, other: _Counts) -> None:
        for i, n in enumerate(other.buckets):
            if n:
                self.buckets[i] += n
        self.count += other.count
        self.sum += other.sum
        self.max = max(self.max, other.max)

    def quantile(self, q: float) -> float:
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for i, n in enumerate(self.buckets):
            seen += n
            if seen >= rank:
                return min(_UPPER[i], self.max)
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
        self.window_s = window_s
        self._slice_s = window_s / slices
        self._slices: list[tuple[int, _Counts]] = []  # (slice number, counts), oldest first
        self._n_slices = slices

    def record(self, seconds: float) -> None:
        """Add one observation, in seconds (negative values count as zero)."""
        seconds = max(0.0, seconds)
        i = _bucket(seconds)
        number = int(self._clock.monotonic() // self._slice_s)
        with self._lock:
            self._total.add(i, seconds)
            if not self._slices or self._slices[-1][0] != number:
                self._slices.append((number, _Counts()))
                if len(self._slices) > self._n_slices:
                    del self._slices[0]
            self._slices[-1][1].add(i, seconds)

    def record_many(self, values: list[float]) -> None:
        """Add several observations (seconds) under one lock acquisition."""
        if not values:
            return
        number = int(self._clock.monotonic() // self._slice_s)
        with self._lock:
            if not self._slices or self._slices[-1][0] != number:
                self._slices.append((number, _Counts()))
                if len(self._slices) > self._n_slices:
                    del self._slices[0]
            total, recent = self._total, self._slices[-1][1]
            for seconds in values:
                seconds = max(0.0, seconds)
                i = _bucket(seconds)
                total.add(i, seconds)
                recent.add(i, seconds)

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

    def cumulative_buckets(self, bounds: tuple[float, ...] = PROMETHEUS_BUCKETS_S
                           ) -> tuple[list[tuple[float, int]], int, float]:
        """Return ``([(le, cumulative count), ...], count, sum_seconds)`` since start.

        Each fine bucket is counted under the first bound at or above its upper edge.
        """
        with self._lock:
            buckets = list(self._total.buckets)
            count, total = self._total.count, self._total.sum
        out: list[tuple[float, int]] = []
        seen = 0
        j = 0
        for le in bounds:
            while j < _N_BUCKETS and _UPPER[j] <= le * (1 + 1e-9):
                seen += buckets[j]
                j += 1
            out.append((le, seen))
        return out, count, total

    def trim(self) -> None:
        """Forget the recent window (memory cleanup); totals are kept."""
        with self._lock:
            self._slices.clear()
