"""Predictive caching on the real actors with a MockClock: refresh-ahead of hot entries
(hit counts, budget, unread entries, failures, single flight) and pre-warming on a mode
switch. Synchronised through bounded asks, never sleeps."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest
from actor_harness import actor_logs

from modcoord.actors import CacheSettings, MockClock, Statistics
from modcoord.actors.modes import MODES
from modcoord.actors.reply import ReplyBox
from modcoord.actors.shared.cache_store import LookupKind, cache_key
from modcoord.actors.shared.demand import Demand
from modcoord.supervisor.daemon.config import ConfigSet, load_config_dir
from modcoord.supervisor.daemon.coordinator import ModuleCoordinator
from modcoord.supervisor.protocol.module import ModuleInfo

TTL_MS = 1000.0
LEAD_MS = 200.0


class Endpoint:
    """A module endpoint that answers at once, or holds the replies while ``hold`` is set
    (so a computation stays in flight); ``fail`` makes it answer with an error."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.held: list[Any] = []
        self.hold = False
        self.fail = False
        self.lock = threading.Lock()

    def mode_change(self, module_id: str, mode: str, strategy: str,
                    context: dict[str, Any], reply: Any) -> None:
        with self.lock:
            self.calls.append((mode, dict(context)))
            if self.hold:
                self.held.append((reply, context))
                return
        self._answer(reply, context)

    def _answer(self, reply: Any, context: dict[str, Any]) -> None:
        if self.fail:
            reply(None, "RuntimeError: module down")
        else:
            reply({"n": len(self.calls), "context": context}, None)

    def release(self) -> None:
        with self.lock:
            held, self.held, self.hold = self.held, [], False
        for reply, context in held:
            self._answer(reply, context)

    def computed(self, mode: str, context: dict[str, Any]) -> int:
        with self.lock:
            return sum(1 for m, c in self.calls if m == mode and c == context)


def config(**cache: Any) -> ConfigSet:
    """The packaged configs with HYBRID's cache section overridden by ``cache``."""
    base = load_config_dir()
    hybrid = base.modes["HYBRID"]
    merged = hybrid.cache.model_dump()
    for k, v in cache.items():
        merged[k] = {**merged[k], **v} if isinstance(v, dict) else v
    modes = dict(base.modes)
    modes["HYBRID"] = hybrid.model_copy(
        update={"cache": CacheSettings.model_validate(merged, strict=False)})
    return ConfigSet(directory=base.directory, daemon=base.daemon, modes=modes,
                     digest=base.digest)


@pytest.fixture
def cache_logs() -> Iterator[list[Any]]:
    yield from actor_logs("cache")


@pytest.fixture
def clock() -> MockClock:
    return MockClock()


@pytest.fixture
def make(clock: MockClock) -> Any:
    made: list[ModuleCoordinator] = []

    def factory(mode: str = "HYBRID", min_hits: int = 2, max_in_flight: int = 4,
                **cache: Any) -> tuple[ModuleCoordinator, Endpoint]:
        cfg = config(ttl_ms=TTL_MS, refresh_ahead={
            "enabled": True, "min_hits": min_hits, "before_ms": LEAD_MS,
            "max_in_flight": max_in_flight}, **cache)
        coord = ModuleCoordinator(cfg, mode=mode, clock=clock,
                                  rss_reader=lambda: 50 * 1024 * 1024).start()
        made.append(coord)
        endpoint = Endpoint()
        coord.register(ModuleInfo(module_id="m", name="M",
                                  supported_modes=frozenset(MODES), subscribe=()),
                       endpoint)  # type: ignore[arg-type]
        return coord, endpoint

    yield factory
    for coord in made:
        coord.stop()
    pykka.ActorRegistry.stop_all(timeout=5)


def stats(coord: ModuleCoordinator) -> dict[str, Any]:
    """The cache actor's statistics (asking also waits for what it was told before)."""
    snapshot = coord.handles["cache"].ask(Statistics(), timeout=5)
    out: dict[str, Any] = snapshot.as_dict()
    return out


def advance(coord: ModuleCoordinator, clock: MockClock, seconds: float,
            step: float = 0.05) -> None:
    """Advance in steps, letting the cache actor handle each refresh check on the way."""
    remaining = seconds
    while remaining > 1e-9:
        dt = min(step, remaining)
        clock.advance(dt)
        stats(coord)
        remaining -= dt


