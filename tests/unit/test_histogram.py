"""Latency histograms: sub-millisecond resolution, percentiles, recent window."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modcoord.actors import MockClock
from modcoord.actors.histogram import (
    MAX_TRACKED_S,
    MIN_TRACKED_S,
    N_BUCKETS,
    PROMETHEUS_BUCKETS_S,
    LatencyHistogram,
)


def test_percentiles_have_sub_millisecond_resolution(clock: MockClock) -> None:
    h = LatencyHistogram(clock)
    for us in range(1, 1001):  # 1 µs .. 1 ms
        h.record(us * 1e-6)
    snap = h.total()
    assert snap.count == 1000
    assert snap.p50 == pytest.approx(0.5, rel=0.1)
    assert snap.p99 == pytest.approx(0.99, rel=0.1)
    assert snap.max == pytest.approx(1.0)


def test_record_many_equals_record(clock: MockClock) -> None:
    one, many = LatencyHistogram(clock), LatencyHistogram(clock)
    values = [i * 1e-5 for i in range(500)]
    for v in values:
        one.record(v)
    many.record_many(values)
    assert one.total() == many.total()
    assert one.recent() == many.recent()


def test_recent_window_forgets_old_samples(clock: MockClock) -> None:
    h = LatencyHistogram(clock, window_s=60.0, slices=6)
    h.record(0.5)
    clock.advance(30)
    h.record(0.001)
    assert h.recent().count == 2
    clock.advance(40)  # the first sample's slice left the window
    assert h.recent().count == 1
    assert h.total().count == 2
    h.trim()
    assert h.recent().count == 0 and h.total().count == 2


def test_prometheus_buckets_are_cumulative(clock: MockClock) -> None:
    h = LatencyHistogram(clock)
    for v in (0.00005, 0.0002, 0.003, 0.2, 20.0):
        h.record(v)
    buckets, count, total = h.cumulative_buckets()
    counts = [n for _, n in buckets]
    assert counts == sorted(counts)
    assert dict(buckets)[0.0001] == 1 and dict(buckets)[0.00025] == 2
    assert count == 5 and total == pytest.approx(20.20325)


# --------------------------------------------------------------------------- exactness


def _exact_quantile(ordered: list[float], q: float) -> float:
    """The ``ceil(q * n)``-th smallest value: the rank the histogram reports."""
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def _exact_le(values: list[float], le: float) -> int:
    return sum(1 for v in values if v <= le)


def test_an_observation_at_or_below_a_bound_counts_in_that_bucket(clock: MockClock) -> None:
    h = LatencyHistogram(clock)
    h.record(0.00095)  # 0.95 ms: at most 1 ms
    buckets = dict(h.cumulative_buckets()[0])
    assert buckets[0.0005] == 0
    assert buckets[0.001] == 1


def test_every_exported_bucket_counts_exactly_at_and_around_its_bound(
        clock: MockClock) -> None:
    values: list[float] = []
    for le in PROMETHEUS_BUCKETS_S:  # the bound itself and its two float neighbours
        values += [le, math.nextafter(le, 0.0), math.nextafter(le, math.inf)]
    rng = random.Random(7)
    values += [rng.lognormvariate(-6.0, 2.0) for _ in range(5000)] + [0.0, 1e-9, 50.0]
    h = LatencyHistogram(clock)
    h.record_many(values[:100])
    for v in values[100:]:
        h.record(v)
    buckets, count, total = h.cumulative_buckets()
    assert [le for le, _ in buckets] == list(PROMETHEUS_BUCKETS_S)
    for le, n in buckets:
        assert n == _exact_le(values, le), f"le={le}"
    assert count == len(values)
    assert total == pytest.approx(math.fsum(values))


SAMPLES: dict[str, Callable[[random.Random], float]] = {
    "lognormal": lambda r: r.lognormvariate(math.log(0.002), 1.0),
    "lognormal-wide": lambda r: r.lognormvariate(math.log(0.0005), 2.5),
    "uniform-ms": lambda r: r.uniform(0.0001, 0.010),
    "exponential": lambda r: r.expovariate(1 / 0.003),
    "bimodal": lambda r: r.gauss(0.0002, 0.00002) if r.random() < 0.7 else r.gauss(0.2, 0.02),
    "pareto": lambda r: 0.0001 * r.paretovariate(1.5),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_quantiles_are_within_one_percent_of_the_exact_ones(clock: MockClock,
                                                            name: str) -> None:
    rng = random.Random(name)
    values = [min(max(SAMPLES[name](rng), MIN_TRACKED_S), MAX_TRACKED_S)
              for _ in range(20_000)]
    h = LatencyHistogram(clock)
    h.record_many(values)
    ordered = sorted(values)
    for snap in (h.total(), h.recent()):
        for q, got_ms in ((0.5, snap.p50), (0.95, snap.p95), (0.99, snap.p99)):
            exact_ms = _exact_quantile(ordered, q) * 1000.0
            assert got_ms == pytest.approx(exact_ms, rel=0.01), f"{name} p{q * 100:g}"
        assert snap.max == pytest.approx(ordered[-1] * 1000.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=MIN_TRACKED_S, max_value=MAX_TRACKED_S),
                min_size=1, max_size=300),
       st.sampled_from([0.5, 0.9, 0.95, 0.99, 0.999]))
def test_any_sample_quantile_and_bucket_is_exact_enough(values: list[float], q: float
                                                        ) -> None:
    h = LatencyHistogram(MockClock())
    for v in values:
        h.record(v)
    got = h.total()
    exact = _exact_quantile(sorted(values), q)
    assert h._total.quantile(q) == pytest.approx(exact, rel=0.01)
    assert got.count == len(values)
    for le, n in h.cumulative_buckets()[0]:
        assert n == _exact_le(values, le)


def test_memory_is_bounded_by_the_slice_count(clock: MockClock) -> None:
    h = LatencyHistogram(clock, window_s=60.0, slices=6)
    for _ in range(50):
        h.record(0.001)
        clock.advance(10)
    assert len(h._slices) <= 6
    assert all(len(c.buckets) == N_BUCKETS for _, c in h._slices)
    assert N_BUCKETS <= 2000
