"""``scripts/bench``: the run end to end against real daemons and module processes prints
every figure in the documented JSON shape; ``--only`` measures just the figures asked for
(the row arithmetic of ``scripts/benchlib``: ``unit/test_bench_rows.py``)."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

__all__: list[str] = []

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench"

# One row per figure, in the table's order: (name prefix, unit, target).
EXPECTED = [
    ("cached coordinate round trip p50", "µs", "<= 1.0x"),
    ("cached coordinate round trip p99", "µs", "<= 4.0x"),
    ("publish throughput", "msg/s", ">= 0.5x"),
    ("updates delivered", "updates/s", ">= 0.3x"),
    ("cached vs uncached coordination", "fraction", ">= 0.90"),
    ("batched vs unbatched", "updates/s", ">= 10x"),
    ("critical vs normal", "fraction", ">= 0.85"),
    ("memory added", "fraction", ">= 0.50"),
    ("debounce timer lateness", "ms", "<= 2 ms"),
    ("cached coordinate p99, 1,000 modules", "µs", "<= 2.0x"),
    ("daemon resident memory when idle", "MB", "<= 50 MB"),
    ("start to ready", "s", "<= 0.5 s"),
    ("import of modcoord.supervisor.connect", "ms", "<= 1.5x"),
    ("modcoord status --json", "ms", "<= 4.0x"),
    ("adaptive debounce: updates collapsed", "updates", ">= 0.9x"),
    ("adaptive debounce: median publish-to-delivery", "ms", "<= 0.6x"),
    ("adaptive batch: median delivery latency at light load", "ms", "<= 0.5x"),
    ("adaptive batch: throughput at heavy load", "updates/s", ">= 0.95x"),
    ("refresh-ahead: cache hit rate", "fraction", ">= 0.98"),
    ("refresh-ahead: coordinate p99", "µs", "<= 0.2x"),
    ("cached coordinate p50, one CPU burner per core", "µs", "<= 1.0x"),
    ("cached coordinate p99, one CPU burner per core", "µs", "<= 2.0x"),
    ("publish throughput with the history sampling", "ratio", ">= 0.98"),
    ("dashboard: first load with a day of history", "ms", "<= 1000 ms"),
]
STARTUP = EXPECTED[12:14]
ADAPTIVE = EXPECTED[14:18]
REFRESH_AHEAD = EXPECTED[18:20]
CONTENTION = EXPECTED[20:22]
HISTORY_COST = EXPECTED[22:23]
DASHBOARD = EXPECTED[23:]


def _run_bench(timeout: float, *extra: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen([sys.executable, str(BENCH), "--quick", "--json", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the bench stops its daemons on SIGTERM
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"bench did not finish within {timeout} s; stderr:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _met(row: dict[str, object]) -> bool:
    """Recompute ``met`` from the row, as the bench documents it."""
    op, _, rest = str(row["target"]).partition(" ")
    bound = float(rest.split()[0].rstrip("x"))
    compared = row["ratio"] if rest.endswith("x") else row["value"]
    assert isinstance(compared, (int, float))
    return compared <= bound if op == "<=" else compared >= bound


def _check_rows(rows: list[dict[str, Any]], expected: list[tuple[str, str, str]]) -> None:
    """Every row has the documented shape, its expected name, unit and target, a finite
    value, and ``ratio`` and ``met`` consistent with it."""
    assert len(rows) == len(expected), [r["name"] for r in rows]
    for row, (prefix, unit, target) in zip(rows, expected, strict=True):
        assert list(row) == ["name", "value", "unit", "baseline", "ratio", "target", "met"]
        assert row["name"].startswith(prefix), row
        assert row["unit"] == unit
        assert row["target"] == target
        assert isinstance(row["met"], bool)
        value = row["value"]
        assert isinstance(value, (int, float)) and math.isfinite(value), row
        if row["target"].endswith("x"):  # compared as a ratio to a same-run baseline
            assert isinstance(row["baseline"], (int, float)) and row["baseline"] > 0, row
            assert isinstance(row["ratio"], (int, float)), row
            assert row["ratio"] == pytest.approx(value / row["baseline"], rel=0.02, abs=1e-3)
        assert row["met"] is _met(row), row


def _results(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, f"bench failed:\n{result.stderr[-3000:]}"
    assert "[bench" not in result.stderr  # no progress output with --json
    data = json.loads(result.stdout)
    assert list(data) == ["results"]
    rows: list[dict[str, Any]] = data["results"]
    return rows


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(420)
def test_quick_json_has_every_figure() -> None:
    rows = _results(_run_bench(timeout=380))
    _check_rows(rows, EXPECTED)

    by_unit = {prefix: row for row, (prefix, _, _) in zip(rows, EXPECTED, strict=True)}
    # Plausibility: measured quantities, not placeholders.
    assert by_unit["cached coordinate round trip p50"]["value"] <= (
        by_unit["cached coordinate round trip p99"]["value"])
    assert by_unit["publish throughput"]["value"] > 1000
    assert by_unit["updates delivered"]["value"] > 100
    assert 0 < by_unit["daemon resident memory when idle"]["value"] < 1024
    assert 0 < by_unit["start to ready"]["value"] < 30
    assert -1.0 <= by_unit["cached vs uncached coordination"]["value"] < 1.0
    assert -1.0 <= by_unit["critical vs normal"]["value"] < 1.0
    # A module process and a CLI call are an interpreter start and more.
    assert by_unit["modcoord status --json"]["value"] > by_unit["modcoord status --json"][
        "baseline"]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(120)
def test_only_measures_the_figures_asked_for() -> None:
    """``--only 13,14``: the two start-up figures and nothing else (no agents, one daemon)."""
    rows = _results(_run_bench(90, "--only", "13,14"))
    _check_rows(rows, STARTUP)
    imported, status = rows
    assert imported["baseline"] == status["baseline"]  # one same-run bare start for both
    assert 1 < imported["baseline"] < 5000  # ms: a real interpreter start
    assert status["value"] > status["baseline"]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(240)
def test_adaptive_figures_meet_their_targets_against_the_fixed_values() -> None:
    """``--only 15,16,17,18``: the adaptive rows, each against ``adaptive.enabled: false``
    on the same input, meet the issue's targets (collapse >= 0.9x and latency <= 0.6x of a
    fixed 300 ms delay; light-load latency <= 0.5x and heavy throughput >= 0.95x of the
    fixed window)."""
    rows = _results(_run_bench(200, "--only", "15,16,17,18"))
    _check_rows(rows, ADAPTIVE)
    collapsed, latency, light, heavy = rows
    assert collapsed["baseline"] > 100  # the fixed delay collapsed a real trace
    assert latency["baseline"] == pytest.approx(300.0, abs=1.0)  # the fixed 300 ms delay
    assert light["baseline"] == pytest.approx(100.0, abs=1.0)  # the fixed 100 ms window
    for r in (collapsed, latency, light):  # simulated time: deterministic, so exact
        assert r["met"], r
    assert heavy["value"] > 1000


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(180)
def test_refresh_ahead_figures_meet_their_targets_against_the_same_run_without() -> None:
    """``--only 19,20``: on two real daemons (TTL 400 ms, one module process each), hot
    contexts hit >= 0.98 of the time with refresh-ahead, against a baseline that misses once
    per TTL (counts, so asserted here). The p99 ratio is timing: the bench reports it
    against its 0.2x target, and this test only checks that refresh-ahead took the misses
    (a 30 ms computation) out of the tail, whatever else the machine is doing."""
    rows = _results(_run_bench(150, "--only", "19,20"))
    _check_rows(rows, REFRESH_AHEAD)
    hit_rate, p99 = rows
    assert 0.2 < hit_rate["baseline"] < 0.95  # without refresh-ahead every TTL costs misses
    assert p99["baseline"] > 30_000  # µs: the baseline's p99 is a miss (a 30 ms computation)
    assert hit_rate["met"], hit_rate
    assert p99["value"] < p99["baseline"], p99


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(300)
def test_the_contention_figure_measures_both_under_burners() -> None:
    """``--only 21``: cached coordinate p50 and p99 under one CPU burner per core, each
    against the managers echo under the same burners, in the documented shape (what the
    waits chose under the burners: ``integration/test_waiting_daemon.py``)."""
    rows = _results(_run_bench(260, "--only", "21"))
    _check_rows(rows, CONTENTION)
    assert rows[0]["value"] <= rows[1]["value"]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(240)
def test_history_cost_figure_compares_history_on_with_off() -> None:
    """``--only 22``: two real daemons, history on and off, one publishing module process,
    alternating rounds. The ratio is timing (the bench reports it against its 0.98 target);
    this test checks the figure is measured from paired rounds on a working history."""
    rows = _results(_run_bench(200, "--only", "22"))
    _check_rows(rows, HISTORY_COST)
    (cost,) = rows
    assert 0.5 < cost["value"] < 1.5, cost


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(240)
def test_dashboard_first_load_is_measured_against_an_empty_history() -> None:
    """``--only 23``: the page in headless chromium on a daemon holding a simulated day,
    against the same page on an empty history (the 1 s target is reported by the bench;
    the machine's load moves it, so this test checks the measurement, not the target)."""
    from browser import browser_or_skip

    browser_or_skip()
    rows = _results(_run_bench(200, "--only", "23"))
    _check_rows(rows, DASHBOARD)
    (first_load,) = rows
    assert 0 < first_load["baseline"] < first_load["value"]  # a day costs more than nothing
    assert first_load["value"] < 30_000  # ms: the page got ready (the bench's own limit)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.nats
@pytest.mark.timeout(240)
def test_the_simulated_hosts_figures_compare_nats_with_local() -> None:
    """``--engine nats --only 5`` (quick: 4 daemons × 25 modules, each on a connection of
    its own, on a real 3-node cluster): cached coordinate p99 and publish-to-delivery p99,
    each against one local daemon holding the same modules, in the documented shape; any
    other ``--only`` than 1 or 5 with ``--engine nats`` is refused, naming what it takes."""
    from nats_cluster import nats_server_or_skip

    nats_server_or_skip()
    rows = _results(_run_bench(200, "--engine", "nats", "--only", "5"))
    _check_rows(rows, [
        ("N5 simulated hosts (4 hosts x 25 modules): cached coordinate p99", "us",
         "<= 10.0x"),
        ("N6 simulated hosts (4 hosts x 25 modules): publish-to-delivery p99", "ms",
         "<= 10.0x")])
    refused = _run_bench(60, "--engine", "nats", "--only", "2")
    assert refused.returncode == 1
    assert "--only takes 1 (N1), 5 (N5 and N6" in refused.stderr, refused.stderr
    assert "not 2" in refused.stderr, refused.stderr