def ask(coord: ModuleCoordinator, context: dict[str, Any]) -> Any:
    result = coord.coordinate("HYBRID", context)
    assert result is not None and result.errors == {}
    return result


def test_an_entry_hit_min_hits_times_is_refreshed_before_expiry_and_keeps_hitting(
        make: Any, clock: MockClock) -> None:
    coord, module = make()
    ctx = {"doc": "a"}
    assert ask(coord, ctx).cached is False
    assert ask(coord, ctx).cached and ask(coord, ctx).cached
    advance(coord, clock, 0.75)  # remaining 0.25 s > lead: not yet
    assert stats(coord)["refreshes"] == 0 and module.computed("HYBRID", ctx) == 1
    advance(coord, clock, 0.2)   # remaining <= 0.2 s at a check: refreshed in the background
    s = stats(coord)
    assert s["refreshes"] == 1 and module.computed("HYBRID", ctx) == 2
    assert s["hits"] == 2 and s["misses"] == 1  # a refresh counts neither
    advance(coord, clock, 0.3)   # past the first computation's expiry
    again = ask(coord, ctx)
    assert again.cached is True and again.results["m"]["n"] == 2  # the refreshed value
    for _ in range(3):  # hot across several more TTLs: never a miss
        ask(coord, ctx)
        advance(coord, clock, 0.5)
    assert stats(coord)["misses"] == 1 and stats(coord)["refreshes"] >= 3


def test_an_entry_with_fewer_hits_is_not_refreshed(make: Any, clock: MockClock) -> None:
    coord, module = make(min_hits=3)
    ctx = {"doc": "cold"}
    ask(coord, ctx)
    ask(coord, ctx)
    ask(coord, ctx)  # two hits: one short of min_hits
    advance(coord, clock, 1.05)
    assert stats(coord)["refreshes"] == 0 and module.computed("HYBRID", ctx) == 1
    assert ask(coord, ctx).cached is False  # it expired and is computed on request


def test_a_context_hit_once_per_entry_becomes_hot_over_its_entries(
        make: Any, clock: MockClock) -> None:
    coord, module = make(min_hits=3)
    ctx = {"doc": "steady"}
    for _ in range(2):  # each entry computed, hit once, left to expire
        assert ask(coord, ctx).cached is False
        assert ask(coord, ctx).cached is True
        advance(coord, clock, 1.05)
    assert stats(coord)["refreshes"] == 0
    assert ask(coord, ctx).cached is False
    assert ask(coord, ctx).cached is True  # the third hit of the context
    advance(coord, clock, 0.95)
    assert stats(coord)["refreshes"] == 1 and module.computed("HYBRID", ctx) == 4
    advance(coord, clock, 0.1)
    assert ask(coord, ctx).cached is True


def test_an_entry_no_one_reads_since_its_refresh_is_not_refreshed_again(
        make: Any, clock: MockClock) -> None:
    coord, module = make()
    ctx = {"doc": "was-hot"}
    for _ in range(4):
        ask(coord, ctx)
    advance(coord, clock, 0.95)
    assert stats(coord)["refreshes"] == 1
    advance(coord, clock, 1.2)  # no reads since the refresh: left to expire
    assert stats(coord)["refreshes"] == 1 and module.computed("HYBRID", ctx) == 2
    assert ask(coord, ctx).cached is False


def test_the_refresh_budget_holds_with_many_hot_entries(make: Any, clock: MockClock,
                                                        cache_logs: list[Any]) -> None:
    coord, module = make(max_in_flight=2)
    contexts = [{"doc": i} for i in range(6)]
    for ctx in contexts:
        for _ in range(3):
            ask(coord, ctx)
    module.hold = True
    advance(coord, clock, 0.95)
    s = stats(coord)
    assert s["background_inflight"] == 2 and len(module.held) == 2
    assert s["refresh_skipped_budget"] >= 4 and s["max_in_flight"] == 2
    module.release()
    advance(coord, clock, 0.1)  # the next check takes two more, never more than two
    s = stats(coord)
    assert s["refreshes"] >= 2 and s["background_inflight"] <= 2
    exhausted = [r for r in cache_logs
                 if r["message"].startswith("refresh budget exhausted")]
    assert len(exhausted) == 1  # once when it starts, not at every check
    assert exhausted[0]["extra"]["hint"] == "raise cache.refresh_ahead.max_in_flight"


