"""The NATS control plane without a server: a mode epoch is applied once on a host, whether
the broadcast or the periodic read of the mode key comes first; ``set_mode`` takes the next
epoch by compare-and-set; the coordinate cache follows a reloaded ``cache.ttl_ms``."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from modcoord.actors.errors import CallTimeoutError
from modcoord.supervisor.daemon.nats.control import MODE_CAS_ATTEMPTS, ClusterControl

encode, decode = msgspec.msgpack.encode, msgspec.msgpack.decode


@dataclass
class FakeKV:
    """A KV bucket with revisions and compare-and-set."""

    data: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    revision: int = 0
    conflicts: int = 0  # the next this many updates fail as if someone wrote first

    async def get(self, key: str) -> Any:
        if key not in self.data:
            raise KeyNotFoundError
        value, rev = self.data[key]
        return SimpleNamespace(value=value, revision=rev)

    async def put(self, key: str, value: bytes) -> int:
        self.revision += 1
        self.data[key] = (value, self.revision)
        return self.revision

    async def create(self, key: str, value: bytes) -> int:
        if key in self.data:
            raise KeyWrongLastSequenceError
        return await self.put(key, value)

    async def update(self, key: str, value: bytes, last: int) -> int:
        if self.conflicts:
            self.conflicts -= 1
            await self.put(key, self.data[key][0])  # someone else's write
            raise KeyWrongLastSequenceError
        if self.data.get(key, (b"", 0))[1] != last:
            raise KeyWrongLastSequenceError
        return await self.put(key, value)


class FakeLocal:
    """This host's actor system: counts the mode switches (each one tells its modules)."""

    def __init__(self, ttl_ms: float = 60_000.0, switch_s: float = 0.2) -> None:
        self.mode = "HYBRID"
        self.callback_timeout_s = 1.0
        self.switches: list[str] = []
        self.ttl_ms = ttl_ms
        self._switch_s = switch_s
        self._lock = threading.Lock()
        self.config = SimpleNamespace(mode=lambda m: SimpleNamespace(
            cache=SimpleNamespace(ttl_ms=self.ttl_ms),
            memory=SimpleNamespace(strategy="balanced")))

    def set_mode(self, mode: str) -> Any:
        with self._lock:
            self.switches.append(mode)
        time.sleep(self._switch_s)  # quiet-period: a switch that takes a while (the race)
        previous, self.mode = self.mode, mode
        return SimpleNamespace(mode=mode, previous=previous, strategy="balanced",
                               results={"mod": len(self.switches)}, errors={})


@dataclass
class FakeMsg:
    data: bytes
    answers: list[dict[str, Any]] = field(default_factory=list)

    async def respond(self, data: bytes) -> None:
        self.answers.append(decode(data))


def _control(local: FakeLocal, loop: asyncio.AbstractEventLoop,
             js: Any = None) -> tuple[ClusterControl, FakeKV]:
    control = ClusterControl(local=local,  # type: ignore[arg-type]
                             switch_owner=lambda mode: None, instance_id="me", loop=loop,
                             control=lambda: None,  # type: ignore[arg-type,return-value]
                             jetstream=lambda: js, members=lambda: ("me",), replicas=1)
    state = FakeKV()
    control._state = state  # type: ignore[assignment]
    return control, state


def _broadcast(mode: str, epoch: int) -> FakeMsg:
    return FakeMsg(encode({"mode": mode, "epoch": epoch}))


@pytest.mark.timeout(20)
@pytest.mark.parametrize("check_first", [True, False])
def test_a_mode_epoch_is_applied_once_when_the_check_races_the_broadcast(
        check_first: bool) -> None:
    local = FakeLocal()

    async def scenario() -> FakeMsg:
        control, state = _control(local, asyncio.get_running_loop())
        await state.put("mode", encode({"mode": "FULLY_AUTO", "epoch": 1}))
        msg = _broadcast("FULLY_AUTO", 1)
        on_mode: Any = control._on_mode  # takes the fake message
        first = control._apply_cluster_mode() if check_first else on_mode(msg)
        second = on_mode(msg) if check_first else control._apply_cluster_mode()
        task = asyncio.create_task(first)
        await asyncio.sleep(0.05)  # quiet-period: the first is inside its (slow) switch
        await asyncio.gather(task, second)
        return msg

    msg = asyncio.run(scenario())
    assert local.switches == ["FULLY_AUTO"]  # the modules were told once
    # The broadcast's answer carries that one switch's results, whichever ran it.
    assert msg.answers == [{"instance": "me", "previous": "HYBRID", "strategy": "balanced",
                            "results": {"mod": 1}, "errors": {}}]


