"""The NATS engine's owner and control plane through real daemons on a real 3-node
cluster, with real module processes: updates a batch processor removes are acknowledged
(the stream holds nothing for them), the owner's last-seen table empties once the
partitions' messages are acknowledged, and a reload that shortens a mode's
``cache.ttl_ms`` shortens the cluster's cache too."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonFactory, DaemonProcess, wait_for
from nats_cluster import NatsCluster
from nats_daemons import COORDINATOR, PUBLISHER, SUBSCRIBER, nats_daemon, read_lines, start_module

pytestmark = [pytest.mark.integration, pytest.mark.nats]

pytest.importorskip("modcoord_example_plugins")

FAST = {"debounce": {"delay_ms": 20, "critical_delay_ms": 10, "max_wait_ms": 200},
        "batch": {"window_ms": 20, "max_size": 50}}


def _engine(d: DaemonProcess) -> dict[str, Any]:
    result = d.cli("status", "--json")
    assert result.code == 0, result.err
    engine: dict[str, Any] = json.loads(result.out)["engine"]
    return engine


def _ack_pending(engine: dict[str, Any]) -> int:
    lag = engine["lag"]
    assert "error" not in lag, lag
    return sum(int(p["ack_pending"]) + int(p["pending"]) for p in lag.values())


def _publish(d: DaemonProcess, tmp_path: Path, keys: int, rounds: int) -> list[dict[str, Any]]:
    answers = tmp_path / "answers.jsonl"
    pub = start_module(PUBLISHER, str(d.runtime_dir), "pub", str(keys), str(rounds),
                       str(answers))
    out, err = pub.communicate(timeout=60)
    assert pub.returncode == 0 and "DONE" in out, err
    results = read_lines(answers)
    assert all(isinstance(r["result"], int) for r in results), results[:3]
    return results


@pytest.mark.timeout(120)
def test_updates_a_batch_processor_removes_are_acknowledged_not_redelivered_forever(
        nats_cluster: NatsCluster, daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    modes = {"hybrid": {**FAST, "plugins": {
        "batch_processors": ["priority", "example_drop_odd"]}}}
    d = nats_daemon(daemon_factory, tmp_path / "a", nats_cluster, "drop-a", modes=modes)
    wait_for(lambda: len(_engine(d)["partitions"]["owned"]) == 8, timeout=20,
             message="the one daemon owns every partition")
    received = tmp_path / "received.jsonl"
    sub = start_module(SUBSCRIBER, str(d.runtime_dir), "sub", "pub", str(received))
    try:
        assert sub.stdout is not None and sub.stdout.readline().strip() == "READY"
        rounds = 40  # one key per round, u<r>, payload r: the odd ones are removed
        _publish(d, tmp_path, 0, rounds)
        evens = {f"u{r}" for r in range(0, rounds, 2)}
        wait_for(lambda: {line["key"] for line in read_lines(received)} >= evens,
                 timeout=20, message="every even update delivered")

        def settled() -> bool:
            engine = _engine(d)
            return (engine["owner"]["held_messages"] == 0 and _ack_pending(engine) == 0
                    and engine["owner"]["processor_removed"] == rounds // 2)

        wait_for(settled, timeout=20,
                 message="the removed updates acknowledged, nothing left in the stream")
        assert {line["key"] for line in read_lines(received)} == evens
        records = [json.loads(line) for line in d.log_file.read_text().splitlines()
                   if "batch processor removed" in line]
        assert records, "the removal is logged"
    finally:
        sub.kill()
        sub.wait(10)


@pytest.mark.timeout(120)
def test_the_owners_last_seen_table_empties_once_its_messages_are_acknowledged(
        nats_cluster: NatsCluster, daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    d = nats_daemon(daemon_factory, tmp_path / "a", nats_cluster, "seen-a",
                    modes={"hybrid": FAST})
    wait_for(lambda: len(_engine(d)["partitions"]["owned"]) == 8, timeout=20,
             message="the one daemon owns every partition")
    received = tmp_path / "received.jsonl"
    sub = start_module(SUBSCRIBER, str(d.runtime_dir), "sub", "pub", str(received))
    try:
        assert sub.stdout is not None and sub.stdout.readline().strip() == "READY"
        keys = 150
        _publish(d, tmp_path, keys, 1)
        wait_for(lambda: len({line["key"] for line in read_lines(received)}) == keys,
                 timeout=20, message="every key delivered")
        # Every key was remembered once and is forgotten once its message is below the
        # partition's ack floor (read every LAST_SEEN_TRIM_S).
        wait_for(lambda: _engine(d)["owner"]["seen_keys"] == 0, timeout=30,
                 message="the last-seen table trimmed to nothing")
        owner = _engine(d)["owner"]
        assert owner["seen_forgotten"] == keys and owner["seen_evicted"] == 0
        assert owner["seen_trim_errors"] == 0
    finally:
        sub.kill()
        sub.wait(10)


def _coordinate(d: DaemonProcess, mode: str, context: dict[str, Any]) -> dict[str, Any]:
    proc = start_module(COORDINATOR, str(d.runtime_dir), "asker", mode, json.dumps(context))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    answer: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return answer


def _bucket_max_age(cluster: NatsCluster, mode: str) -> float:
    import nats

    async def read() -> float:
        nc = await nats.connect(cluster.urls)
        try:
            info = await nc.jetstream().stream_info(f"KV_MODCOORD_CACHE_{mode}")
            return float(info.config.max_age or 0.0)
        finally:
            await nc.close()

    return asyncio.run(read())


@pytest.mark.timeout(120)
def test_a_reload_that_shortens_the_cache_ttl_shortens_the_clusters_cache(
        nats_cluster: NatsCluster, daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    d = nats_daemon(daemon_factory, tmp_path / "a", nats_cluster, "ttl-a",
                    modes={"fully_auto": {"cache": {"ttl_ms": 600_000}}})
    assert _bucket_max_age(nats_cluster, "FULLY_AUTO") == 600.0
    context = {"case": str(tmp_path)}
    assert _coordinate(d, "FULLY_AUTO", context)["cached"] is False
    assert _coordinate(d, "FULLY_AUTO", context)["cached"] is True
    updates = _engine(d)["coordination"]["ttl_updates"]
    d.edit_config("fully_auto", {"cache": {"ttl_ms": 1000}})
    reloaded = d.cli("reload")
    assert reloaded.code == 0, reloaded.err
    time.sleep(1.5)  # quiet-period: the new TTL (1 s) must pass for the entry to be stale
    assert _coordinate(d, "FULLY_AUTO", context)["cached"] is False
    assert _bucket_max_age(nats_cluster, "FULLY_AUTO") == 1.0
    assert _coordinate(d, "FULLY_AUTO", context)["cached"] is True  # still a cache
    assert _engine(d)["coordination"]["ttl_updates"] == updates + 1
