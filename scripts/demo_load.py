#!/usr/bin/env python3
"""A demo load for a running daemon: module processes that publish at rates that rise
and fall (a few "editors" typing bursts, one "flood" module that starts late), a viewer
subscribing to all of them, and coordination rounds now and then. For screenshots of the
dashboard and for trying ``modcoord history``/``top`` by hand.

Usage: scripts/demo_load.py RUNTIME_DIR [--seconds 90] [--editors 3]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import random
import sys
import time
from typing import Any


class Module:
    supported_modes = {"MANUAL", "HYBRID", "FULLY_AUTO"}

    def __init__(self, module_id: str, subscribe: list[str]) -> None:
        self.module_id = module_id
        self.name = module_id.capitalize()
        self.subscribe = subscribe
        self.received = 0

    def on_mode_change(self, mode: str, strategy: str, context: dict[str, Any]) -> str:
        time.sleep(0.002)  # a little work, so that coordination latency is not zero
        return f"{self.module_id} ready"

    def on_batch(self, batch: Any) -> None:
        self.received += len(batch.updates)


def publisher(runtime_dir: str, module_id: str, seconds: float, base_rate: float,
              start_after: float, seed: int) -> None:
    from modcoord.supervisor import connect

    rng = random.Random(seed)
    with connect(runtime_dir=runtime_dir, timeout=10) as client:
        client.register(Module(module_id, [])).get(10)
        t0 = time.monotonic()
        time.sleep(start_after)
        n = 0
        while (now := time.monotonic() - t0) < seconds:
            rate = base_rate * (1.2 + math.sin(now / 9 + seed)) * rng.uniform(0.7, 1.3)
            for _ in range(max(1, int(rate / 10))):
                client.publish(module_id, f"doc{rng.randrange(40)}", {"n": n})
                n += 1
            if rng.random() < 0.05:
                client.coordinate("HYBRID", {"doc": rng.randrange(8)}).get(10)
            time.sleep(0.1)


def viewer(runtime_dir: str, seconds: float) -> None:
    from modcoord.supervisor import connect

    with connect(runtime_dir=runtime_dir, timeout=10) as client:
        client.register(Module("viewer", ["*"])).get(10)
        time.sleep(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runtime_dir")
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--editors", type=int, default=3)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=viewer, args=(args.runtime_dir, args.seconds + 2))]
    for i in range(args.editors):
        procs.append(ctx.Process(target=publisher, args=(
            args.runtime_dir, f"editor{i}", args.seconds, 40.0 * (i + 1), 0.0, i)))
    procs.append(ctx.Process(target=publisher, args=(
        args.runtime_dir, "flood", args.seconds, 600.0, args.seconds / 2, 99)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(args.seconds + 30)
    return 0 if all(p.exitcode == 0 for p in procs) else 1


if __name__ == "__main__":
    sys.exit(main())
