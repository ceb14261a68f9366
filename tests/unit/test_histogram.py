"""Latency histograms: sub-millisecond resolution, percentiles, recent window."""

from __future__ import annotations

import pytest

from modcoord.actors import MockClock
from modcoord.actors.histogram import LatencyHistogram


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
