"""The NATS test cluster itself (tests/nats_cluster.py): it comes up ready, a replicated
(R3) JetStream stream acknowledges publishes, and after its stream leader is SIGKILLed the
cluster elects a new leader and keeps serving; nothing acknowledged is lost. The NATS
engine's tests stand on these properties."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from nats_cluster import NatsCluster, retry_async
from nats_proxy import ThreadedProxy

pytestmark = [pytest.mark.integration, pytest.mark.nats]

#: Bound on serving again after the stream leader dies: NATS's Raft election timeout is
#: 4-9 s (randomised), measured stalls 4-7.5 s; twice that plus slack on a busy machine.
ELECTION_BOUND_S = 25.0


async def _quiet(e: Exception) -> None:
    """error_cb: nats-py prints a traceback per refused connection otherwise."""


async def _kill_leader_and_publish(cluster: NatsCluster) -> tuple[int, int, float]:
    import nats
    from nats.js.api import StreamConfig

    nc = await nats.connect(cluster.urls, error_cb=_quiet, max_reconnect_attempts=-1,
                            reconnect_time_wait=0.1)
    try:
        js = nc.jetstream(timeout=2.0)
        await retry_async(lambda: js.add_stream(StreamConfig(
            name="SMOKE", subjects=["smoke.>"], num_replicas=3)))
        acked = [await js.publish(f"smoke.{i}", f"m{i}".encode(), headers={"Nats-Msg-Id": f"a{i}"})
                 for i in range(20)]
        assert [a.seq for a in acked] == list(range(1, 21))
        before = (await js.stream_info("SMOKE")).cluster
        assert before is not None and before.leader is not None
        leader = cluster.index(before.leader)
        cluster.kill(leader)
        t0 = time.monotonic()

        async def publish_after() -> int:
            ack = await js.publish("smoke.after", b"after", timeout=1.0,
                                   headers={"Nats-Msg-Id": "after"})
            return ack.seq

        seq = await retry_async(publish_after, timeout_s=ELECTION_BOUND_S, step_s=0.05)
        took = time.monotonic() - t0
        assert seq == 21  # the next sequence: nothing acknowledged before the kill was lost
        info = await retry_async(lambda: js.stream_info("SMOKE"), timeout_s=ELECTION_BOUND_S)
        assert info.cluster is not None and info.cluster.leader != cluster.name(leader)
        return leader, info.state.messages, took
    finally:
        await nc.close()


def test_cluster_is_ready_and_every_node_reports_jetstream(nats_cluster: NatsCluster) -> None:
    assert nats_cluster.running() == [0, 1, 2]
    assert nats_cluster.healthy()
    for i in range(3):
        jsz = nats_cluster.jsz(i)
        assert jsz["meta_cluster"]["cluster_size"] == 3, json.dumps(jsz)[:300]
    assert nats_cluster.meta_leader() in (0, 1, 2)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_r3_stream_keeps_serving_after_its_leader_is_killed(nats_cluster: NatsCluster) -> None:
    try:
        leader, stored, took = asyncio.run(_kill_leader_and_publish(nats_cluster))
        assert leader not in nats_cluster.running()
        assert stored == 21  # the 20 acknowledged before the kill and the one after: none lost
        assert took < ELECTION_BOUND_S
    finally:  # the module's cluster is shared: bring the killed node back
        for i in range(nats_cluster.n):
            if i not in nats_cluster.running():
                nats_cluster.restart(i)
    assert nats_cluster.running() == [0, 1, 2]


async def _through_proxy(proxy: ThreadedProxy) -> tuple[bool, bool, bool]:
    import nats

    async def info(nc: Any) -> bool:
        try:
            msg = await nc.request("$JS.API.INFO", b"", timeout=0.5)
        except Exception:
            return False
        return "error" not in json.loads(msg.data)

    nc = await nats.connect(proxy.urls, error_cb=_quiet, max_reconnect_attempts=-1,
                            reconnect_time_wait=0.1, ping_interval=1, max_outstanding_pings=2)
    try:
        before = await info(nc)
        await asyncio.to_thread(proxy.pause)
        paused = await info(nc)
        await asyncio.to_thread(proxy.resume)
        deadline = time.monotonic() + 10
        healed = False
        while not healed and time.monotonic() < deadline:
            healed = await info(nc)
        return before, paused, healed
    finally:
        await nc.close()


def test_the_proxy_black_holes_and_heals_a_client_of_the_cluster(
        nats_cluster: NatsCluster) -> None:
    with ThreadedProxy(nats_cluster.client_ports) as proxy:
        before, paused, healed = asyncio.run(_through_proxy(proxy))
    assert (before, paused, healed) == (True, False, True)
