"""Tests of the coordination cache: canonical keys, the store, single flight, the actor."""

from __future__ import annotations

import datetime
import json
import random
import threading
from collections import OrderedDict
from typing import Any

import pytest
from actor_harness import WAIT_S, ActorRig

from modcoord.actors import (
    ActorCrashedError,
    CacheSettings,
    CallTimeoutError,
    Crash,
    InvalidMessageError,
    MockClock,
    Reconfigure,
    Statistics,
)
from modcoord.actors.cache import CacheActor, Clear, Get, Invalidate, Purge, Put, Shrink
from modcoord.actors.message import from_wire
from modcoord.actors.shared import cache_keys
from modcoord.actors.shared.cache_keys import split_key
from modcoord.actors.shared.cache_store import (
    CacheStatistics,
    CacheStore,
    LookupKind,
    cache_key,
)


def settings(**kw: Any) -> CacheSettings:
    return CacheSettings(**kw)


def store_with(clock: MockClock, **kw: Any) -> CacheStore:
    return CacheStore(clock, settings(**kw))


def fill(store: CacheStore, *keys: str) -> None:
    for k in keys:
        assert store.lookup(k).lead
        store.complete(k, f"v-{k}")


# -- canonical keys ------------------------------------------------------------------------


def test_cache_key_is_independent_of_key_order_at_every_depth() -> None:
    a = {"user": 7, "doc": {"id": "d1", "opts": {"x": 1, "y": [1, {"b": 2, "a": 1}]}}}
    b = OrderedDict(
        [("doc", {"opts": {"y": [1, {"a": 1, "b": 2}], "x": 1}, "id": "d1"}), ("user", 7)]
    )
    assert cache_key("HYBRID", a) == cache_key("HYBRID", b)
    assert cache_key("HYBRID", a).startswith("HYBRID:")


def test_cache_key_treats_tuples_as_lists_and_distinguishes_values_and_modes() -> None:
    assert cache_key("M", {"xs": (1, 2, ("a",))}) == cache_key("M", {"xs": [1, 2, ["a"]]})
    assert cache_key("M", {"xs": [1, 2]}) != cache_key("M", {"xs": [2, 1]})
    assert cache_key("MANUAL", {"u": 1}) != cache_key("HYBRID", {"u": 1})
    assert cache_key("M", {"u": 1}) != cache_key("M", {"u": "1"})
    assert cache_key("M", {}) != cache_key("M", {"u": None})


def test_cache_key_fast_path_keys_as_the_stdlib_json_does() -> None:
    """The msgspec fast path and the stdlib path give keys that decode to the same JSON
    value for every plain context, and equal contexts in any key order share a key."""
    rng = random.Random(11)
    chars = [0x22, 0x5C, 0x0A, 0x01, 0x7F, 0xE9, 0x2028, 0x1F600, 0x41, 0x20]

    def text() -> str:
        return "".join(chr(rng.choice(chars)) for _ in range(rng.randint(0, 5)))

    def value(depth: int) -> Any:
        r = rng.random()
        if depth > 3 or r < 0.5:
            return rng.choice([None, True, False, 0, -(2 ** 63), 2 ** 64 - 1, 1.0, -0.0,
                               rng.random() * 10.0 ** rng.randint(-30, 30), text()])
        if r < 0.75:
            return [value(depth + 1) for _ in range(rng.randint(0, 4))]
        return {text(): value(depth + 1) for _ in range(rng.randint(0, 4))}

    for _ in range(3000):
        context = {f"k{j}": value(0) for j in range(rng.randint(0, 4))}
        key = cache_key("M", context)
        assert json.loads(key[2:]) == json.loads(cache_keys._dumps(context))
        assert cache_key("M", dict(reversed(list(context.items())))) == key
        assert split_key(key) == ("M", json.loads(cache_keys._dumps(context)))
    # what the fast path leaves to the stdlib one is keyed there
    huge = {"n": 2 ** 70}
    assert cache_key("M", huge) == "M:" + cache_keys._dumps(huge)
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    assert json.loads(cache_key("M", {"d": deep})[2:]) == {"d": deep}
    assert len({cache_key("M", {"u": v}) for v in (1, 1.0, True, "1")}) == 4


