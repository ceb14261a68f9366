"""The NATS engine through real daemons: two daemons (separate runtime directories, as two
hosts) on a real 3-node NATS cluster, a real publisher process on one and a real subscriber
process on the other. Updates published on host A reach the subscriber on host B, collapsed
(latest per key wins) and batched exactly as the local engine's settings say; every publish
is answered only once JetStream acknowledged it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonFactory, DaemonProcess, wait_for
from nats_cluster import NatsCluster
from nats_daemons import (
    COORDINATOR,
    PUBLISHER,
    SUBSCRIBER,
    nats_daemon,
    read_lines,
    start_module,
    wait_settled,
)

pytestmark = [pytest.mark.integration, pytest.mark.nats]

#: Debounce and batch settings of the test (HYBRID): a key's updates within 200 ms
#: collapse; batches close after 100 ms.
MODES = {"hybrid": {"debounce": {"delay_ms": 200, "max_wait_ms": 1000},
                    "batch": {"window_ms": 100, "max_size": 50}}}


def _status(d: DaemonProcess) -> dict[str, Any]:
    result = d.cli("status", "--json")
    assert result.code == 0, result.err
    doc: dict[str, Any] = json.loads(result.out)
    return doc


@pytest.mark.timeout(120)
def test_updates_published_on_one_host_reach_a_subscriber_on_another(
        nats_cluster: NatsCluster, daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    a = nats_daemon(daemon_factory, tmp_path / "a", nats_cluster, "host-a", modes=MODES)
    b = nats_daemon(daemon_factory, tmp_path / "b", nats_cluster, "host-b", modes=MODES)
    wait_for(lambda: set(_status(a)["engine"]["instances"]) == {"host-a", "host-b"},
             timeout=20, message="both daemons see each other")
    received = tmp_path / "received.jsonl"
    sub = start_module(SUBSCRIBER, str(b.runtime_dir), "sub", "pub", str(received))
    try:
        assert sub.stdout is not None and sub.stdout.readline().strip() == "READY"
        answers = tmp_path / "answers.jsonl"
        keys, rounds = 20, 25
        pub = start_module(PUBLISHER, str(a.runtime_dir), "pub", str(keys), str(rounds),
                           str(answers))
        out, err = pub.communicate(timeout=60)
        assert pub.returncode == 0 and "DONE" in out, err

        results = read_lines(answers)
        assert len(results) == keys * rounds
        bad = [r for r in results if not isinstance(r["result"], int)]
        assert not bad, bad[:3]  # every publish answered with its stream sequence

        def latest_arrived() -> bool:
            last = {r["key"]: r["payload"] for r in read_lines(received)}
            return last == {f"k{k}": rounds - 1 for k in range(keys)}

        wait_for(latest_arrived, timeout=20, message="every key's latest value at B")
        lines = read_lines(received)
        assert all(line["module"] == "pub" for line in lines)
        assert len(lines) < keys * rounds / 2, "updates of a key were not collapsed"
        calls = {line["call"] for line in lines}
        assert len(calls) < len(lines) / 2, "updates were not batched"
        # Per key, deliveries come in stream order (seq never goes back).
        seqs: dict[str, list[int]] = {}
        for line in lines:
            seqs.setdefault(line["key"], []).append(line["seq"])
        assert all(s == sorted(s) for s in seqs.values())

        engine_a, engine_b = _status(a)["engine"], _status(b)["engine"]
        assert engine_a["kind"] == engine_b["kind"] == "nats"
        assert engine_a["agent"]["acked"] == keys * rounds
        assert engine_a["agent"]["buffered"] == 0
        assert engine_b["deliveries"]["updates"] >= len(lines)

        def all_owned() -> bool:  # a handover in flight leaves one unowned for a moment
            owned = set(_status(a)["engine"]["partitions"]["owned"])
            return owned | set(_status(b)["engine"]["partitions"]["owned"]) == set(range(8))

        wait_for(all_owned, timeout=15, message="every partition owned by a or b")
    finally:
        sub.kill()
        sub.wait(10)


def test_local_engine_status_says_local(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory()
    assert _status(d)["engine"] == {"kind": "local"}


def test_an_unreachable_nats_refuses_to_start_naming_the_servers(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    d = daemon_factory(root=tmp_path / "x", start=False, configs={"daemon": {"engine": {
        "kind": "nats", "servers": ["nats://127.0.0.1:1"], "replicas": 1, "start_timeout_s": 2}}})
    with pytest.raises(AssertionError):  # the harness: the daemon exited, not ready
        d.start(timeout=20)
    assert "could not join the cluster at nats://127.0.0.1:1" in d.stderr_text()
    assert "engine.start_timeout_s" in d.stderr_text()


def _coordinate(d: DaemonProcess, mode: str, context: dict[str, Any]) -> dict[str, Any]:
    proc = start_module(COORDINATOR, str(d.runtime_dir), "asker", mode, json.dumps(context))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    answer: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return answer


@pytest.mark.timeout(120)
def test_set_mode_switches_every_host_and_coordinate_is_cached_cluster_wide(
        nats_cluster: NatsCluster, daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    a = nats_daemon(daemon_factory, tmp_path / "a", nats_cluster, "mode-a")
    b = nats_daemon(daemon_factory, tmp_path / "b", nats_cluster, "mode-b")
    wait_for(lambda: {"mode-a", "mode-b"} <= set(_status(a)["engine"]["instances"]),
             timeout=20, message="both daemons see each other")
    mods = [start_module(SUBSCRIBER, str(d.runtime_dir), name, "*", str(tmp_path / name))
            for d, name in ((a, "on-a"), (b, "on-b"))]
    try:
        for m in mods:
            assert m.stdout is not None and m.stdout.readline().strip() == "READY"
        switched = a.cli("mode", "FULLY_AUTO", "--json")
        assert switched.code == 0, switched.err
        answer = json.loads(switched.out)
        assert answer["mode"] == "FULLY_AUTO"
        # Both hosts' modules were told, each on its own host.
        assert answer["results"]["on-a"]["host"] == str(a.runtime_dir)
        assert answer["results"]["on-b"]["host"] == str(b.runtime_dir)
        assert answer["results"]["on-b"]["mode"] == "FULLY_AUTO"
        assert _status(b)["mode"] == "FULLY_AUTO"

        context = {"case": str(tmp_path)}  # unique per run: the cache starts empty
        first = _coordinate(a, "HYBRID", context)
        assert first["cached"] is False and not first["errors"]
        assert set(first["results"]) >= {"on-a", "on-b"}  # computed on every host
        # the other host: the cluster's cache, from b's near cache once a's store arrived
        # on b's watch (else from the bucket, which then fills the near cache)
        second = _coordinate(b, "HYBRID", context)
        assert second["cached"] is True
        assert second["results"] == first["results"]
        coordination = _status(a)["engine"]["coordination"]
        assert coordination["computed"] >= 1
        assert coordination["near_cache"]["HYBRID"]["entries"] >= 1  # its own store
        assert _status(b)["engine"]["coordination"]["hits"] >= 1
        third = _coordinate(b, "HYBRID", context)  # now certainly in b's near cache
        assert third["cached"] is True and third["results"] == first["results"]
        near_b = _status(b)["engine"]["coordination"]["near_cache"]["HYBRID"]
        assert near_b["hits"] >= 1 and near_b["following"] is True
    finally:
        a.cli("mode", "HYBRID")  # the cluster's mode outlives the test: put it back
        for m in mods:
            m.kill()
            m.wait(10)


@pytest.mark.timeout(120)
def test_a_graceful_stop_delivers_what_the_daemon_owns_before_it_leaves(
        nats_cluster: NatsCluster, daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    from modcoord.supervisor.daemon.nats.partitions import partition_of

    # A debounce far longer than the test: only the stop's flush can deliver in time.
    slow = {"hybrid": {"debounce": {"delay_ms": 60_000, "max_wait_ms": 60_000}}}
    leaving = nats_daemon(daemon_factory, tmp_path / "a", nats_cluster, "stop-a", modes=slow)
    staying = nats_daemon(daemon_factory, tmp_path / "b", nats_cluster, "stop-b", modes=slow)

    owned = wait_settled({"stop-a": leaving, "stop-b": staying})["stop-a"]
    received = tmp_path / "received.jsonl"
    sub = start_module(SUBSCRIBER, str(staying.runtime_dir), "sub", "pub", str(received))
    answers = tmp_path / "answers.jsonl"
    try:
        assert sub.stdout is not None and sub.stdout.readline().strip() == "READY"
        pub = start_module(PUBLISHER, str(staying.runtime_dir), "pub", "100", "1",
                           str(answers))
        _out, err = pub.communicate(timeout=60)
        assert pub.returncode == 0, err
        theirs = {f"k{k}" for k in range(100) if partition_of("pub", f"k{k}", 8) in owned}
        assert theirs
        wait_for(lambda: _status(leaving)["engine"]["owner"]["fetched_updates"]
                 >= len(theirs), timeout=10, message="the leaving daemon holds its share")
        assert read_lines(received) == []
        leaving.stop()  # SIGTERM: a graceful stop
        wait_for(lambda: theirs <= {line["key"] for line in read_lines(received)},
                 timeout=15, message="the leaving daemon's share delivered at its stop")
    finally:
        sub.kill()
        sub.wait(10)