def test_a_failing_refresh_keeps_the_old_entry_and_is_counted(
        make: Any, clock: MockClock, cache_logs: list[Any]) -> None:
    coord, module = make()
    ctx = {"doc": "flaky"}
    first = ask(coord, ctx)
    ask(coord, ctx)
    ask(coord, ctx)
    module.fail = True
    advance(coord, clock, 0.95)
    s = stats(coord)
    assert s["refresh_failures"] == 1 and s["refreshes"] == 0
    kept = ask(coord, ctx)  # before expiry: still the old value
    assert kept.cached is True and kept.results == first.results
    advance(coord, clock, 0.1)  # not retried within the entry's life
    assert module.computed("HYBRID", ctx) == 2 and stats(coord)["refresh_failures"] == 1
    module.fail = False
    advance(coord, clock, 0.1)
    assert ask(coord, ctx).cached is False  # expired: computed on request
    failed = [r for r in cache_logs if r["message"].startswith("cache refresh failed")]
    assert len(failed) == 1 and failed[0]["level"].name == "WARNING"
    assert failed[0]["extra"]["modules"] == {"m": "RuntimeError: module down"}


def test_a_request_arriving_during_its_refresh_joins_it(make: Any, clock: MockClock) -> None:
    coord, module = make()
    ctx = {"doc": "slow"}
    for _ in range(3):
        ask(coord, ctx)
    module.hold = True
    advance(coord, clock, 0.95)
    assert len(module.held) == 1
    advance(coord, clock, 0.2)  # the old entry expired while the refresh runs
    box = ReplyBox()
    coord.coordinate("HYBRID", ctx, box)
    assert module.computed("HYBRID", ctx) == 2  # the request did not compute again
    module.release()
    result = box.wait(5, "coordinate")
    assert result["cached"] is True and result["results"]["m"]["n"] == 2
    s = stats(coord)
    assert s["joined"] == 1 and s["misses"] == 1 and s["refreshes"] == 1


def test_a_mode_switch_prewarms_the_most_read_contexts_of_the_new_mode(
        make: Any, clock: MockClock) -> None:
    coord, module = make(mode="MANUAL", prewarm={"enabled": True, "max_entries": 2})
    reads = {"a": 5, "b": 3, "c": 1}
    for doc, n in reads.items():
        for _ in range(n):
            ask(coord, {"doc": doc})
    advance(coord, clock, 5.5, step=0.5)  # MANUAL's TTL: every entry expired
    assert coord.cache_store.remaining(cache_key("HYBRID", {"doc": "a"})) is None
    coord.set_mode("HYBRID")
    s = stats(coord)
    assert s["prewarmed"] == 2 and s["prewarm_queued"] == 0
    assert module.computed("HYBRID", {"doc": "a"}) == 2
    assert module.computed("HYBRID", {"doc": "b"}) == 2
    assert module.computed("HYBRID", {"doc": "c"}) == 1  # beyond max_entries
    misses = s["misses"]
    assert ask(coord, {"doc": "a"}).cached and ask(coord, {"doc": "b"}).cached
    assert stats(coord)["misses"] == misses


def test_prewarm_is_off_where_the_mode_says_so(make: Any, clock: MockClock) -> None:
    coord, module = make(prewarm={"enabled": False})
    for _ in range(3):
        coord.coordinate("MANUAL", {"doc": "m"})
    advance(coord, clock, 5.5, step=0.5)
    coord.set_mode("MANUAL")  # manual.yaml: prewarm off
    assert stats(coord)["prewarmed"] == 0
    assert module.computed("MANUAL", {"doc": "m"}) == 1


def test_demand_tracks_a_bounded_number_of_contexts_per_mode() -> None:
    demand = Demand(track_max=4)
    for i in range(4):
        for _ in range(2 * i + 1):  # 1, 3, 5, 7 reads
            demand.read("HYBRID", f"HYBRID:{i}", LookupKind.HIT)
    demand.read("MANUAL", "MANUAL:x", LookupKind.HIT)
    demand.read("HYBRID", "HYBRID:new", LookupKind.LEAD)  # forgets the least read half
    assert demand.top("HYBRID", 10) == ["HYBRID:3", "HYBRID:2", "HYBRID:new"]
    assert demand.reads_of("HYBRID:3") == {"reads": 4, "hits": 7,
                                           "since_compute": 7, "failed": False}
    assert demand.counters().tracked_contexts == 4  # MANUAL's own budget is untouched
    assert demand.due(min_hits=3) == ["HYBRID:3", "HYBRID:2"]
