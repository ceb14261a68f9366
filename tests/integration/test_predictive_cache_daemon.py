"""Predictive caching through the real daemon with a real module process: a hot context
coordinated across many TTLs never misses after its first computation (refresh-ahead), and
a mode switch computes the new mode's most read contexts before anyone asks (pre-warming).
The MockClock unit tests: ``unit/test_predictive_cache.py``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonFactory, DaemonProcess, records, start_daemon, wait_for

# A module whose answer takes 30 ms (a real computation), counting its calls per context.
_MODULE = textwrap.dedent("""
    import sys, time
    from modcoord.supervisor import connect

    class Planner:
        module_id = "planner"
        name = "planner"
        supported_modes = ["MANUAL", "HYBRID"]
        subscribe = []
        calls = 0

        def on_mode_change(self, mode, strategy, context):
            Planner.calls += 1
            time.sleep(0.03)  # quiet-period: the computation a miss costs
            return {"call": Planner.calls, "doc": context.get("doc")}

        def on_batch(self, batch):
            pass

    with connect(runtime_dir=sys.argv[1], timeout=10, reconnect=False) as client:
        client.register(Planner()).get(10)
        print("ready", flush=True)
        sys.stdin.readline()  # until the test closes our stdin
""")

TTL_MS = 400


@pytest.fixture
def module_of() -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []

    def start(daemon: DaemonProcess) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", _MODULE, str(daemon.runtime_dir)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    yield start
    for proc in procs:
        try:
            proc.communicate("\n", timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def _daemon(factory: DaemonFactory, root: Path, *extra: str) -> DaemonProcess:
    cache = {"ttl_ms": TTL_MS, "refresh_ahead": {"before_ms": 150, "min_hits": 2}}
    return start_daemon(factory, root, *extra, hybrid={"cache": cache},
                        manual={"cache": {"ttl_ms": TTL_MS}})


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_hot_context_never_misses_across_many_ttls(
        daemon_factory: DaemonFactory, tmp_path: Path, module_of: Any) -> None:
    daemon = _daemon(daemon_factory, tmp_path)
    module_of(daemon)
    with daemon.connect() as client:
        hot = {"doc": "hot"}
        first = client.coordinate("HYBRID", hot).get(10)
        assert first.cached is False and first.errors == {}
        answers = []
        end = time.monotonic() + 6 * TTL_MS / 1000.0  # six TTLs
        while time.monotonic() < end:
            answers.append(client.coordinate("HYBRID", hot).get(10))
            time.sleep(0.02)  # quiet-period: the workload's pace (a read every 20 ms)
        cache = client.status().get(10)["cache_stats"]
    assert all(a.cached for a in answers), [a.latency_ms for a in answers
                                               if not a.cached]
    calls = {a.results["planner"]["call"] for a in answers}
    assert len(calls) >= 4  # the value was recomputed several times, in the background
    assert cache["misses"] == 1 and cache["refreshes"] >= 4, cache
    assert cache["refresh_ahead"] is True and cache["refresh_failures"] == 0, cache


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_mode_switch_prewarms_the_new_modes_most_read_contexts(
        daemon_factory: DaemonFactory, tmp_path: Path, module_of: Any) -> None:
    daemon = _daemon(daemon_factory, tmp_path, "--mode", "MANUAL")
    module_of(daemon)
    with daemon.connect() as client:
        docs = {"a": 4, "b": 3, "c": 2}
        for doc, n in docs.items():
            for _ in range(n):
                client.coordinate("HYBRID", {"doc": doc}).get(10)
        # MANUAL refreshes nothing: wait until every HYBRID entry has expired.
        time.sleep(TTL_MS / 1000.0 + 0.1)  # quiet-period: expiry is real time
        before = client.status().get(10)["cache_stats"]
        assert before["prewarmed"] == 0 and before["refreshes"] == 0, before
        client.set_mode("HYBRID").get(10)
        wait_for(lambda: client.status().get(10)["cache_stats"]["prewarmed"] == 3, 10,
                 message="three contexts pre-warmed")
        answers = [client.coordinate("HYBRID", {"doc": doc}).get(10) for doc in docs]
        after = client.status().get(10)["cache_stats"]
    assert all(a.cached for a in answers), answers
    assert after["misses"] == before["misses"], (before, after)
    logged = records(daemon, message="pre-warming the cache")
    assert logged and logged[-1]["mode"] == "HYBRID" and logged[-1]["contexts"] == 3, logged
