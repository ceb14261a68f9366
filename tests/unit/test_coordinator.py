"""The in-process façade over the real actors: publish → debounce → batch → deliver,
coordinate with cache and single flight, modes, optimize, crashes, stop. Time is a
MockClock; the pipeline is synchronised through bounded asks, never sleeps."""

from __future__ import annotations

import threading
from typing import Any

import pykka
import pytest

from modcoord.actors import Batch, MockClock, QueueFullError, Statistics
from modcoord.actors.batcher import QueueDepth
from modcoord.actors.debouncer import Pending
from modcoord.actors.errors import InvalidMessageError
from modcoord.supervisor.daemon.config import load_config_dir
from modcoord.supervisor.daemon.coordinator import ACTOR_NAMES, ModuleCoordinator
from modcoord.supervisor.protocol.module import ModuleInfo


class Module:
    """An in-process module recording what reaches it."""

    def __init__(self, module_id: str, subscribe: list[str] | None = None,
                 modes: set[str] | None = None, answer: Any = "ok") -> None:
        self.module_id = module_id
        self.name = module_id.title()
        self.supported_modes = modes or {"MANUAL", "HYBRID", "FULLY_AUTO"}
        self.subscribe = subscribe or []
        self.answer = answer
        self.batches: list[Batch] = []
        self.mode_changes: list[tuple[str, str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.delivered = threading.Condition(self.lock)

    def on_mode_change(self, mode: str, strategy: str, context: dict[str, Any]) -> Any:
        with self.lock:
            self.mode_changes.append((mode, strategy, context))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer(mode) if callable(self.answer) else self.answer

    def on_batch(self, batch: Batch) -> None:
        with self.lock:
            self.batches.append(batch)
            self.delivered.notify_all()

    def updates(self) -> list[Any]:
        with self.lock:
            return [u for b in self.batches for u in b.updates]


@pytest.fixture
def clock() -> MockClock:
    return MockClock()


@pytest.fixture
def make(clock: MockClock) -> Any:
    made: list[ModuleCoordinator] = []

    def factory(mode: str = "HYBRID", **kwargs: Any) -> ModuleCoordinator:
        kwargs.setdefault("rss_reader", lambda: 50 * 1024 * 1024)
        coord = ModuleCoordinator(load_config_dir(), mode=mode, clock=clock, **kwargs).start()
        made.append(coord)
        return coord

    yield factory
    for coord in made:
        coord.stop()
    pykka.ActorRegistry.stop_all(timeout=5)


def settle(coord: ModuleCoordinator) -> None:
    """Wait until every message told so far has passed debouncer, batcher and memory."""
    coord.handles["debouncer"].ask(Pending(), timeout=5)
    coord.handles["batcher"].ask(QueueDepth(), timeout=5)
    coord.handles["memory"].ask(Statistics(), timeout=5)


def advance(coord: ModuleCoordinator, clock: MockClock, seconds: float, step: float = 0.01
            ) -> None:
    """Advance in small steps, settling in between so timers armed on the way fire."""
    settle(coord)
    remaining = seconds
    while remaining > 1e-9:
        dt = min(step, remaining)
        clock.advance(dt)
        settle(coord)
        remaining -= dt


def test_initialization_starts_every_actor_and_reports_status(make: Any) -> None:
    coord = make()
    status = coord.status()
    assert set(status["actors"]) == set(ACTOR_NAMES)
    assert all(a["alive"] and a["restarts"] == 0 for a in status["actors"].values())
    assert status["mode"] == "HYBRID" and status["is_coordinating"] is True
    for key in ("pid", "uptime_s", "modules", "performance_metrics", "cache_stats",
                "batch_queue", "last_reload_error"):
        assert key in status
    perf = status["performance_metrics"]
    assert set(perf["coordination_latency_ms"]) >= {"p50", "p95", "p99"}
    assert perf["memory_usage_bytes"] == 50 * 1024 * 1024
    for key in ("active_subscriptions", "cache_hit_rate", "batch_efficiency"):
        assert key in perf
    assert status["cache_stats"]["max_size"] == 1000
    assert status["batch_queue"]["pending"] == 0


def test_rapid_publishes_collapse_and_reach_subscribers(make: Any, clock: MockClock) -> None:
    coord = make()
    editor, viewer, other = Module("editor"), Module("viewer", ["editor"]), Module("other",
                                                                                    ["nobody"])
    for m in (editor, viewer, other):
        coord.register_module(m)
    seqs = [coord.publish("editor", "doc", {"text": t}) for t in ("h", "hi", "hi!")]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    advance(coord, clock, 0.29)
    assert viewer.updates() == []
    advance(coord, clock, 0.14)  # debounce fires at 0.3, batch window 0.1 later (+ steps)
    got = viewer.updates()
    assert [(u.key, u.payload, u.seq) for u in got] == [("doc", {"text": "hi!"}, seqs[-1])]
    assert other.updates() == []
    stats = coord.statistics("debouncer")
    assert (stats.received, stats.emitted, stats.collapsed) == (3, 1, 2)


def test_critical_takes_the_fast_path(make: Any, clock: MockClock) -> None:
    coord = make()
    viewer = Module("viewer", ["*"])
    coord.register_module(viewer)
    coord.publish("viewer", "alarm", 1, priority="critical")
    coord.publish("viewer", "note", 2, priority="low")
    advance(coord, clock, 0.06)
    assert [u.key for u in viewer.updates()] == ["alarm"]
    advance(coord, clock, 0.4)
    assert [u.key for u in viewer.updates()] == ["alarm", "note"]


def test_batches_are_ordered_by_priority_and_grouped(make: Any, clock: MockClock) -> None:
    coord = make()
    viewer = Module("viewer", ["*"])
    for m in (Module("a"), Module("b"), viewer):
        coord.register_module(m)
    coord.publish("a", "k1", 1, "low")
    coord.publish("b", "k2", 2, "high")
    coord.publish("a", "k3", 3, "high")
    coord.publish("b", "k4", 4, "medium")
    advance(coord, clock, 0.45)
    assert len(viewer.batches) == 1
    order = [(u.priority, u.module_id, u.key) for u in viewer.batches[0].updates]
    assert order == [("high", "b", "k2"), ("high", "a", "k3"), ("medium", "b", "k4"),
                     ("low", "a", "k1")]


def test_publish_refuses_bad_input_and_full_queue(make: Any) -> None:
    coord = make()
    coord.register_module(Module("a"))
    with pytest.raises(InvalidMessageError, match="priority"):
        coord.publish("a", "k", 1, "urgent")
    with pytest.raises(InvalidMessageError, match="not registered"):
        coord.publish("ghost", "k", 1)
    coord.queue_gauge.set_depth(coord.queue_gauge.max_queue)
    with pytest.raises(QueueFullError, match=r"batch\.max_queue"):
        coord.publish("a", "k", 1)
    assert coord.queue_gauge.statistics().rejected == 1


def test_coordinate_caches_per_mode_and_context(make: Any) -> None:
    coord = make()
    a, b = Module("a", answer=lambda mode: f"a in {mode}"), Module("b", modes={"MANUAL"})
    coord.register_module(a)
    coord.register_module(b)
    first = coord.coordinate("HYBRID", {"user": 7, "doc": "x"})
    assert first is not None and first.cached is False
    assert first.results == {"a": "a in HYBRID"} and first.errors == {}
    assert first.strategy == "balanced" and first.latency_ms >= 0
    again = coord.coordinate("hybrid", {"doc": "x", "user": 7})
    assert again is not None and again.cached is True and again.results == first.results
    other = coord.coordinate("MANUAL", {"user": 7, "doc": "x"})
    assert other is not None and other.cached is False
    assert set(other.results) == {"a", "b"}
    assert len(a.mode_changes) == 2
    assert coord.cache_store.statistics().hits == 1


def test_coordinate_reports_module_errors_and_does_not_cache_them(make: Any) -> None:
    coord = make()
    coord.register_module(Module("bad", answer=RuntimeError("boom")))
    first = coord.coordinate("HYBRID", {})
    assert first is not None and first.errors == {"bad": "RuntimeError: boom"}
    second = coord.coordinate("HYBRID", {})
    assert second is not None and second.cached is False


def test_fully_auto_computes_every_time(make: Any) -> None:
    coord = make("FULLY_AUTO")
    a = Module("a")
    coord.register_module(a)
    results = [coord.coordinate("FULLY_AUTO", {"x": 1}) for _ in range(3)]
    assert [r.cached for r in results if r is not None] == [False, False, False]
    assert len(a.mode_changes) == 3


def test_concurrent_misses_compute_once(make: Any) -> None:
    coord = make()
    release = threading.Event()
    calls = []

    def slow(mode: str) -> str:
        calls.append(mode)
        release.wait(5)
        return "done"

    coord.register_module(Module("slow", answer=slow))
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(coord.coordinate("HYBRID", {})))
               for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(500):
        if coord.cache_store.statistics().joined >= 3:
            break
        release.wait(0.01)
    release.set()
    for t in threads:
        t.join(5)
    assert len(calls) == 1
    assert len(results) == 4 and all(r.results == {"slow": "done"} for r in results)
    assert sum(not r.cached for r in results) == 1


def test_coordinate_rejects_bad_mode_and_context(make: Any) -> None:
    coord = make()
    with pytest.raises(InvalidMessageError, match="unknown mode"):
        coord.coordinate("TURBO", {})
    with pytest.raises(InvalidMessageError):
        coord.coordinate("HYBRID", {"f": object()})


def test_set_mode_reconfigures_and_notifies(make: Any, clock: MockClock) -> None:
    coord = make()
    viewer = Module("viewer", ["*"])
    coord.register_module(viewer)
    result = coord.set_mode("MANUAL")
    assert result.previous == "HYBRID" and result.mode == "MANUAL"
    assert result.results == {"viewer": "ok"}
    assert viewer.mode_changes[-1][:2] == ("MANUAL", "conservative")
    assert coord.status()["mode"] == "MANUAL"
    # MANUAL: no batching: two keys arrive as two deliveries.
    coord.publish("viewer", "k1", 1)
    coord.publish("viewer", "k2", 2)
    advance(coord, clock, 0.31)
    assert [len(b.updates) for b in viewer.batches] == [1, 1]
    with pytest.raises(InvalidMessageError):
        coord.set_mode("TURBO")


def test_mode_switch_keeps_pending_updates(make: Any, clock: MockClock) -> None:
    coord = make()
    viewer = Module("viewer", ["*"])
    coord.register_module(viewer)
    for i in range(5):
        coord.publish("viewer", f"k{i}", i)
    coord.set_mode("FULLY_AUTO")
    advance(coord, clock, 1.2)
    assert sorted(u.key for u in viewer.updates()) == [f"k{i}" for i in range(5)]


def test_optimize_flushes_everything_and_clears_cache(make: Any) -> None:
    coord = make()
    viewer = Module("viewer", ["*"])
    coord.register_module(viewer)
    coord.coordinate("HYBRID", {})
    for i in range(10):
        coord.publish("viewer", f"k{i}", i)
    report = coord.optimize()
    assert report.debounces_flushed == 10 and report.cache_cleared == 1
    assert sorted(u.key for u in viewer.updates()) == sorted(f"k{i}" for i in range(10))
    assert coord.cache_store.statistics().size == 0


@pytest.mark.parametrize("actor", ACTOR_NAMES)
def test_crash_with_pending_work_loses_nothing(make: Any, clock: MockClock, actor: str) -> None:
    coord = make(fault_injection=True)
    viewer = Module("viewer", ["*"])
    coord.register_module(viewer)
    for i in range(20):
        coord.publish("viewer", f"k{i}", i)
    advance(coord, clock, 0.3)  # into the batcher's queue, window not yet over
    for i in range(20, 30):
        coord.publish("viewer", f"k{i}", i)  # pending in the debouncer
    coord.crash(actor)
    for _ in range(500):
        status = coord.status()["actors"][actor]
        if status["restarts"] == 1 and status["alive"]:
            break
        clock.advance(0)
    assert coord.status()["actors"][actor]["restarts"] == 1
    advance(coord, clock, 0.5)
    assert sorted(u.key for u in viewer.updates()) == sorted(f"k{i}" for i in range(30))


def test_stop_flushes_pending_to_subscribers(make: Any) -> None:
    coord = make()
    viewer = Module("viewer", ["*"])
    coord.register_module(viewer)
    for i in range(7):
        coord.publish("viewer", f"k{i}", i)
    coord.stop()
    assert sorted(u.key for u in viewer.updates()) == sorted(f"k{i}" for i in range(7))


def test_inactive_module_is_swept_and_reactivated(make: Any, clock: MockClock) -> None:
    coord = make()
    viewer, editor = Module("viewer", ["editor"]), Module("editor")
    coord.register_module(viewer)
    coord.register_module(editor)
    # Keep the editor active; the viewer stays silent past memory.inactive_after_ms (30 s).
    for _ in range(4):
        coord.publish("editor", "k", 0)
        advance(coord, clock, 10.0, step=0.5)
    advance(coord, clock, 1.0, step=0.5)
    assert coord.activity.is_swept("viewer")
    assert not coord.activity.is_swept("editor")
    delivered = len(viewer.updates())
    coord.publish("editor", "k", 1)
    advance(coord, clock, 0.5)
    assert len(viewer.updates()) == delivered  # unsubscribed while inactive
    coord.coordinate("HYBRID", {}, caller=("viewer",))  # activity re-activates it
    coord.publish("editor", "k", 2)
    advance(coord, clock, 0.5)
    assert viewer.updates()[-1].payload == 2
    assert "viewer" in coord.modules()


def test_unregister_removes_subscription(make: Any, clock: MockClock) -> None:
    coord = make()
    viewer, editor = Module("viewer", ["editor"]), Module("editor")
    coord.register_module(viewer)
    coord.register_module(editor)
    assert coord.unregister("viewer") is True
    assert coord.unregister("viewer") is False
    coord.publish("editor", "k", 1)
    advance(coord, clock, 0.5)
    assert viewer.updates() == []
    with pytest.raises(InvalidMessageError, match="already registered"):
        coord.register(ModuleInfo.of(editor), object())


def test_actor_calls_by_name(make: Any) -> None:
    coord = make()
    stats = coord.actor_call("cache", "statistics")
    assert stats["max_size"] == 1000
    assert coord.actor_call("debouncer", "pending") == 0
    with pytest.raises(InvalidMessageError, match="unknown actor"):
        coord.actor_call("kitchen", "statistics")
    with pytest.raises(InvalidMessageError, match="no method"):
        coord.actor_call("cache", "explode")


def test_insights_not_enough_data_then_low_hit_rate(make: Any) -> None:
    coord = make()
    first = coord.insights()
    assert [i["id"] for i in first["insights"]] == ["not_enough_data"]
    coord.register_module(Module("a"))
    for i in range(40):
        coord.coordinate("HYBRID", {"i": i})  # all misses
    ids = {i["id"]: i for i in coord.insights()["insights"]}
    assert "low_cache_hit_rate" in ids
    assert ids["low_cache_hit_rate"]["message"] == (
        "Low cache hit rate - consider adjusting cache TTL or strategy")


@pytest.mark.slow
def test_stress_100k_updates_over_10k_keys(make: Any, clock: MockClock) -> None:
    import tracemalloc

    coord = make()
    viewer = Module("viewer", ["*"])
    coord.register_module(viewer)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    latest = {}
    items = []
    for i in range(100_000):
        key = f"k{i % 10_000}"
        latest[key] = i
        items.append(("viewer", key, i, "medium"))
        if len(items) == 1000:
            assert all(isinstance(s, int) for s in coord.publish_many(items))
            items = []
    assert coord.handles["debouncer"].ask(Pending(), timeout=30) == 10_000
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    advance(coord, clock, 1.2, step=0.1)
    got = viewer.updates()
    assert len(got) == 10_000
    assert {u.key: u.payload for u in got} == latest
    assert peak < 200 * 1024 * 1024


def test_admission_takes_what_fits_in_order(make: Any) -> None:
    coord = make()
    coord.register_module(Module("a"))
    gauge = coord.queue_gauge
    gauge.set_depth(gauge.max_queue - 2)
    out = coord.publish_many([("a", f"k{i}", i, "medium") for i in range(5)])
    assert [type(x).__name__ for x in out] == ["int", "int", "QueueFullError",
                                               "QueueFullError", "QueueFullError"]
    assert gauge.statistics().rejected == 3


def test_finished_coordination_releases_its_timeout_timer(make: Any, clock: MockClock) -> None:
    """The per-module callback timeout is cancelled when every module has answered, so
    the flight (and the results it holds) is freed at once, not callback_timeout later."""
    coord = make()
    coord.register_module(Module("a"))
    settle(coord)
    before = clock.pending_timers()
    for i in range(20):
        result = coord.coordinate("HYBRID", {"i": i})
        assert result is not None and result.cached is False
    assert clock.pending_timers() == before


def test_timers_overdue_tells_when_a_deadline_passed_unserved(make: Any,
                                                              clock: MockClock) -> None:
    """The server holds publishers back while this is true (timers before intake)."""
    coord = make()
    coord.register_module(Module("a"))
    assert coord.timers_overdue() is False  # nothing pending, no timer armed
    coord.publish("a", "k", 1)
    settle(coord)
    assert coord.timers_overdue() is False  # armed, not yet due
    # Time passes but the wake has not been served yet: overdue.
    coord.backlog.next_deadline = clock.monotonic() - 0.01
    assert coord.timers_overdue() is True
    advance(coord, clock, 0.5)  # the debouncer fires and disarms
    assert coord.timers_overdue() is False


def test_actor_messages_agree_with_the_protocol_table() -> None:
    """The coordinator's message for each actor method comes from the protocol's table
    by name; a method on one side only, or a renamed parameter, fails at import."""
    from modcoord.actors.cache import Purge, Shrink
    from modcoord.supervisor.daemon.actor_messages import ACTOR_MESSAGES, checked
    from modcoord.supervisor.protocol.calls import ACTOR_CALLS

    assert set(ACTOR_MESSAGES) == {(a, m) for a, ms in ACTOR_CALLS.items() for m in ms}
    missing = {k: v for k, v in ACTOR_MESSAGES.items() if k != ("cache", "purge")}
    with pytest.raises(RuntimeError, match=r"only in ACTOR_CALLS \[\('cache', 'purge'\)\]"):
        checked(missing)
    with pytest.raises(RuntimeError, match=r"cache\.shrink: message Purge takes"):
        checked({**ACTOR_MESSAGES, ("cache", "shrink"): Purge})
    assert checked({**ACTOR_MESSAGES, ("cache", "shrink"): Shrink}) is not None


def test_actor_calls_check_argument_types(make: Any) -> None:
    """In-process actor calls are validated by the protocol's declaration, naming the
    argument, before any message reaches an actor."""
    coord = make()
    with pytest.raises(InvalidMessageError, match="fraction"):
        coord.actor_call("cache", "shrink", {"fraction": "half"})
    with pytest.raises(InvalidMessageError, match="module_id"):
        coord.actor_call("debouncer", "cancel", {"module_id": {}, "key": "k"})
    assert coord.actor_call("cache", "shrink", posargs=[0.5]) == 0
