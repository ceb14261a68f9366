"""Soak: minutes of continuous publishing from several real client processes.

One real daemon (packaged configs, HYBRID). Four publisher processes publish continuously
(``RATE`` updates/s each, in pipelined bursts, over a bounded key space: cold keys
republished about once a second are delivered one by one, hot keys republished ten times a
second are collapsed by the debouncer, latest wins), two subscriber
processes receive every publisher's updates and only listen. Meanwhile the daemon's RSS is
sampled every second (psutil on its pid) and the test process checks it still answers.

Afterwards (debouncer and batcher flushed) the test proves:

- memory plateaus: the highest RSS of the last third of the run is at most
  ``PLATEAU_GROWTH`` (10 %, at least 4 MiB) above the highest of the middle third, and
  every sample is below the daemon's own ``memory.max_rss_mb``;
- nothing accepted is lost: the debouncer received exactly the accepted updates; each was
  either emitted or collapsed by a later publish for its key (latest wins); every
  subscriber received every emitted update (the same count of distinct seqs), only
  accepted seqs, and the last accepted update of every key; nothing counted undeliverable.

``MODCOORD_SOAK_S`` sets the publishing time (default 150 s; CI runs the default),
``MODCOORD_SOAK_RATE`` each publisher's rate (default 250/s). The figures are printed.
"""

from __future__ import annotations

import array
import contextlib
import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from daemon_harness import DaemonProcess, wait_for
from server_harness import Publisher

from modcoord.supervisor.daemon.config import MODES

SOAK_S = float(os.environ.get("MODCOORD_SOAK_S", "150"))
RATE = float(os.environ.get("MODCOORD_SOAK_RATE", "250"))
PUBLISHERS = 4
SUBSCRIBERS = 2
COLD_KEYS = 200  # per publisher: four updates in five, each key about once a second
HOT_KEYS = 5  # one update in five, each key ten times a second: collapsed (latest wins)
BURST = 25  # publishes pipelined before waiting for their answers
PAD = "x" * 200  # payload padding (bytes on the wire per update: about 260)
PLATEAU_GROWTH = 0.10
PLATEAU_FLOOR = 4 << 20
_SPAWN = multiprocessing.get_context("spawn")

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class _Subscriber(Publisher):
    def __init__(self, module_id: str, sources: list[str]) -> None:
        super().__init__(module_id, f"soak {module_id}", MODES)
        self.subscribe = sources
        self.lock = threading.Lock()
        self.seqs = array.array("q")
        self.last: dict[tuple[str, str], int] = {}
        self.batches = 0

    def on_batch(self, batch: Any) -> None:
        with self.lock:
            self.batches += 1
            for u in batch.updates:
                self.seqs.append(u.seq)
                k = (u.module_id, u.key)
                if u.seq > self.last.get(k, -1):
                    self.last[k] = u.seq


def _key(n: int) -> str:
    """The key of a publisher's ``n``-th update."""
    return f"hot{(n // 5) % HOT_KEYS}" if n % 5 == 0 else f"k{n % COLD_KEYS}"


def _publisher_main(runtime_dir: str, module_id: str, rate: float, conn: Any) -> None:
    """Publish ``BURST`` updates every ``BURST / rate`` s until told to stop; report the
    accepted seqs (and the last one per key) and the refusals by type."""
    from modcoord.supervisor import connect

    try:
        coord = connect(runtime_dir=runtime_dir, timeout=30, name=f"soak-{module_id}")
        coord.register(Publisher(module_id, f"soak {module_id}", MODES)).get(30)
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    with coord:
        conn.send(("ready", os.getpid()))
        if conn.recv() != "go":
            return
        accepted = array.array("q")
        last: dict[str, int] = {}
        refused: dict[str, int] = {}
        n = 0
        interval = BURST / rate
        next_t = time.monotonic()
        pause = threading.Event()
        while not conn.poll():
            keys = [_key(n + i) for i in range(BURST)]
            futures = [coord.publish(module_id, key, {"n": n + i, "pad": PAD})
                       for i, key in enumerate(keys)]
            n += BURST
            for key, future in zip(keys, futures, strict=True):
                try:
                    seq = future.get(60)
                except Exception as exc:
                    refused[type(exc).__name__] = refused.get(type(exc).__name__, 0) + 1
                else:
                    accepted.append(seq)
                    last[key] = seq
            next_t += interval
            pause.wait(max(0.0, next_t - time.monotonic()))
        conn.recv()  # "stop"
        conn.send(("ok", {"accepted": accepted.tobytes(), "last": last, "refused": refused,
                          "published": n, "losses": coord.statistics().connection_losses}))
        conn.recv()  # "exit"


