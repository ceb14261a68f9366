"""Adaptive debouncing through the real daemon: a real module process types in bursts and
``modcoord status --json`` shows the effective debounce delay leave its configured value
and say why (the unit tests with a MockClock: ``unit/test_adaptive.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from daemon_harness import module_script, records, wait_for

# A module that types: bursts of keystrokes 40 ms apart on two keys, pauses of 1.2 s.
_TYPIST = module_script("editor", """
    for burst in range(int(sys.argv[2])):
        for n in range(12):
            client.publish("editor", "text", {"n": n}).get(10)
            client.publish("editor", "cursor", {"n": n}).get(10)
            time.sleep(0.04)  # quiet-period: the typing gap under test
        time.sleep(1.2)  # quiet-period: the pause between bursts
""", modes=("HYBRID",))


def _status(daemon: Any) -> dict[str, Any]:
    result = daemon.cli("status", "--json")
    assert result.code == 0, result.err
    status: dict[str, Any] = json.loads(result.out)
    return status


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_status_shows_the_debounce_delay_adapting_to_a_typing_module(daemon: Any) -> None:
    before = _status(daemon)["adaptive"]
    assert before["enabled"] is True  # the packaged HYBRID config adapts
    delay = before["parameters"]["debounce.delay_ms"]
    assert delay["configured"] == 300.0 and delay["effective"] == 300.0, delay
    typist = subprocess.Popen([sys.executable, "-c", _TYPIST, str(daemon.runtime_dir), "4"],
                              stderr=subprocess.PIPE, text=True)
    try:
        def adapted() -> dict[str, Any] | None:
            adaptive = _status(daemon)["adaptive"]
            param = adaptive["parameters"]["debounce.delay_ms"]
            return adaptive if param["effective"] < 150 else None

        adaptive = wait_for(adapted, timeout=30, interval=0.2,
                            message="the effective debounce delay to adapt")
    finally:
        try:
            _, err = typist.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            typist.kill()
            _, err = typist.communicate()
    assert typist.returncode == 0, err
    param = adaptive["parameters"]["debounce.delay_ms"]
    assert param["configured"] == 300.0
    # Gaps of ~40 ms (plus the client's round trip): p90 x 1.2 is well under 150 ms and
    # the packaged HYBRID floor is 60 ms.
    assert 60.0 <= param["effective"] < 150.0, param
    assert "publish gap p90" in param["reason"], param
    modules = {m["module"]: m for m in adaptive["debounce"]["modules"]}
    assert modules["editor"]["effective"] == param["effective"]
    keys = {(k["module"], k["key"]) for k in adaptive["debounce"]["keys"]}
    assert keys == {("editor", "text"), ("editor", "cursor")}
    assert adaptive["parameters"]["batch.window_ms"]["configured"] == 100.0
    # The change was logged, once (the delay moved from 300 ms and then stayed near).
    logged = records(daemon, event="adaptive",
                     message="debounce delay adapted", previous_ms=300.0)
    assert len(logged) == 1, logged
    assert records(daemon, event="adaptive", module="editor") == logged
    # Every update still arrived: nothing collapsed beyond what the debouncer counts.
    deb = _status(daemon)["debouncer"]
    assert deb["received"] == 4 * 12 * 2
    assert deb["emitted"] + deb["collapsed"] + deb["pending"] == deb["received"]


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_manual_mode_keeps_the_configured_delay_under_the_same_typing(daemon: Any) -> None:
    assert daemon.cli("mode", "MANUAL").code == 0
    typist = subprocess.Popen([sys.executable, "-c", _TYPIST, str(daemon.runtime_dir), "2"],
                              stderr=subprocess.PIPE, text=True)
    _, err = typist.communicate(timeout=40)
    assert typist.returncode == 0, err
    status = _status(daemon)
    assert status["debouncer"]["received"] == 2 * 12 * 2  # it did type
    adaptive = status["adaptive"]
    assert adaptive["enabled"] is False
    param = adaptive["parameters"]["debounce.delay_ms"]
    assert param["configured"] == param["effective"] == 300.0, param
