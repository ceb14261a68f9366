"""The waiting strategy under contention, through a real daemon and a real module process:
with one CPU-burning process per core beside them, the module's waits for cached
``coordinate`` answers block at once instead of spinning (``ClientStatistics``), and so
does the daemon's I/O loop between requests (``status``'s ``server`` section); and after a
run of slow answers has made the module back off, fast ones end the back-off within a
few calls. The decision itself is unit-tested with a MockClock (``unit/test_waiting.py``)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from daemon_harness import module_script, wait_for

from modcoord.supervisor.protocol.waiting import idle_cpus

CALLS = 3000

_CALLER = module_script("wait-probe", f"""
    import json
    client.coordinate("HYBRID", {{"k": 1}}).get(10)  # computed once, then cached
    for _ in range({CALLS}):
        client.coordinate("HYBRID", {{"k": 1}}).get(10)
    s = client.statistics()
    print(json.dumps({{k: getattr(s, k) for k in
                      ("spins", "spins_paid", "blocked_busy", "blocked_backoff",
                       "idle_probes")}}))
""", modes=("HYBRID",))


def _burn(stop: Any) -> None:
    while not stop.is_set():
        for _ in range(10_000):
            pass


@pytest.fixture
def burners() -> Iterator[None]:
    """One CPU-burning process per CPU, until the test ends."""
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    procs = [ctx.Process(target=_burn, args=(stop,), daemon=True)
             for _ in range(os.cpu_count() or 1)]
    for p in procs:
        p.start()
    try:
        # They run once the probe sees no idle CPU beside this thread.
        wait_for(lambda: idle_cpus() < 1, timeout=20, message="the burners to run")
        yield
    finally:
        stop.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()


@pytest.mark.integration
@pytest.mark.serial  # its idle-CPU probe must see only its own burners, no other test
@pytest.mark.timeout(120)
def test_under_contention_client_and_daemon_block_instead_of_spinning(
        daemon: Any, burners: None) -> None:
    if not os.path.exists("/proc/loadavg"):
        pytest.skip("the idle-CPU probe reads /proc/loadavg (Linux)")
    before = daemon.connect().status().get(10)["server"]
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _CALLER, str(daemon.runtime_dir)],
                          capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr
    client = json.loads(proc.stdout.strip().splitlines()[-1])
    waits = client["spins"] + client["blocked_busy"] + client["blocked_backoff"]
    assert waits > CALLS / 2, client  # most calls waited (a few found their answer read)
    # Blocking because no CPU is idle is what the module chose for most of its waits.
    assert client["blocked_busy"] > 0.8 * waits, client
    # The probe is sampled rarely (at most once per 10 ms), not once per call.
    assert client["idle_probes"] <= (time.monotonic() - t0) / 0.01 + 2, client
    after = daemon.connect().status().get(10)["server"]
    served_busy = after["blocked_busy"] - before["blocked_busy"]
    served_spins = after["spins"] - before["spins"]
    assert served_busy > 0.8 * (served_busy + served_spins), (before, after)


FAST_CALLS = 400

_SLOW_THEN_FAST = module_script("wait-probe", f"""
    import json

    class Slow:
        module_id = "slow-answers"
        name = "slow answers"
        supported_modes = ["HYBRID"]
        subscribe = []

        def on_mode_change(self, mode, strategy, context):
            time.sleep(0.003)  # quiet-period: a module whose answer takes 3 ms
            return {{"ok": True}}

        def on_batch(self, batch):
            pass

    client.register(Slow()).get(10)
    fields = ("spins", "blocked_busy", "blocked_backoff")

    def counts():
        s = client.statistics()
        return {{k: getattr(s, k) for k in fields}}

    # Slow answers (a fresh context each: every module answers, one in 3 ms) for long
    # enough that the back-off doubles up to its bound (1 s).
    end = time.monotonic() + 2.5
    i = 0
    while time.monotonic() < end:
        client.coordinate("HYBRID", {{"slow": i}}).get(10)
        i += 1
    backing_off = client.statistics().blocked_backoff
    client.coordinate("HYBRID", {{"k": 1}}).get(10)  # computed once, then cached
    before = counts()
    for _ in range({FAST_CALLS}):
        client.coordinate("HYBRID", {{"k": 1}}).get(10)
    after = counts()
    print(json.dumps({{"slow_calls": i, "slow_backoff": backing_off,
                      **{{k: after[k] - before[k] for k in fields}}}}))
""", modes=("HYBRID",))


@pytest.mark.integration
@pytest.mark.serial  # its waits must not see other tests' load
@pytest.mark.timeout(120)
def test_fast_answers_after_slow_ones_end_the_back_off_within_a_few_calls(
        daemon: Any) -> None:
    proc = subprocess.run([sys.executable, "-c", _SLOW_THEN_FAST, str(daemon.runtime_dir)],
                          capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["slow_backoff"] > 0, got  # the slow run did back off
    # The cached calls take well under a second: without the early end every one of them
    # would block for the rest of a back-off of up to 1 s. With it, four fast answers in
    # a row end a back-off (a later streak of unpaid spins may start a shorter one).
    assert got["blocked_backoff"] < FAST_CALLS / 4, got
