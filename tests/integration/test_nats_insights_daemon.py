"""``insights`` and ``/metrics`` show the cluster, through real daemons on a real 3-node
NATS cluster: two daemons (separate runtime directories, as two hosts) both see both
instances and split the partitions between them, each reporting the lag of its own; a
daemon cut off from NATS says so (``nats_disconnected``), and its full buffer too
(``engine_buffer_near_full``), in ``modcoord insights --json`` and in a scrape."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonFactory, DaemonProcess, wait_for
from metrics_check import check_conventions, parse_text, value_of
from nats_cluster import NatsCluster
from nats_daemons import PUBLISHER, start_module

pytestmark = [pytest.mark.integration, pytest.mark.nats]

PARTITIONS = 8
CLUSTER_RULES = {"nats_disconnected", "engine_buffer_near_full", "partitions_unowned",
                 "partition_lag_growing"}


def _daemon(factory: DaemonFactory, root: Path, servers: list[str], instance_id: str,
            **engine: Any) -> DaemonProcess:
    return factory(root=root, configs={"daemon": {
        "metrics": {"enabled": True, "port": 0},
        "engine": {"kind": "nats", "servers": servers, "partitions": PARTITIONS,
                   "replicas": 3, "instance_id": instance_id, **engine}}})


def _insights(d: DaemonProcess) -> dict[str, Any]:
    result = d.cli("insights", "--json")
    assert result.code == 0, result.err
    doc: dict[str, Any] = json.loads(result.out)
    return doc


def _ids(doc: dict[str, Any]) -> set[str]:
    return {i["id"] for i in doc["insights"]}


def _scrape(d: DaemonProcess) -> dict[str, Any]:
    port = int(json.loads((d.runtime_dir / "daemon.json").read_text())["metrics_port"])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        families: dict[str, Any] = parse_text(resp.read().decode())
    check_conventions(families)
    return families


def _owned(families: dict[str, Any]) -> set[int]:
    return {int(s.labels["partition"])
            for s in families["modcoord_engine_partition_pending"].samples}


@pytest.mark.timeout(120)
def test_insights_and_metrics_show_the_cluster(
        nats_cluster: NatsCluster, daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    a = _daemon(daemon_factory, tmp_path / "a", nats_cluster.urls, "ins-a")
    b = _daemon(daemon_factory, tmp_path / "b", nats_cluster.urls, "ins-b")

    def split() -> tuple[dict[str, Any], dict[str, Any]] | None:
        ea, eb = _insights(a)["engine"], _insights(b)["engine"]
        owned_a, owned_b = set(ea["partitions"]["owned"]), set(eb["partitions"]["owned"])
        both = {"ins-a", "ins-b"} <= set(ea["instances"]) and \
            {"ins-a", "ins-b"} <= set(eb["instances"])
        if both and owned_a and owned_b and not owned_a & owned_b \
                and owned_a | owned_b == set(range(PARTITIONS)):
            return ea, eb
        return None

    ea, eb = wait_for(split, timeout=40, message="the partitions split between two daemons")
    for engine in (ea, eb):
        assert engine["kind"] == "nats" and engine["connected"] is True
        assert engine["partitions"]["total"] == PARTITIONS
        assert engine["partitions"]["unowned"] == []
        assert set(engine["lag"]) == {str(p) for p in engine["partitions"]["owned"]}
    doc = _insights(a)
    assert not _ids(doc) & CLUSTER_RULES, doc  # a healthy cluster: no cluster insight
    text = a.cli("insights")
    assert text.code == 0, text.err
    assert text.out.startswith("engine: nats, instance ins-a, connected, 2 instances, "
                               "partitions owned "), text.out
    assert doc["status"] in ("ok", "not_enough_data", "issues")

    def scraped_split() -> tuple[dict[str, Any], dict[str, Any]] | None:
        fa, fb = _scrape(a), _scrape(b)
        owned_a, owned_b = _owned(fa), _owned(fb)
        ok = all(value_of(f, "modcoord_engine_instances") == 2 for f in (fa, fb)) and \
            owned_a | owned_b == set(range(PARTITIONS)) and not owned_a & owned_b
        return (fa, fb) if ok else None

    fa, fb = wait_for(scraped_split, timeout=30, message="the scrapes show the split")
    for f in (fa, fb):
        assert value_of(f, "modcoord_engine_partitions") == PARTITIONS
        assert value_of(f, "modcoord_engine_partitions_owned") == len(_owned(f))
        assert value_of(f, "modcoord_engine_partitions_unowned") == 0
        assert value_of(f, "modcoord_engine_connected", connection="data") == 1
        assert value_of(f, "modcoord_engine_connected", connection="control") == 1
        assert value_of(f, "modcoord_engine_agent_refused") == 0


@pytest.mark.timeout(180)
def test_a_daemon_cut_off_from_nats_says_so_in_insights_and_metrics(
        nats_cluster_factory: Any, daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    from nats_proxy import ThreadedProxy

    cluster: NatsCluster = nats_cluster_factory()
    ports = [int(u.rsplit(":", 1)[1]) for u in cluster.urls]
    with ThreadedProxy(ports) as proxy:
        d = _daemon(daemon_factory, tmp_path / "cut", list(proxy.urls), "ins-cut",
                    max_buffered=20)
        wait_for(lambda: _insights(d)["engine"]["partitions"]["owned"], timeout=30,
                 message="the daemon owns partitions")
        assert not _ids(_insights(d)) & CLUSTER_RULES
        proxy.cut()
        doc = wait_for(lambda: (x := _insights(d)) and "nats_disconnected" in _ids(x) and x,
                       timeout=30, message="insights say the daemon is cut off")
        found = next(i for i in doc["insights"] if i["id"] == "nats_disconnected")
        assert found["severity"] == "critical" and "engine.servers" in found["recommendation"]
        assert doc["engine"]["connected"] is False
        answers = tmp_path / "answers.jsonl"
        pub = start_module(PUBLISHER, str(d.runtime_dir), "pub", "0", "30", str(answers))
        try:
            doc = wait_for(
                lambda: (x := _insights(d)) and "engine_buffer_near_full" in _ids(x) and x,
                timeout=30, message="insights say the buffer is full")
            assert doc["engine"]["agent"]["buffered"] == 20
            families = wait_for(
                lambda: (f := _scrape(d)) and
                value_of(f, "modcoord_engine_agent_refused") == 10 and f,
                timeout=30, message="the scrape counts the refused publishes")
            assert value_of(families, "modcoord_engine_connected", connection="data") == 0
            assert value_of(families, "modcoord_engine_agent_buffered") == 20
            assert value_of(families, "modcoord_engine_agent_max_buffered") == 20
            proxy.resume()
            _out, err = pub.communicate(timeout=90)
            assert pub.returncode == 0, err
            wait_for(lambda: not _ids(_insights(d)) & {"nats_disconnected"}, timeout=30,
                     message="the insight clears on reconnect")
            assert value_of(_scrape(d), "modcoord_engine_connected", connection="data") == 1
        finally:
            pub.kill()
            pub.wait(10)
            # The daemon's connections end while the proxy still runs: no proxy task is
            # left pending when its loop closes.
            d.stop()
            wait_for(lambda: not any(p.conns for p in proxy.proxies), timeout=20,
                     message="the proxied connections closed")
