"""Resource awareness through the real daemon: configured with a ``memory.max_rss_mb``
below its real resident memory, the daemon escalates its memory strategy step by step and
caps its cache, ``status --json`` and ``insights --json`` say so with the configured value
and why, the change is logged, and a live ``reload`` raising the limit relaxes both (the
unit tests with a MockClock and fake readers: ``unit/test_resources.py``)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from daemon_harness import records, wait_for


def _json(daemon: Any, *command: str) -> dict[str, Any]:
    result = daemon.cli(*command, "--json")
    assert result.code == 0, result.err
    out: dict[str, Any] = json.loads(result.out)
    return out


def _pressure(daemon: Any) -> tuple[Any, Any, dict[str, Any]]:
    status = _json(daemon, "status")
    params = status["adaptive"]["parameters"]
    return params["memory.strategy"], params["cache.max_entries"], status


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_low_max_rss_escalates_caps_the_cache_and_a_reload_relaxes(
        daemon_factory: Any) -> None:
    d = daemon_factory(configs={"hybrid": {
        "memory": {"strategy": "conservative", "max_rss_mb": 5, "check_interval_ms": 100},
        "cache": {"max_entries": 1000},
        "adaptive": {"resources": {"hold_ms": 300}},
    }})

    def escalated() -> dict[str, Any] | None:
        strategy, _cap, status = _pressure(d)
        return status if strategy["effective"] == "aggressive" else None

    status = wait_for(escalated, 15.0, message="the strategy escalated to aggressive")
    strategy, cap, _ = _pressure(d)
    assert strategy["configured"] == "conservative"
    assert "memory pressure (rss" in strategy["reason"]
    assert "of memory.max_rss_mb 5" in strategy["reason"]
    assert (cap["configured"], cap["effective"]) == (1000, 250)  # x 0.5 per step, 2 steps
    assert status["cache_stats"]["max_size"] == 250
    assert status["memory"]["strategy"] == "aggressive"
    resources = status["adaptive"]["resources"]
    assert resources["memory_level"] == 2 and resources["escalations"] == 2
    rss_mb = status["memory"]["rss_bytes"] / (1024 * 1024)
    assert rss_mb > 5 * 0.9, rss_mb  # the real RSS is what is above the limit
    # Logged once per step, with readable fields.
    steps = records(d, message="memory pressure: strategy escalated, cache capped")
    assert [r["strategy"] for r in steps] == ["balanced", "aggressive"], steps
    assert steps[0]["previous_strategy"] == "conservative" and steps[1]["cache_cap"] == 250
    # The insight says what escalated and which key to raise.
    insights = wait_for(
        lambda: [i for i in _json(d, "insights")["insights"]
                 if i["id"] == "resource_pressure"], 15.0,
        message="the resource_pressure insight")
    assert "strategy escalated to aggressive, cache capped at 250 of 1000 entries: " \
        "raise memory.max_rss_mb" in insights[0]["recommendation"]
    # A live reload raising the limit: the pressure is gone, both steps relax.
    d.edit_config("hybrid", {"memory": {"max_rss_mb": 100000}})
    assert d.cli("reload").code == 0

    def relaxed() -> dict[str, Any] | None:
        strategy, cap, status = _pressure(d)
        return status if strategy["effective"] == "conservative" and \
            cap["effective"] == 1000 else None

    status = wait_for(relaxed, 15.0, message="the strategy relaxed to conservative")
    assert status["cache_stats"]["max_size"] == 1000
    assert status["adaptive"]["resources"]["relaxations"] == 2
    assert len(records(d, message="memory pressure eased: strategy and cache cap relaxed "
                                  "a step")) == 2


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_manual_never_escalates_under_the_same_pressure(daemon_factory: Any) -> None:
    d = daemon_factory("--mode", "MANUAL", configs={"manual": {
        "memory": {"max_rss_mb": 5, "check_interval_ms": 100}}})
    # The pressure cleanup (not an adaptation) still runs: wait for it, then look.
    wait_for(lambda: records(d, message="memory pressure: rss above the limit"), 15.0,
             message="the pressure check to run")
    strategy, cap, status = _pressure(d)
    assert strategy["effective"] == strategy["configured"] == "conservative"
    assert cap["effective"] == cap["configured"]
    assert "resources" not in status["adaptive"] and status["adaptive"]["enabled"] is False
    assert not records(d, message="memory pressure: strategy escalated, cache capped")


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_cpu_pressure_widens_delays_and_windows_and_relaxes(daemon_factory: Any) -> None:
    # A CPU threshold the daemon's own work (a check every 50 ms) passes: "saturated".
    d = daemon_factory(configs={"hybrid": {
        "memory": {"check_interval_ms": 50},
        "adaptive": {"resources": {"cpu_enter_fraction": 0.0002, "cpu_exit_fraction": 0.0001,
                                   "cpu_window_ms": 1000, "hold_ms": 200}},
    }})

    def widened() -> dict[str, Any] | None:
        status = _json(d, "status")
        return status if status["adaptive"]["resources"]["widening"] else None

    status = wait_for(widened, 20.0, message="delays widened under CPU pressure")
    params = status["adaptive"]["parameters"]
    assert (params["delays.widen"]["configured"], params["delays.widen"]["effective"]) == \
        (1.0, 1.5)  # the packaged HYBRID adaptive.resources.cpu_widen_factor
    assert "above adaptive.resources.cpu_enter_fraction" in params["delays.widen"]["reason"]
    assert "widened x1.5" in params["debounce.delay_ms"]["reason"]
    assert params["debounce.delay_ms"]["effective"] == 450.0  # 300 x 1.5, within max_ms 600
    assert "widened x1.5" in params["batch.window_ms"]["reason"]
    assert params["batch.window_ms"]["effective"] <= 100.0  # never past batch.window_ms
    assert records(d, message="cpu pressure: debounce delays and batch windows widened")
    d.edit_config("hybrid", {"adaptive": {"resources": {"cpu_enter_fraction": 0.99,
                                                        "cpu_exit_fraction": 0.98}}})
    assert d.cli("reload").code == 0
    wait_for(lambda: not _json(d, "status")["adaptive"]["resources"]["widening"], 20.0,
             message="the widening relaxed")
    params = _json(d, "status")["adaptive"]["parameters"]
    assert params["delays.widen"]["effective"] == 1.0
    assert params["debounce.delay_ms"]["effective"] == 300.0
