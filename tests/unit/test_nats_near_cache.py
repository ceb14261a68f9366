"""The near cache (supervisor/daemon/nats/near_cache.py) over a fake bucket and watch: what
arrives is served, judged by its writer's time against the TTL now; deletes remove; the
bound evicts the oldest; a late older value never replaces a newer one; a failed watch is
counted and started again; and the control plane answers a hit without asking the bucket.
Ages are set by the entries' own ``stored_unix`` (in the past), never by sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from modcoord.supervisor.daemon.nats.near_cache import NearCache

pytestmark = pytest.mark.timeout(20)

encode = msgspec.msgpack.encode
#: Bound on every wait here (each ends in milliseconds when the code is right).
BOUND_S = 5.0


class FakeWatcher:
    """What ``KeyValue.watchall`` returns: entries, then None once the current ones are
    in, then whatever is put later."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.stopped = False

    def __aiter__(self) -> FakeWatcher:
        return self

    async def __anext__(self) -> Any:
        item = await self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def stop(self) -> None:
        self.stopped = True


class FakeBucket:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.watchers: list[FakeWatcher] = []
        self.gets = 0

    async def watchall(self) -> FakeWatcher:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("no server")
        watcher = FakeWatcher()
        self.watchers.append(watcher)
        return watcher

    async def get(self, key: str) -> Any:
        self.gets += 1
        raise AssertionError("a near-cache hit must not ask the bucket")


def _entry(key: str, stored: float, *, op: str | None = None, **value: Any) -> Any:
    data = encode({**value, "stored_unix": stored}) if op is None else b""
    return SimpleNamespace(key=key, value=data, operation=op)


async def _until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not cond():
        assert time.monotonic() < deadline, f"not within {BOUND_S} s: {what}"
        await asyncio.sleep(0.005)


def test_arrivals_are_served_until_the_ttl_now_and_deletes_remove() -> None:
    ttl = [60.0]

    async def scenario() -> NearCache:
        bucket = FakeBucket()
        near = NearCache(bucket, lambda: ttl[0], "HYBRID")  # type: ignore[arg-type]
        near.start()
        await _until(lambda: bool(bucket.watchers), "the watch started")
        watcher, now = bucket.watchers[0], time.time()
        for item in (_entry("a", now - 30, results={"m": 1}), _entry("b", now, results={}),
                     None):
            await watcher.queue.put(item)
        await watcher.queue.put(SimpleNamespace(key="junk", value=b"\xc1", operation=None))
        await _until(lambda: near.following and near.counts["bad_values"] == 1,
                     "the current entries in, the junk skipped")
        assert near.get("a") == {"results": {"m": 1}}  # stored_unix is not part of it
        assert near.get("missing") is None
        ttl[0] = 10.0  # a reload shortened the TTL: "a" (30 s old) is expired now
        assert near.get("a") is None
        assert near.get("b") == {"results": {}}
        await watcher.queue.put(_entry("b", now, op="DEL"))
        await _until(lambda: near.counts["removed"] == 1, "the delete seen")
        assert near.get("b") is None
        await near.stop()
        return near

    near = asyncio.run(scenario())
    stats = near.statistics()
    assert stats["hits"] == 2 and stats["expired"] >= 1 and stats["entries"] == 0
    assert stats["following"] is False  # stopped


def test_the_bound_evicts_the_oldest_and_a_late_older_value_is_not_taken() -> None:
    async def scenario() -> NearCache:
        bucket = FakeBucket()
        near = NearCache(bucket, lambda: 60.0, "HYBRID", max_entries=2)  # type: ignore[arg-type]
        now = time.time()
        near.put("k1", {"v": 1}, now - 3)
        near.put("k2", {"v": 2}, now - 2)
        near.put("k3", {"v": 3}, now - 1)  # over the bound: k1 goes
        assert near.get("k1") is None and near.get("k3") == {"v": 3}
        near.start()
        await _until(lambda: bool(bucket.watchers), "the watch started")
        await bucket.watchers[0].queue.put(_entry("k3", now - 50, v="older"))
        await _until(lambda: near.counts["arrived"] == 1, "the late value arrived")
        assert near.get("k3") == {"v": 3}  # the newer one stays
        await bucket.watchers[0].queue.put(_entry("k3", now, v="newer"))
        await _until(lambda: near.counts["arrived"] == 2, "a newer value arrived")
        assert near.get("k3") == {"v": "newer"}
        await near.stop()
        return near

    near = asyncio.run(scenario())
    assert near.counts["evicted"] == 1 and len(near) == 2


def test_a_failed_watch_is_counted_and_started_again() -> None:
    async def scenario() -> NearCache:
        bucket = FakeBucket(failures=1)
        near = NearCache(bucket, lambda: 60.0, "HYBRID")  # type: ignore[arg-type]
        near.start()
        await _until(lambda: bool(bucket.watchers), "the watch started again")
        first = bucket.watchers[0]
        await first.queue.put(None)
        await _until(lambda: near.following, "following")
        await first.queue.put(ConnectionError("connection lost"))  # the watch breaks
        await _until(lambda: len(bucket.watchers) == 2, "a new watch after the break")
        assert first.stopped and near.counts["watch_errors"] == 2
        await near.stop()
        return near

    near = asyncio.run(scenario())
    assert not near.following


def test_the_control_plane_answers_a_near_cache_hit_without_the_bucket() -> None:
    from modcoord.supervisor.daemon.nats.control import ClusterControl

    local = SimpleNamespace(config=SimpleNamespace(mode=lambda m: SimpleNamespace(
        cache=SimpleNamespace(ttl_ms=60_000.0))))

    async def scenario() -> tuple[Any, Any]:
        control = ClusterControl(local=local,  # type: ignore[arg-type]
                                 switch_owner=lambda mode: None, instance_id="me",
                                 loop=asyncio.get_running_loop(),
                                 control=lambda: None,  # type: ignore[arg-type,return-value]
                                 jetstream=lambda: None,  # type: ignore[arg-type,return-value]
                                 members=lambda: ("me",), replicas=1)
        bucket = FakeBucket()
        control._caches["HYBRID"] = bucket  # type: ignore[assignment]
        near = NearCache(bucket, lambda: 60.0, "HYBRID")  # type: ignore[arg-type]
        control._near["HYBRID"] = near
        near.put("digest", {"mode": "HYBRID", "results": {"m": 1}}, time.time())
        got = await control._cached("HYBRID", "digest")
        return got, control.statistics()

    got, stats = asyncio.run(scenario())
    assert got == {"mode": "HYBRID", "results": {"m": 1}}
    assert stats["near_cache"]["HYBRID"]["hits"] == 1