def _subscriber_main(runtime_dir: str, module_id: str, sources: list[str], conn: Any) -> None:
    """Receive; on "summary" report counts and the last seq per key, on "final" also
    every seq received."""
    from modcoord.supervisor import connect

    sub = _Subscriber(module_id, sources)
    try:
        coord = connect(runtime_dir=runtime_dir, timeout=30, name=f"soak-{module_id}")
        coord.register(sub).get(30)
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    with coord:
        conn.send(("ready", os.getpid()))
        while True:
            cmd = conn.recv()
            if cmd == "exit":
                return
            with sub.lock:
                out: dict[str, Any] = {"received": len(sub.seqs), "batches": sub.batches,
                                       "last": dict(sub.last),
                                       "losses": coord.statistics().connection_losses}
                if cmd == "final":
                    out["seqs"] = sub.seqs.tobytes()
            conn.send(("ok", out))


class _Child:
    def __init__(self, target: Any, *args: Any) -> None:
        self.conn, child = _SPAWN.Pipe()
        self.proc = _SPAWN.Process(target=target, args=(*args, child), daemon=True)
        self.proc.start()

    def recv(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise AssertionError(f"process {self.proc.pid}: no answer within {timeout} s")
        kind, value = self.conn.recv()
        if kind == "error":
            raise AssertionError(f"process {self.proc.pid} failed: {value}")
        return value

    def ask(self, cmd: str, timeout: float = 60.0) -> Any:
        self.conn.send(cmd)
        return self.recv(timeout)

    def stop(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send("exit")
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


def _counters(status: dict[str, Any]) -> dict[str, int]:
    d = status["debouncer"]
    return {"received": d["received"], "emitted": d["emitted"], "collapsed": d["collapsed"],
            "cancelled": d["cancelled"], "pending": d["pending"],
            "undelivered": d["undelivered"], "undeliverable": status["undeliverable"],
            "delivery_errors": status["batcher"]["delivery_errors"],
            "rejected": status["batcher"]["rejected"]}


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


@pytest.mark.timeout(int(SOAK_S) + 240)
def test_soak_rss_plateaus_and_nothing_accepted_is_lost(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path / "soak").start()
    children: list[_Child] = []
    try:
        _soak(daemon, children)
    finally:
        for c in children:
            c.stop()
        daemon.stop()


def _soak(daemon: DaemonProcess, children: list[_Child]) -> None:
    rd = str(daemon.runtime_dir)
    pub_ids = [f"soak-pub-{i}" for i in range(PUBLISHERS)]
    subs = [_Child(_subscriber_main, rd, f"soak-sub-{j}", pub_ids) for j in range(SUBSCRIBERS)]
    children += subs
    for s in subs:
        s.recv(60)
    pubs = [_Child(_publisher_main, rd, mid, RATE) for mid in pub_ids]
    children += pubs
    for p in pubs:
        p.recv(60)
    process = psutil.Process(daemon.pid)
    with daemon.connect(timeout=30) as client:
        status = client.status().get(30)
        limit = status["memory"]["max_rss_bytes"]
        before = _counters(status)
        samples: list[int] = []
        for p in pubs:
            p.conn.send("go")
        t0 = time.monotonic()
        tick = threading.Event()
        next_status = t0 + 10
        while (now := time.monotonic()) < t0 + SOAK_S:
            assert daemon.proc is not None and daemon.proc.poll() is None, "the daemon died"
            samples.append(process.memory_info().rss)
            if now >= next_status:  # the daemon still answers a control call promptly
                assert client.status().get(30)["pid"] == daemon.pid
                next_status += 10
            tick.wait(max(0.0, t0 + len(samples) - time.monotonic()))
        reports = [p.ask("stop", 120) for p in pubs]
        elapsed = time.monotonic() - t0
        # Everything pending goes out now (HYBRID would anyway within a second or so).
        client.actor("debouncer").flush().get(30)
        client.actor("batcher").flush().get(30)
        wait_for(lambda: client.status().get(30)["debouncer"]["pending"] == 0, 30,
                 message="the debouncer to be empty")

        accepted: set[int] = set()
        last: dict[tuple[str, str], int] = {}
        refused: dict[str, int] = {}
        for mid, r in zip(pub_ids, reports, strict=True):
            seqs = array.array("q")
            seqs.frombytes(r["accepted"])
            accepted.update(seqs)
            last.update({(mid, k): s for k, s in r["last"].items()})
            for name, count in r["refused"].items():
                refused[name] = refused.get(name, 0) + count
            assert r["losses"] == 0, f"{mid} lost its connection"

        def caught_up() -> bool:
            return all(all(s.ask("summary")["last"].get(k) == seq for k, seq in last.items())
                       for s in subs)

        with contextlib.suppress(AssertionError):  # what is missing is reported below
            wait_for(caught_up, 60, interval=0.5, message="every key's last update delivered")
        finals = [s.ask("final", 120) for s in subs]
        after = _counters(client.status().get(30))
    delta = {k: after[k] - before[k] for k in after}

    # -- the figures
    third = max(1, len(samples) // 3)
    first, middle, last_third = samples[:third], samples[third:2 * third], samples[2 * third:]
    rate = len(accepted) / elapsed
    print(f"\nsoak: {elapsed:.0f} s, {PUBLISHERS} publishers x {RATE:.0f}/s -> accepted "
          f"{len(accepted)} ({rate:.0f}/s), refused {refused}; debouncer {delta}")
    print(f"soak: RSS max by third {_mib(max(first))} / {_mib(max(middle))} / "
          f"{_mib(max(last_third))} (min {_mib(min(samples))}, limit {_mib(limit)}, "
          f"{len(samples)} samples)")
    for j, f in enumerate(finals):
        print(f"soak: subscriber {j}: {f['received']} updates in {f['batches']} batches")

    # -- memory
    assert max(samples) < limit, f"RSS {_mib(max(samples))} reached memory.max_rss_mb"
    allowed = max(PLATEAU_FLOOR, PLATEAU_GROWTH * max(middle))
    assert max(last_third) <= max(middle) + allowed, (
        f"RSS still growing: last third peaks at {_mib(max(last_third))}, middle third at "
        f"{_mib(max(middle))} (allowed +{_mib(allowed)})")

    # -- load happened, nothing accepted was lost
    assert len(accepted) >= 0.5 * RATE * PUBLISHERS * elapsed, "the publishers fell far behind"
    assert delta["received"] == len(accepted), delta
    assert delta["pending"] == 0 and delta["cancelled"] == 0, delta
    assert delta["emitted"] + delta["collapsed"] == delta["received"], delta
    assert delta["undelivered"] == delta["undeliverable"] == delta["delivery_errors"] == 0, delta
    for j, f in enumerate(finals):
        got = array.array("q")
        got.frombytes(f["seqs"])
        distinct = set(got)
        assert distinct <= accepted, f"subscriber {j} got {len(distinct - accepted)} unknown seqs"
        assert len(distinct) == delta["emitted"], (
            f"subscriber {j} received {len(distinct)} distinct updates of the "
            f"{delta['emitted']} emitted ({delta['emitted'] - len(distinct)} lost)")
        missing = [k for k, seq in last.items() if f["last"].get(k) != seq]
        assert not missing, f"subscriber {j}: {len(missing)} keys miss their last update"
        assert f["losses"] == 0, f"subscriber {j} lost its connection"