@pytest.mark.timeout(20)
def test_each_new_epoch_is_applied_and_an_older_one_is_not() -> None:
    local = FakeLocal(switch_s=0.0)

    async def scenario() -> list[FakeMsg]:
        control, _ = _control(local, asyncio.get_running_loop())
        msgs = [_broadcast("FULLY_AUTO", 1), _broadcast("FULLY_AUTO", 2),
                _broadcast("MANUAL", 1)]
        on_mode: Any = control._on_mode  # takes the fake messages
        for msg in msgs:
            await on_mode(msg)
        await control._apply_cluster_mode()  # no key yet: nothing to do
        return msgs

    msgs = asyncio.run(scenario())
    # Epoch 2 switches again (a second set_mode of the same mode tells modules again);
    # the late epoch-1 broadcast for MANUAL changes nothing.
    assert local.switches == ["FULLY_AUTO", "FULLY_AUTO"]
    assert local.mode == "FULLY_AUTO"
    assert msgs[2].answers[0]["results"] == {}


@pytest.mark.timeout(20)
def test_set_mode_records_the_next_epoch_by_compare_and_set() -> None:
    local = FakeLocal(switch_s=0.0)

    async def scenario() -> list[int]:
        control, state = _control(local, asyncio.get_running_loop())
        epochs = [await control._record_mode("FULLY_AUTO")]  # creates the key
        state.conflicts = 3  # three other switches come first
        epochs.append(await control._record_mode("MANUAL"))
        stored = decode(state.data["mode"][0])
        assert stored["mode"] == "MANUAL" and stored["epoch"] == epochs[-1]
        state.conflicts = MODE_CAS_ATTEMPTS
        with pytest.raises(CallTimeoutError, match="MODE_CAS_ATTEMPTS"):
            await control._record_mode("HYBRID")
        return epochs

    assert asyncio.run(scenario()) == [1, 2]


@dataclass
class FakeJetStream:
    """``stream_info`` / ``update_stream`` of the cache buckets' streams."""

    configs: dict[str, Any] = field(default_factory=dict)
    updates: list[Any] = field(default_factory=list)
    fail: bool = False

    async def stream_info(self, name: str) -> Any:
        return SimpleNamespace(config=SimpleNamespace(**vars(self.configs[name])))

    async def update_stream(self, config: Any) -> None:
        if self.fail:
            raise TimeoutError("no answer")
        self.updates.append((config.max_age, config.duplicate_window))


@pytest.mark.timeout(20)
def test_a_reloaded_ttl_sets_the_cache_buckets_age_and_older_entries_are_misses() -> None:
    local = FakeLocal(ttl_ms=600_000.0, switch_s=0.0)
    js = FakeJetStream({"KV_MODCOORD_CACHE_HYBRID": SimpleNamespace(
        max_age=600.0, duplicate_window=120.0)})

    async def scenario() -> ClusterControl:
        control, _ = _control(local, asyncio.get_running_loop(), js)
        cache = FakeKV()
        control._caches["HYBRID"] = cache  # type: ignore[assignment]
        control._ttl_s["HYBRID"] = 600.0
        await cache.put("old", encode({"results": {}, "stored_unix": time.time() - 5.0}))
        await cache.put("new", encode({"results": {}, "stored_unix": time.time()}))
        assert await control._cached("HYBRID", "old") == {"results": {}}  # TTL 600 s
        local.ttl_ms = 1000.0  # the reload
        js.fail = True
        await control._follow_ttl("HYBRID")  # the update fails: counted, retried later
        assert control.counts["cache_errors"] == 1 and control._ttl_s["HYBRID"] == 600.0
        # Even before the bucket is updated, an entry older than the new TTL is a miss.
        assert await control._cached("HYBRID", "old") is None
        assert await control._cached("HYBRID", "new") == {"results": {}}
        js.fail = False
        await control._follow_ttl("HYBRID")
        await control._follow_ttl("HYBRID")  # once only
        return control

    control = asyncio.run(scenario())
    assert js.updates == [(1.0, 1.0)]  # max_age and the duplicate window (not above it)
    assert control.counts["expired"] == 1 and control.counts["ttl_updates"] == 1
