"""Daemons of a modcoord cluster on NATS, for the NATS engine's integration tests: real
daemon processes (separate runtime directories, as separate hosts) on a
:class:`~nats_cluster.NatsCluster`, and real module processes on them.

:func:`nats_daemon` starts one with ``engine: {kind: nats}`` pointed at the cluster;
:data:`SUBSCRIBER` and :data:`PUBLISHER` are module processes (``python -c``) that record
what they received and what their publishes were answered with, as JSON lines.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daemon_harness import DaemonFactory, DaemonProcess, wait_for
from nats_cluster import NatsCluster

__all__ = ["COORDINATOR", "PUBLISHER", "SUBSCRIBER", "nats_daemon", "read_lines", "start_module",
           "wait_settled"]

#: A subscriber module: ``argv``: runtime dir, module id, sources (comma-separated), out
#: file. Each received update becomes a line ``{"call", "batch", "key", "payload", "seq",
#: "module"}`` (``call`` numbers the ``on_batch`` calls of the process).
SUBSCRIBER = textwrap.dedent("""\
    import json, sys, threading, time
    from modcoord.supervisor import connect

    runtime, module_id, sources, out = sys.argv[1:5]
    lock = threading.Lock()
    sink = open(out, "a", buffering=1)
    calls = [0]

    class Module:
        name = module_id
        supported_modes = ["MANUAL", "HYBRID", "FULLY_AUTO"]
        subscribe = sources.split(",")

        def __init__(self):
            self.module_id = module_id

        def on_mode_change(self, mode, strategy, context):
            return {"host": runtime, "mode": mode}

        def on_batch(self, batch):
            with lock:
                calls[0] += 1
                for u in batch.updates:
                    sink.write(json.dumps({"call": calls[0], "batch": batch.batch_id,
                                           "key": u.key,
                                           "payload": u.payload, "seq": u.seq,
                                           "module": u.module_id}) + "\\n")

    with connect(runtime_dir=runtime, timeout=10, reconnect=False) as client:
        client.register(Module()).get(10)
        print("READY", flush=True)
        while True:  # it only listens; batches arrive on the client's thread
            time.sleep(0.5)  # quiet-period
    """)

#: A publisher module: ``argv``: runtime dir, module id, keys, rounds, out file and
#: optionally a pause in seconds between rounds. Publishes ``rounds`` × ``keys`` updates
#: (payload = round number; with ``keys`` 0, one update per round under a key of its own,
#: ``u<round>``), prints ``SENT`` once the first round is out, then writes one line per
#: answer ``{"key", "payload", "result"}`` (``result``: the seq, or the error's type name).
PUBLISHER = textwrap.dedent("""\
    import json, sys, time
    from modcoord.supervisor import connect

    runtime, module_id, keys, rounds, out = sys.argv[1:6]
    keys, rounds = int(keys), int(rounds)
    pause = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0

    class Module:
        name = module_id
        supported_modes = ["MANUAL", "HYBRID", "FULLY_AUTO"]
        subscribe = []

        def __init__(self):
            self.module_id = module_id

        def on_mode_change(self, mode, strategy, context):
            return {"host": runtime, "mode": mode}

        def on_batch(self, batch):
            pass

    with connect(runtime_dir=runtime, timeout=10, reconnect=False) as client:
        client.register(Module()).get(10)
        sent = []
        for r in range(rounds):
            names = [f"k{k}" for k in range(keys)] if keys else [f"u{r}"]
            for name in names:
                sent.append((name, r, client.publish(module_id, name, r)))
            if r == 0:
                print("SENT", flush=True)
            if pause:
                time.sleep(pause)  # quiet-period: paces the load over the test's window
        with open(out, "w") as sink:
            for key, payload, future in sent:
                try:
                    result = future.get(30)
                except Exception as exc:
                    result = type(exc).__name__
                sink.write(json.dumps({"key": key, "payload": payload,
                                       "result": result}) + "\\n")
        print("DONE", flush=True)
    """)


def nats_daemon(factory: DaemonFactory, root: Path, cluster: NatsCluster, instance_id: str,
                *, partitions: int = 8, modes: Mapping[str, Mapping[str, Any]] | None = None,
                engine: Mapping[str, Any] | None = None, start: bool = True
                ) -> DaemonProcess:
    """A daemon on ``cluster`` named ``instance_id`` (its own runtime directory)."""
    configs: dict[str, Mapping[str, Any]] = {"daemon": {"engine": {
        "kind": "nats", "servers": cluster.urls, "partitions": partitions, "replicas": 3,
        "instance_id": instance_id, **(engine or {})}}}
    configs.update(modes or {})
    return factory(root=root, configs=configs, start=start)


def _owned(daemon: DaemonProcess) -> set[int]:
    result = daemon.cli("status", "--json")
    assert result.code == 0, result.err
    return set(json.loads(result.out)["engine"]["partitions"]["owned"])


def wait_settled(daemons: Mapping[str, DaemonProcess], partitions: int = 8,
                 timeout: float = 30.0) -> dict[str, set[int]]:
    """Wait until each of ``daemons`` (by instance id) owns exactly the partitions that
    rendezvous hashing gives it among them, and return them. A split seen while a member
    is still joining (seven to one, say) passes; the settled one stays.

    Raises:
        AssertionError: not settled within ``timeout`` seconds.
    """
    from modcoord.supervisor.daemon.nats.partitions import assign
    target = assign(partitions, daemons)
    shares = {name: {p for p, member in target.items() if member == name} for name in daemons}
    wait_for(lambda: all(_owned(d) == shares[name] for name, d in daemons.items()),
             timeout=timeout, message=f"the partitions settle as {shares}")
    return shares


def start_module(script: str, *args: str) -> subprocess.Popen[str]:
    """Start a module process running ``script`` with ``args``."""
    return subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines written so far to ``path`` (none if it does not exist yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


#: A coordinating module: ``argv``: runtime dir, module id, mode, context (JSON). Prints
#: the coordination result as one JSON line.
COORDINATOR = textwrap.dedent("""\
    import json, sys
    from modcoord.supervisor import connect

    runtime, module_id, mode, context = sys.argv[1:5]
    with connect(runtime_dir=runtime, timeout=10, reconnect=False) as client:
        result = client.coordinate(mode, json.loads(context)).get(20)
        print(json.dumps({"cached": result.cached, "results": result.results,
                          "errors": result.errors, "mode": result.mode}), flush=True)
    """)
