#!/usr/bin/env python3
"""The main job: start the daemon with its packaged configs, run module processes that
publish bursts and subscribe, show what modcoord did, and stop cleanly.

Usage: scripts/demo [--modules N] [--updates N] [--keep-running]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


class Editor:
    """A module that types into a few documents (bursts of keystrokes)."""

    supported_modes = {"MANUAL", "HYBRID", "FULLY_AUTO"}
    subscribe: list[str] = []

    def __init__(self, module_id: str) -> None:
        self.module_id = module_id
        self.name = f"Editor {module_id}"

    def on_mode_change(self, mode: str, strategy: str, context: dict[str, Any]) -> str:
        return f"{self.module_id} ready for {mode} ({strategy})"

    def on_batch(self, batch: Any) -> None:
        pass

    def get_performance_metrics(self) -> dict[str, float]:
        return {"coordination_latency": 1.0}


class Viewer:
    """A module that subscribes to every editor and counts what reaches it."""

    module_id = "viewer"
    name = "Viewer"
    supported_modes = {"MANUAL", "HYBRID", "FULLY_AUTO"}
    subscribe = ["*"]

    def __init__(self) -> None:
        self.batches = 0
        self.updates = 0
        self.latest: dict[tuple[str, str], Any] = {}
        self.lock = threading.Lock()

    def on_mode_change(self, mode: str, strategy: str, context: dict[str, Any]) -> str:
        return "viewer ok"

    def on_batch(self, batch: Any) -> None:
        with self.lock:
            self.batches += 1
            self.updates += len(batch.updates)
            for u in batch.updates:
                self.latest[(u.module_id, u.key)] = u.payload


def editor_process(runtime_dir: str, module_id: str, updates: int, seed: int,
                   out: Any) -> None:
    from modcoord.supervisor import connect

    rng = random.Random(seed)
    with connect(runtime_dir=runtime_dir) as coord:
        coord.register(Editor(module_id)).get(timeout=5)
        futures = []
        text = ""
        for i in range(updates):
            doc = f"doc-{rng.randrange(5)}"
            text += rng.choice("abcdefghij ")
            priority = "critical" if i % 97 == 0 else rng.choice(["high", "medium", "low"])
            futures.append(coord.publish(module_id, doc, {"text": text[-40:], "n": i}, priority))
        for f in futures:
            f.get(timeout=10)
        hits = 0
        for i in range(50):
            result = coord.coordinate("HYBRID", {"user": i % 5, "view": "main"}).get(timeout=5)
            hits += result.cached
        out.put((module_id, updates, hits))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--modules", type=int, default=3, help="editor processes (default 3)")
    parser.add_argument("--updates", type=int, default=2000, help="updates per editor")
    parser.add_argument("--keep-running", action="store_true", help="leave the daemon running")
    args = parser.parse_args()

    runtime = Path(tempfile.mkdtemp(prefix="modcoord-demo-"))
    cli = [sys.executable, "-m", "modcoord.supervisor"]
    print(f"$ modcoord start --runtime-dir {runtime}")
    subprocess.run([*cli, "start", "--runtime-dir", str(runtime)], check=True)
    from modcoord.supervisor import connect

    try:
        with connect(runtime_dir=runtime) as coord:
            viewer = Viewer()
            coord.register(viewer).get(timeout=5)
            ctx = mp.get_context("spawn")
            out = ctx.Queue()
            started = time.perf_counter()
            procs = [
                ctx.Process(target=editor_process,
                            args=(str(runtime), f"editor-{i}", args.updates, i, out))
                for i in range(args.modules)
            ]
            for p in procs:
                p.start()
            reports = [out.get(timeout=120) for _ in procs]
            for p in procs:
                p.join(timeout=30)
            published = sum(r[1] for r in reports)
            deadline = time.monotonic() + 10  # the last updates are still debouncing
            status = coord.status().get(timeout=10)
            while time.monotonic() < deadline:
                status = coord.status().get(timeout=10)
                if status["debouncer"]["pending"] == 0 and status["batch_queue"]["pending"] == 0:
                    break
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
            insights = coord.insights().get(timeout=10)
        with viewer.lock:
            delivered, batches, keys = viewer.updates, viewer.batches, len(viewer.latest)
        perf = status["performance_metrics"]
        lat = perf["coordination_latency_ms"]
        deb = status["debouncer"]
        print()
        print(f"{args.modules} editor processes published {published:,} updates "
              f"in {elapsed:.2f} s")
        print(f"  debouncer: {deb['received']:,} in, {deb['emitted']:,} out, "
              f"{deb['collapsed']:,} collapsed "
              f"(collapse ratio {deb['received'] / max(1, deb['emitted']):.1f}:1)")
        print(f"  viewer received {delivered:,} updates in {batches:,} batches "
              f"({keys} distinct keys, latest payload of each)")
        print(f"  cache hit rate {perf['cache_hit_rate']:.2f} "
              f"({sum(r[2] for r in reports)} of {50 * len(reports)} coordinations cached)")
        print(f"  coordination latency ms: p50 {lat['p50']:.3f}  p95 {lat['p95']:.3f}  "
              f"p99 {lat['p99']:.3f}")
        print(f"  daemon memory {perf['memory_usage_bytes'] / 1048576:.1f} MiB, "
              f"actors: " + ", ".join(f"{n} ({a['restarts']} restarts)"
                                       for n, a in status["actors"].items()))
        for insight in insights["insights"]:
            print(f"  insight [{insight['severity']}] {insight['id']}: {insight['message']}")
    finally:
        if not args.keep_running:
            print(f"\n$ modcoord stop --runtime-dir {runtime}")
            subprocess.run([*cli, "stop", "--runtime-dir", str(runtime)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