@pytest.mark.parametrize(
    ("context", "path"),
    [
        ({"a": {"b": [1, object()]}}, "context.a.b[1]"),
        ({"a": [{"x": float("nan")}]}, "context.a[0].x"),
        ({"a": [float("inf")]}, "context.a[0]"),
        ({"when": datetime.datetime(2026, 12, 4)}, "context.when"),
        ({"a": {1: "one"}}, "context.a"),
        ({"blob": b"bytes"}, "context.blob"),
        ({"s": {1, 2}}, "context.s"),
    ],
)
def test_cache_key_rejects_non_json_values_naming_the_path(context: Any, path: str) -> None:
    with pytest.raises(InvalidMessageError) as info:
        cache_key("M", context)
    assert str(info.value).startswith(path + ":")


def test_cache_key_rejects_non_mapping_context_and_non_string_mode() -> None:
    with pytest.raises(InvalidMessageError, match="mapping"):
        cache_key("M", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(InvalidMessageError, match="mode"):
        cache_key(3, {})  # type: ignore[arg-type]


def test_cache_key_rejects_circular_context() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(InvalidMessageError, match="circular"):
        cache_key("M", loop)


# -- the store -----------------------------------------------------------------------------


def test_miss_then_hit_and_statistics(clock: MockClock) -> None:
    store = store_with(clock)
    first = store.lookup("k")
    assert first.kind is LookupKind.LEAD and first.flight is not None
    store.complete("k", {"answer": 42})
    second = store.lookup("k")
    assert second.hit and second.value == {"answer": 42}
    assert store.lookup("other").lead
    stats = store.statistics()
    assert (stats.hits, stats.misses, stats.size, stats.max_size) == (1, 2, 1, 1000)
    assert stats.hit_rate == pytest.approx(1 / 3)
    assert stats.inflight == 1  # "other" is still being computed


def test_hit_rate_is_zero_before_any_lookup(clock: MockClock) -> None:
    stats = store_with(clock).statistics()
    assert stats.hit_rate == 0.0 and stats.hits == stats.misses == 0


def test_entries_expire_after_ttl(clock: MockClock) -> None:
    store = store_with(clock, ttl_ms=500.0)
    fill(store, "k")
    clock.advance(0.25)
    assert store.lookup("k").hit
    clock.advance(0.25)  # exactly ttl: expired
    result = store.lookup("k")
    assert result.lead
    stats = store.statistics()
    assert stats.evictions_expired == 1 and stats.size == 0 and stats.misses == 2


def test_hit_does_not_extend_ttl_but_a_new_value_does(clock: MockClock) -> None:
    store = store_with(clock, ttl_ms=1000.0)
    fill(store, "k")
    clock.advance(0.5)
    assert store.lookup("k").hit
    clock.advance(0.5)
    assert store.lookup("k").lead
    store.complete("k", "new")
    clock.advance(0.75)
    assert store.lookup("k").value == "new"


def test_lru_eviction_respects_recent_use(clock: MockClock) -> None:
    store = store_with(clock, max_entries=3, evict_fraction=0.25)  # ceil(0.75) -> 1
    fill(store, "a", "b", "c")
    assert store.lookup("a").hit  # a becomes most recently used; b is now LRU
    fill(store, "d")
    assert store.lookup("b").lead
    store.fail("b", RuntimeError("not needed"))
    for k in ("a", "c", "d"):
        assert store.lookup(k).hit
    assert store.statistics().evictions_size == 1


def test_full_cache_drops_expired_first_then_a_fraction(clock: MockClock) -> None:
    store = store_with(clock, max_entries=5, evict_fraction=0.4, ttl_ms=1000.0)
    fill(store, "old1", "old2")
    clock.advance(0.5)
    fill(store, "n1", "n2", "n3")
    clock.advance(0.5)  # old1, old2 expire now; n1..n3 have 0.5 s left
    fill(store, "n4")
    stats = store.statistics()
    assert (stats.evictions_expired, stats.evictions_size, stats.size) == (2, 0, 4)
    fill(store, "n5")  # 5 entries now, none expired
    fill(store, "n6")  # full: evicts ceil(0.4 * 5) = 2 LRU (n1, n2)
    stats = store.statistics()
    assert (stats.evictions_expired, stats.evictions_size, stats.size) == (2, 2, 4)
    assert [store.get(k) for k in ("n1", "n2")] == [None, None]
    assert [store.get(k) for k in ("n3", "n4", "n5", "n6")] == ["v-n3", "v-n4", "v-n5", "v-n6"]


def test_replacing_an_existing_key_in_a_full_cache_evicts_nothing(clock: MockClock) -> None:
    store = store_with(clock, max_entries=2)
    fill(store, "a", "b")
    store.put("a", "again")
    assert store.statistics().evictions_size == 0
    assert store.get("a") == "again" and store.get("b") == "v-b"


def test_maintenance_counts_evictions_by_cause(clock: MockClock) -> None:
    store = store_with(clock, ttl_ms=1000.0, max_entries=100)
    fill(store, "e1", "e2", "e3")
    clock.advance(1.0)
    fill(store, *[f"k{i}" for i in range(10)])
    assert store.purge_expired() == 3
    assert store.invalidate("k0") is True
    assert store.invalidate("k0") is False
    assert store.shrink(0.25) == 3  # ceil(0.25 * 9)
    assert store.get("k1") is None and store.get("k4") == "v-k4"  # LRU went first
    assert store.clear() == 6
    stats = store.statistics()
    assert (stats.evictions_expired, stats.evictions_size, stats.evictions_explicit) == (3, 0, 10)
    assert stats.as_dict()["evictions"] == {"expired": 3, "size": 0, "explicit": 10}
    assert stats.as_dict()["size"] == 0


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan"), "half", True])
def test_shrink_rejects_bad_fractions(clock: MockClock, fraction: Any) -> None:
    store = store_with(clock)
    fill(store, "a")
    with pytest.raises(InvalidMessageError):
        store.shrink(fraction)
    assert len(store) == 1


def test_statistics_snapshot_is_immutable(clock: MockClock) -> None:
    stats = store_with(clock).statistics()
    assert isinstance(stats, CacheStatistics)
    with pytest.raises(AttributeError):
        stats.hits = 5  # type: ignore[misc]


# -- single flight -------------------------------------------------------------------------


def test_single_flight_two_threads_compute_once(clock: MockClock) -> None:
    store = store_with(clock)
    lead = store.lookup("k")
    assert lead.lead
    joined = threading.Event()
    got: list[Any] = []

    def waiter() -> None:
        result = store.lookup("k")
        got.append(result.kind)
        joined.set()
        assert result.flight is not None
        got.append(result.flight.wait(timeout=WAIT_S))

    thread = threading.Thread(target=waiter)
    thread.start()
    assert joined.wait(WAIT_S)
    assert store.statistics().inflight == 1
    store.complete("k", "computed once")
    thread.join(WAIT_S)
    assert got == [LookupKind.WAIT, "computed once"]
    stats = store.statistics()
    assert (stats.hits, stats.misses, stats.joined, stats.inflight) == (1, 1, 1, 0)
    assert store.lookup("k").value == "computed once"


def test_many_threads_racing_on_one_key_elect_exactly_one_leader(clock: MockClock) -> None:
    store = store_with(clock)
    barrier = threading.Barrier(8)
    kinds: list[LookupKind] = []
    values: list[Any] = []
    lock = threading.Lock()

    def racer() -> None:
        barrier.wait(WAIT_S)
        result = store.lookup("hot")
        with lock:
            kinds.append(result.kind)
        if result.lead:
            store.complete("hot", "v")
            value = "v"
        elif result.hit:
            value = result.value
        else:
            assert result.flight is not None
            value = result.flight.wait(WAIT_S)
        with lock:
            values.append(value)

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert kinds.count(LookupKind.LEAD) == 1
    assert values == ["v"] * 8


def test_waiter_callbacks_get_value_or_error(clock: MockClock) -> None:
    store = store_with(clock)
    assert store.lookup("k").lead
    flight = store.lookup("k").flight
    assert flight is not None
    seen: list[tuple[Any, Any]] = []

    def broken(value: Any, error: BaseException | None) -> None:
        raise ZeroDivisionError("a broken waiter must not stop the others")

    flight.add_waiter(lambda v, e: seen.append((v, e)))
    flight.add_waiter(broken)
    flight.add_waiter(lambda v, e: seen.append(("second", v)))
    store.complete("k", 5)
    assert seen == [(5, None), ("second", 5)]
    flight.add_waiter(lambda v, e: seen.append(("late", v)))  # already done: runs now
    assert seen[-1] == ("late", 5)
    assert flight.done


def test_failure_propagates_to_waiters_and_stores_nothing(clock: MockClock) -> None:
    store = store_with(clock)
    assert store.lookup("k").lead
    flight = store.lookup("k").flight
    assert flight is not None
    errors: list[BaseException | None] = []
    flight.add_waiter(lambda v, e: errors.append(e))
    boom = RuntimeError("module timed out")
    store.fail("k", boom)
    assert errors == [boom]
    with pytest.raises(RuntimeError, match="module timed out"):
        flight.wait(WAIT_S)
    assert store.lookup("k").lead  # nothing was stored: the next caller leads again
    assert store.statistics().size == 0


def test_fail_without_error_hands_waiters_an_uncached_value(clock: MockClock) -> None:
    store = store_with(clock)
    assert store.lookup("k").kind == "lead"  # a str enum: plain strings compare equal
    joined = store.lookup("k")
    assert joined.kind == "wait" and joined.flight is not None
    seen: list[tuple[Any, Any]] = []
    joined.flight.add_waiter(lambda v, e: seen.append((v, e)))
    store.fail("k", None, {"errors": {"m": "timeout"}})
    assert seen == [({"errors": {"m": "timeout"}}, None)]
    assert joined.flight.wait(WAIT_S) == {"errors": {"m": "timeout"}}
    assert store.lookup("k").kind == "lead"  # not cached


def test_flight_wait_times_out(clock: MockClock) -> None:
    store = store_with(clock)
    store.lookup("k")
    flight = store.lookup("k").flight
    assert flight is not None
    with pytest.raises(CallTimeoutError):
        flight.wait(timeout=0.01)


def test_invalidate_during_flight_wakes_waiters_but_stores_nothing(clock: MockClock) -> None:
    store = store_with(clock)
    store.lookup("k")
    flight = store.lookup("k").flight
    assert flight is not None
    store.invalidate("k")
    store.complete("k", "stale")
    assert flight.wait(WAIT_S) == "stale"
    assert store.get("k") is None


def test_disabled_cache_computes_every_time(clock: MockClock) -> None:
    store = store_with(clock, enabled=False)
    first, second = store.lookup("k"), store.lookup("k")
    assert first.lead and second.lead  # no single flight either
    assert first.flight is None
    store.complete("k", "v")
    assert store.lookup("k").lead
    stats = store.statistics()
    assert (stats.hits, stats.misses, stats.size, stats.enabled) == (0, 3, 0, False)


def test_reconfigure_smaller_max_evicts_lru_as_size(clock: MockClock) -> None:
    store = store_with(clock, max_entries=10)
    fill(store, *[f"k{i}" for i in range(8)])
    store.lookup("k0")  # k0 becomes MRU
    store.reconfigure(settings(max_entries=3))
    stats = store.statistics()
    assert (stats.size, stats.max_size, stats.evictions_size) == (3, 3, 5)
    assert [store.get(k) is not None for k in ("k6", "k7", "k0")] == [True, True, True]


def test_reconfigure_disabled_clears_and_in_flight_still_completes(clock: MockClock) -> None:
    store = store_with(clock)
    fill(store, "a", "b")
    store.lookup("c")
    flight = store.lookup("c").flight
    assert flight is not None
    store.reconfigure(settings(enabled=False))
    assert store.statistics().evictions_explicit == 2
    store.complete("c", "done")
    assert flight.wait(WAIT_S) == "done"
    store.reconfigure(settings(enabled=True))
    assert store.lookup("c").lead  # was not stored while disabled


# -- the actor -----------------------------------------------------------------------------


class Rig(ActorRig[MockClock]):
    """The cache actor, started, on ``store`` (the context's own store when ``None``)."""

    def __init__(self, clock: MockClock, store: CacheStore | None = None,
                 cache_settings: CacheSettings | None = None) -> None:
        swap: dict[str, Any] = {} if store is None else {"cache_store": store}
        super().__init__(clock, "cache", CacheActor, cache_settings or settings(), **swap)
        self.start()


def test_actor_messages(clock: MockClock) -> None:
    store = store_with(clock, ttl_ms=1000.0)
    rig = Rig(clock, store, settings(ttl_ms=1000.0))
    assert rig.ask(Get("k")) is None
    rig.ask(Put("k", {"r": 1}))
    assert rig.ask(Get("k")) == {"r": 1}
    assert store.lookup("k").value == {"r": 1}  # the same store as the hot path
    for i in range(9):
        rig.ask(Put(f"p{i}", i))
    clock.advance(0.5)
    rig.ask(Put("fresh", 1))
    clock.advance(0.5)
    assert rig.ask(Purge()) == 10
    assert rig.ask(Shrink(1.0)) == 1
    rig.ask(Put("x", 1))
    rig.ask(Put("y", 2))
    assert rig.ask(Invalidate("x")) is True
    assert rig.ask(Invalidate("x")) is False
    assert rig.ask(Clear()) == 1
    stats = rig.ask(Statistics())
    assert isinstance(stats, CacheStatistics)
    assert (stats.evictions_expired, stats.evictions_explicit, stats.size) == (10, 3, 0)
    assert (stats.hits, stats.misses) == (2, 1)


def test_actor_refuses_bad_input_and_stays_alive(clock: MockClock) -> None:
    rig = Rig(clock)
    with pytest.raises(InvalidMessageError):
        rig.ask(Shrink(2.0))
    with pytest.raises(InvalidMessageError):
        rig.ask(Get(5))  # type: ignore[arg-type]
    assert rig.handle.is_alive()
    assert rig.ask(Get("k")) is None


def test_actor_reconfigure_reaches_the_store(clock: MockClock) -> None:
    store = store_with(clock, max_entries=10)
    rig = Rig(clock, store, settings(max_entries=10))
    fill(store, *[f"k{i}" for i in range(6)])
    rig.ask(Reconfigure({"max_entries": 4}))
    assert store.statistics().max_size == 4 and len(store) == 4
    rig.ask(Reconfigure(settings(enabled=False)))
    assert len(store) == 0 and store.lookup("k5").lead


def test_actor_uses_the_shared_store_of_a_default_context(clock: MockClock) -> None:
    rig = Rig(clock, cache_settings=settings(max_entries=7))
    store = rig.context.shared.cache_store
    shared = store.statistics().as_dict()  # the actor's store is the shared one
    assert {k: v for k, v in rig.ask(Statistics()).as_dict().items() if k in shared} == shared
    assert isinstance(store, CacheStore)
    assert store.statistics().max_size == 7
    rig.ask(Put("k", "v"))
    assert store.get("k") == "v"


def test_actor_applies_its_settings_to_a_shared_store(clock: MockClock) -> None:
    store = store_with(clock, max_entries=50)
    Rig(clock, store, settings(max_entries=20))
    assert store.statistics().max_size == 20


def test_restart_keeps_the_store(clock: MockClock) -> None:
    store = store_with(clock)
    rig = Rig(clock, store)
    rig.ask(Put("k", "survives"))
    rig.ref.stop()
    rig.ref = rig.start()
    assert rig.ask(Get("k")) == "survives"


def test_crash_is_reported_and_a_successor_sees_the_same_entries(clock: MockClock) -> None:
    rig = Rig(clock)
    rig.ask(Put("k", "v"))
    with pytest.raises(ActorCrashedError):
        rig.ask(Crash())
    assert len(rig.reports) == 1 and rig.reports[0].name == "cache"
    assert rig.reports[0].fatal is False
    pending = rig.handle.ask_future(Get("k"))  # buffered while the actor is down
    rig.ref = rig.start()
    assert pending.get(timeout=WAIT_S) == "v"


def test_messages_round_trip_over_the_wire() -> None:
    for message in (Get("k"), Put("k", {"a": [1, 2]}), Purge(), Shrink(0.5), Clear(),
                    Invalidate("k")):
        assert from_wire(message.to_wire()) == message
