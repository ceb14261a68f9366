"""Payloads in wire form through the real daemon and real module processes.

A publisher process publishes values of every msgpack type (nested, bytes, 64-bit edges,
ext types); a subscriber process receives each as the very value published, whether the
batcher delivers it in a batch or alone, and a batch processor plugin (which sees values,
not encodings) does not change that. Cached coordination results come back equal on every
hit. The unit side: ``unit/test_wire_payload.py``.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonProcess, module_script
from payload_values import VALUES, same

PUBLISHER = module_script("wp-pub", """
    import pickle
    values = pickle.loads(open(sys.argv[2], "rb").read())
    futures = [client.publish("wp-pub", f"k{i}", v, "high" if i % 3 else "medium")
               for i, v in enumerate(values)]
    for f in futures:
        f.get(10)
    print("published", len(futures), flush=True)
""")

SUBSCRIBER = """\
import pickle, sys, threading
from modcoord.supervisor import connect

got = {}
lazy = []  # batches whose updates arrived undecoded (a large frame: see client/_rows.py)
done = threading.Event()
expected = int(sys.argv[3])

class Module:
    module_id = "wp-sub"
    name = "wp-sub"
    supported_modes = ["MANUAL", "HYBRID", "FULLY_AUTO"]
    subscribe = ["wp-pub"]

    def on_mode_change(self, mode, strategy, context):
        return {"tree": [{"i": i, "s": "x" * 40, "b": b"\\x00" * 3} for i in range(20)],
                "mode": mode}

    def on_batch(self, batch):
        updates = batch.updates
        if type(updates).__name__ == "LazyUpdates" and not updates.decoded:
            lazy.append(len(updates))
        for u in updates:
            got[u.key] = (u.payload, u.priority, u.module_id)
        if len(got) >= expected:
            done.set()

with connect(runtime_dir=sys.argv[1], timeout=10, reconnect=False) as client:
    client.register(Module()).get(10)
    print("ready", flush=True)
    if not done.wait(60):
        print("timeout", len(got), flush=True)
        sys.exit(1)
    open(sys.argv[2], "wb").write(pickle.dumps((got, lazy)))
    print("received", len(got), flush=True)
"""


def _run(d: DaemonProcess, tmp_path: Path, values: list[Any],
         meanwhile: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Start the subscriber process, run ``meanwhile`` (it is registered then), publish
    ``values`` from the publisher process; what the subscriber received."""
    return _run_counting_lazy(d, tmp_path, values, meanwhile)[0]


def _run_counting_lazy(d: DaemonProcess, tmp_path: Path, values: list[Any],
                       meanwhile: Callable[[], None] = lambda: None
                       ) -> tuple[dict[str, Any], list[int]]:
    """:func:`_run`, and the sizes of the batches whose updates arrived undecoded."""
    src, out = tmp_path / "values.pickle", tmp_path / "got.pickle"
    src.write_bytes(pickle.dumps(values))
    sub = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, str(d.runtime_dir), str(out),
                            str(len(values))], stdout=subprocess.PIPE, text=True)
    try:
        assert sub.stdout is not None
        assert sub.stdout.readline().strip() == "ready"
        meanwhile()
        pub = subprocess.run([sys.executable, "-c", PUBLISHER, str(d.runtime_dir), str(src)],
                             capture_output=True, text=True, timeout=60)
        assert pub.returncode == 0, pub.stderr
        sub.wait(timeout=90)
        assert sub.returncode == 0, sub.stdout.read()
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait(10)
    got, lazy = pickle.loads(out.read_bytes())
    return got, lazy


def _check(got: dict[str, Any], values: list[Any]) -> None:
    assert set(got) == {f"k{i}" for i in range(len(values))}
    for i, value in enumerate(values):
        payload, priority, module_id = got[f"k{i}"]
        assert module_id == "wp-pub"
        assert priority == ("high" if i % 3 else "medium")
        assert same(payload, value), (i, f"{payload!r:.200}", f"{value!r:.200}")


@pytest.mark.integration
@pytest.mark.parametrize("batched", [True, False])
def test_published_values_reach_a_subscriber_process_as_published(
        daemon_factory: Callable[..., DaemonProcess], tmp_path: Path, batched: bool) -> None:
    d = daemon_factory(configs={"hybrid": {"batch": {"enabled": batched}}})
    values = VALUES
    got, lazy = _run_counting_lazy(d, tmp_path, values)
    _check(got, values)
    if batched:  # large batches reach the module in wire form, decoded on first look
        assert lazy and sum(lazy) > 1, lazy
    with d.connect(timeout=10) as client:
        status = client.status().get(10)
    assert status["server"]["undeliverable_updates"] == 0
    assert status["batcher"]["updates"] >= len(values)


@pytest.mark.integration
def test_cached_results_come_back_equal_on_every_hit(
        daemon_factory: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    d = daemon_factory()
    answers: list[Any] = []

    def coordinate() -> None:
        with d.connect(timeout=10) as client:
            for _ in range(3):
                answers.append(client.coordinate("HYBRID", {"ctx": [1, "2"]}).get(10))

    values = VALUES[:5]
    _check(_run(d, tmp_path, values, coordinate), values)
    expected = {"tree": [{"i": i, "s": "x" * 40, "b": b"\x00" * 3} for i in range(20)],
                "mode": "HYBRID"}
    assert [a.cached for a in answers] == [False, True, True]
    assert all(a.results["wp-sub"] == expected for a in answers), answers[1].results


@pytest.mark.integration
def test_values_pass_through_a_batch_processor_plugin_unchanged(
        daemon_factory: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    pytest.importorskip("modcoord_example_plugins")
    d = daemon_factory(configs={"hybrid": {
        "plugins": {"batch_processors": ["priority", "example_reverse"]}}})
    values = VALUES
    _check(_run(d, tmp_path, values), values)
    with d.connect(timeout=10) as client:
        plugins = client.status().get(10)["plugins"]
    guard = plugins["guards"]["modcoord.batch_processors:example_reverse"]
    assert guard["calls"] >= 1 and plugins["failures"] == 0, plugins
