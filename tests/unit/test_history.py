"""The history store (tiers, retention, degradation), the trend rules and the sparklines,
with the MockClock as the store's wall clock."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from modcoord.actors import MockClock
from modcoord.actors.trends import TrendThresholds, trend_insights
from modcoord.supervisor.cli.history import SPARK_BLOCKS, parse_since, sparkline
from modcoord.supervisor.daemon.history import TIERS, HistoryStore, row_bound
from modcoord.supervisor.daemon.sampling import ModuleRates, figures

START = 1_700_000_000.0


def _store(tmp_path: Path, clock: MockClock) -> HistoryStore:
    return HistoryStore(tmp_path / "h.sqlite3", now=clock.monotonic)


def test_downsampling_aggregates_min_max_mean_last(tmp_path: Path) -> None:
    clock = MockClock(START)
    store = _store(tmp_path, clock)
    for i in range(180):  # three minutes, one sample a second: 0..179
        store.add({"x": float(i)})
        clock.advance(1)
    store.flush()
    minute = store.series(["x"], 3600, tier=1)["series"]["x"]
    assert [p[0] for p in minute] == [int(START) + 60 * k for k in range(3)] or \
        len(minute) in (3, 4)
    first = minute[0]
    bucket = [float(i) for i in range(180) if (START + i) // 60 * 60 == first[0]]
    assert first[1:] == [min(bucket), max(bucket), sum(bucket) / len(bucket), bucket[-1]]
    seconds = store.series(["x"], 3600, tier=0)["series"]["x"]
    assert len(seconds) == 180 and seconds[-1][4] == 179.0
    store.close()


def test_retention_prunes_each_tier_after_a_simulated_month(tmp_path: Path) -> None:
    clock = MockClock(START)
    store = _store(tmp_path, clock)
    step = 60  # a month at one sample a minute (the 1 s tier is checked above)
    for i in range(31 * 86_400 // step):
        store.add({"x": float(i), "y": 1.0})
        clock.advance(step)
        if i % 500 == 0:
            store.flush()
    store.flush()
    db = sqlite3.connect(tmp_path / "h.sqlite3")
    now = clock.monotonic()
    for index, tier in enumerate(TIERS):
        oldest, count = db.execute(
            "SELECT MIN(ts), COUNT(*) FROM samples JOIN metrics ON metrics.id = metric "
            "WHERE tier = ? AND name = 'x'", (index,)).fetchone()
        assert oldest >= now - tier.retention_s - tier.resolution_s
        assert count <= tier.rows_per_metric
    total = db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    assert total <= row_bound(2)
    assert store.status()["rows"] == total
    store.close()


@pytest.mark.timeout(120)
def test_full_file_stays_under_the_stated_bound(tmp_path: Path) -> None:
    from modcoord.supervisor.daemon.history import MAX_METRIC_NAME_CHARS, MAX_METRICS, byte_bound

    clock = MockClock(START)
    store = _store(tmp_path, clock)
    store.close()
    db = sqlite3.connect(tmp_path / "h.sqlite3")
    names = [f"module.{i:02d}".ljust(MAX_METRIC_NAME_CHARS - 14, "x") + ".updates_per_s"
             for i in range(MAX_METRICS)]
    assert {len(n) for n in names} == {MAX_METRIC_NAME_CHARS}
    db.executemany("INSERT INTO metrics (id, name) VALUES (?, ?)", enumerate(names))
    rows = [(m, t, k * tier.resolution_s, 1.5, 2.5, 2.0, 2.25, 60)
            for t, tier in enumerate(TIERS) for m in range(len(names))
            for k in range(tier.rows_per_metric)]
    db.executemany("INSERT INTO samples VALUES (?,?,?,?,?,?,?,?)", rows)
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    size = (tmp_path / "h.sqlite3").stat().st_size
    assert len(rows) == row_bound()
    print(f"full history file: {size} bytes for {len(rows)} rows")
    assert size <= byte_bound(), f"{size} bytes for {len(rows)} rows"


def test_history_survives_a_new_store(tmp_path: Path) -> None:
    clock = MockClock(START)
    store = _store(tmp_path, clock)
    for i in range(10):
        store.add({"x": float(i)})
        clock.advance(1)
    store.close()
    again = _store(tmp_path, clock)
    assert again.metrics() == ["x"]
    assert [p[4] for p in again.series(["x"], 60)["series"]["x"]] == [float(i) for i in range(10)]
    again.close()


def test_corrupt_file_degrades_to_memory(tmp_path: Path) -> None:
    (tmp_path / "h.sqlite3").write_bytes(b"this is not a database" * 100)
    clock = MockClock(START)
    store = _store(tmp_path, clock)
    assert store.state == "degraded" and "h.sqlite3" in (store.reason or "")
    for i in range(5):
        store.add({"x": float(i)})
        clock.advance(1)
    assert [p[4] for p in store.series(["x"], 60)["series"]["x"]] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert store.status()["state"] == "degraded"
    store.close()


def test_an_idle_metric_is_forgotten_after_the_longest_retention(tmp_path: Path) -> None:
    clock = MockClock(START)
    store = _store(tmp_path, clock)
    store.add({"gone": 1.0, "kept": 1.0})
    store.flush()
    for _ in range(31 * 24):
        clock.advance(3600)
        store.add({"kept": 1.0})
    store.flush()
    assert store.metrics() == ["kept"]
    names = sqlite3.connect(tmp_path / "h.sqlite3").execute("SELECT name FROM metrics")
    assert [n for (n,) in names] == ["kept"]
    store.close()


def test_too_many_metrics_are_counted_not_kept(tmp_path: Path) -> None:
    from modcoord.supervisor.daemon.history import MAX_METRICS

    store = HistoryStore(None, now=MockClock(START).monotonic)
    store.add({f"m{i}": 1.0 for i in range(MAX_METRICS + 3)})
    assert len(store.metrics()) == MAX_METRICS and store.dropped_metrics == 3


def test_figures_rates_and_busiest_modules() -> None:
    before = {"debouncer": {"received": 100, "collapsed": 0}, "batcher": {"updates": 50}}
    now = {"debouncer": {"received": 300, "collapsed": 50}, "batcher": {"updates": 150},
           "performance_metrics": {"coordination_latency_ms": {"p50": 1.0, "p99": 4.0}},
           "actors": {"cache": {"restarts": 2}, "batcher": {"restarts": 1}}}
    rates = ModuleRates()
    rates.count([("a", "k", 1, "low")] * 3)
    old = rates.snapshot()
    rates.count([("a", "k", 1, "low")] * 10 + [("b", "k", 1, "low")] * 40)
    values = figures(now, before, 2.0, rates.snapshot(), old, busiest=1)
    assert values["updates_in_per_s"] == 100.0 and values["updates_delivered_per_s"] == 50.0
    assert values["collapse_ratio"] == 50 / 300 and values["restarts"] == 3
    assert values["coordination_p99_ms"] == 4.0
    assert values["module.b.updates_per_s"] == 20.0 and "module.a.updates_per_s" not in values


def _trend_store(clock: MockClock, p99: list[float], module_rate: list[float]) -> HistoryStore:
    store = HistoryStore(None, now=clock.monotonic)
    for latency, rate in zip(p99, module_rate, strict=True):
        store.add({"coordination_p99_ms": latency, "module.flood.updates_per_s": rate,
                   "module.calm.updates_per_s": 5.0})
        clock.advance(1)
    return store


def _insights(store: HistoryStore, clock: MockClock, window: float = 900
              ) -> list[dict[str, Any]]:
    return trend_insights(lambda m, s: store.values(m, s), store.metrics(), clock.monotonic(),
                          TrendThresholds(factor=4.0, window_s=window,
                                          metrics=("coordination_p99_ms",)))


def test_trend_rule_names_the_rise_and_the_module() -> None:
    clock = MockClock(START)
    store = _trend_store(clock, [2.0] * 600 + [9.0] * 300, [0.0] * 600 + [12_000.0] * 300)
    found = _insights(store, clock)
    assert len(found) == 1
    insight = found[0]
    assert set(insight) == {"id", "severity", "observed", "threshold", "window_s", "message",
                            "recommendation"}
    assert insight["id"] == "trend.coordination_p99_ms" and insight["severity"] == "warning"
    assert insight["observed"] == 4.5 and insight["threshold"] == 4.0
    assert insight["message"].startswith("coordination p99 rose 4.5x in the last 15 min")
    assert "since module flood started publishing 12k/s" in insight["message"]


def test_trend_rule_quiet_below_factor_and_without_data() -> None:
    clock = MockClock(START)
    steady = _trend_store(clock, [2.0] * 600 + [7.0] * 300, [5.0] * 900)
    assert _insights(steady, clock) == []  # 3.5x < 4x
    clock2 = MockClock(START)
    short = _trend_store(clock2, [2.0] * 10 + [90.0] * 10, [5.0] * 20)
    assert _insights(short, clock2) == []  # the window's first third holds no data


def test_trend_rule_reports_a_fall() -> None:
    clock = MockClock(START)
    store = HistoryStore(None, now=clock.monotonic)
    for i in range(900):
        store.add({"cache_hit_rate": 0.9 if i < 600 else 0.1})
        clock.advance(1)
    found = trend_insights(lambda m, s: store.values(m, s), store.metrics(),
                           clock.monotonic(), TrendThresholds(metrics=("cache_hit_rate",)))
    assert [i["id"] for i in found] == ["trend.cache_hit_rate"]
    assert "fell 9.0x" in found[0]["message"] and found[0]["severity"] == "warning"


def test_sparkline_rendering() -> None:
    assert sparkline([]) == ""
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == SPARK_BLOCKS
    assert sparkline([3, 3, 3]) == SPARK_BLOCKS[0] * 3
    line = sparkline([float(i) for i in range(600)], width=60)
    assert len(line) == 60 and line[0] == SPARK_BLOCKS[0] and line[-1] == SPARK_BLOCKS[-1]


def test_parse_since() -> None:
    import argparse

    assert parse_since("90s") == 90 and parse_since("15m") == 900
    assert parse_since("1h") == 3600 and parse_since("7d") == 7 * 86_400
    assert parse_since("120") == 120
    for bad in ("", "0", "-1h", "40d", "soon"):
        with pytest.raises(argparse.ArgumentTypeError, match="at most 30d"):
            parse_since(bad)


def test_a_module_rate_series_stops_when_the_module_does() -> None:
    """Through the Sampler, second by second on the MockClock: a module that stops
    publishing, one that unregisters (and comes back), and one that is only sometimes
    among the busiest get points while they are busiest publishers, never zeros after."""
    from modcoord.supervisor.daemon.sampling import Sampler

    clock = MockClock(START)
    store = HistoryStore(None, now=clock.monotonic)
    rates = ModuleRates()
    sampler = Sampler(store, lambda: {"modules": 3}, None, rates, busiest=2,
                      monotonic=clock.monotonic)
    sampler.sample()

    def second(**per_module: int) -> None:
        for module, n in per_module.items():
            rates.count([(module, "k", 1, "low")] * n)
        clock.advance(1)
        sampler.sample()

    for _ in range(10):  # a and b busiest; c publishes too, but less
        second(a=100, b=50, c=10)
    for _ in range(10):  # a stops (still registered): c is now among the busiest
        second(b=50, c=10)
    rates.forget("b")  # b unregisters
    for _ in range(10):
        second(c=10)
    for _ in range(5):  # b registers again and publishes (its count starts again)
        second(b=20, c=10)
    rates.forget("b")  # gone and back within one second: its count is below the last
    second(b=5, c=10)
    t0 = int(START)
    series = store.series(None, 3600)["series"]
    a, b, c = (series[f"module.{m}.updates_per_s"] for m in "abc")
    assert [p[0] for p in a] == [t0 + s for s in range(1, 11)]
    assert {p[3] for p in a} == {100.0}
    assert [p[0] for p in b] == [t0 + s for s in [*range(1, 21), *range(31, 36)]], b
    assert {p[3] for p in b} == {50.0, 20.0}
    assert [p[0] for p in c] == [t0 + s for s in range(11, 37)], c
    assert {p[3] for p in c} == {10.0}
    assert len(series["modules"]) == 37  # the sampler kept sampling the whole time
    # The minute tier's means are over the seconds the module published: no zeros in them.
    minute = store.series(["module.a.updates_per_s"], 86_400)["series"]
    assert all(p[1] == 100.0 for p in minute["module.a.updates_per_s"])


def _status(t: int, received: int, modules: int) -> dict[str, Any]:
    """A status document with every sampled figure (``figures`` reads these keys)."""
    params: dict[str, dict[str, Any]] = {
        name: {"configured": v, "effective": v * (1 + (t % 7) / 10)}
        for name, v in (("debounce.delay_ms", 300.0), ("batch.window_ms", 50.0),
                        ("batch.max_size", 100), ("cache.max_entries", 1000),
                        ("delays.widen", 1.0))}
    params["memory.strategy"] = {"configured": "balanced", "effective": "balanced"}
    return {"performance_metrics": {
                "coordination_latency_ms": {"p50": 0.05 + t % 3, "p99": 0.2 + t % 5},
                "cache_hit_rate": 0.9, "batch_efficiency": 40.0 + t % 11,
                "memory_usage_bytes": 40_000_000 + t % 1000},
            "debouncer": {"received": received, "collapsed": received // 3},
            "batcher": {"updates": received // 2}, "cache_stats": {"size": t % 1000},
            "batch_queue": {"pending": t % 17}, "modules": modules,
            "actors": {"cache": {"restarts": 0}}, "adaptive": {"parameters": params}}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_simulated_month_of_every_figure_stays_under_the_stated_bound(
        tmp_path: Path) -> None:
    """A month on the MockClock with every figure the daemon samples (what ``figures``
    makes of a full status document, the five busiest of eight modules' rates with the
    busiest set changing every hour): one sample a minute for the first 29 days and
    22 hours, then one a second (the daemon's rate) for the last two hours, written every
    5 s as the writer does. The file stays under :func:`byte_bound` and every tier
    within its retention."""
    from modcoord.supervisor.daemon.history import byte_bound

    clock = MockClock(START)
    store = _store(tmp_path, clock)
    rates = ModuleRates()
    previous: tuple[dict[str, Any], dict[str, int]] | None = None
    received = 0
    month, fine = 30 * 86_400, 2 * 3600
    t = 0
    while t < month:
        step = 60 if t < month - fine else 1
        hour = t // 3600
        for rank, module in enumerate(f"mod{(hour + k) % 8}" for k in range(8)):
            rates.count([(module, "k", 1, "low")] * (8 - rank) * step)
        received += 500 * step
        status, counts = _status(t, received, 8), rates.snapshot()
        values = figures(status, previous[0] if previous else None, float(step), counts,
                         previous[1] if previous else None, busiest=5,
                         publish_p99_ms=1.0 + t % 13)
        store.add(values)
        previous = (status, counts)
        clock.advance(step)
        t += step
        if (step == 60 and t % 36_000 == 0) or (step == 1 and t % 5 == 0):
            store.flush()
    store.flush()
    names = store.metrics()
    assert store.dropped_metrics == 0 and len(names) >= 25, names
    assert {f"module.mod{i}.updates_per_s" for i in range(8)} <= set(names)
    assert {"adaptive.debounce.delay_ms", "publish_to_delivery_p99_ms"} <= set(names)
    store.close()
    db = sqlite3.connect(tmp_path / "h.sqlite3")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    now = clock.monotonic()
    for index, tier in enumerate(TIERS):
        for oldest, count in db.execute(
                "SELECT MIN(ts), COUNT(*) FROM samples WHERE tier = ? GROUP BY metric",
                (index,)):
            assert oldest >= now - tier.retention_s - tier.resolution_s
            assert count <= tier.rows_per_metric
    rows = db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    db.close()
    size = (tmp_path / "h.sqlite3").stat().st_size
    print(f"a simulated month, {len(names)} metrics: {rows} rows, {size} bytes "
          f"(bound for them {byte_bound(len(names))}, stated bound {byte_bound()})")
    assert rows <= row_bound(len(names))
    assert size <= byte_bound(len(names)) <= byte_bound()


def test_module_rates_count_one_module_and_mixed_batches_within_the_limit() -> None:
    rates = ModuleRates(limit=2)
    rates.count([])
    rates.count([("a", "k", 1, "low")] * 5)  # one module's batch: the fast path
    rates.count([("b", "k", 1, "low"), ("a", "k", 1, "low"), ("c", "k", 1, "low"),
                 ("c", "k", 1, "low")])  # mixed: b is new (within the limit), c is not
    assert rates.snapshot() == {"a": 6, "b": 1} and rates.untracked == 2
    rates.count([("c", "k", 1, "low")] * 3)  # one untracked module's batch
    assert rates.untracked == 5
