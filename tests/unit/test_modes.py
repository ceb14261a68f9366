"""Each mode behaves as the mode table in docs/REFERENCE.md says (real actors, MockClock)."""

from __future__ import annotations

from typing import Any

import pytest
from test_coordinator import Module, advance
from test_coordinator import make as make  # the fixture, re-used

from modcoord.actors import MockClock

TABLE = {
    #            cache  debounce_s  batching  window_s  strategy
    "MANUAL":     (True,  0.300,    False,    None,     "conservative"),
    "HYBRID":     (True,  0.300,    True,     0.100,    "balanced"),
    "FULLY_AUTO": (False, 0.050,    True,     0.050,    "aggressive"),
}


@pytest.mark.parametrize("mode", list(TABLE))
def test_mode_behaviour_matches_the_table(make: Any, clock: MockClock, mode: str) -> None:
    cache_on, debounce_s, batching, window_s, strategy = TABLE[mode]
    coord = make(mode)
    viewer = Module("viewer", ["*"])
    coord.register_module(viewer)

    # cache
    first = coord.coordinate(mode, {"doc": 1})
    second = coord.coordinate(mode, {"doc": 1})
    assert first is not None and second is not None
    assert first.cached is False and second.cached is cache_on
    assert first.strategy == strategy

    # debounce delay: nothing just before it, delivered after it (plus the window)
    coord.publish("viewer", "a", 1)
    coord.publish("viewer", "b", 2)
    advance(coord, clock, debounce_s - 0.02)
    assert viewer.updates() == []
    advance(coord, clock, 0.04 + (window_s or 0.0) + 0.02)
    assert sorted(u.key for u in viewer.updates()) == ["a", "b"]

    # batching: one delivery for both keys, or one each
    sizes = [len(b.updates) for b in viewer.batches]
    assert sizes == ([2] if batching else [1, 1])
    if not batching:
        assert {b.reason for b in viewer.batches} == {"unbatched"}

    # memory strategy
    assert coord.statistics("memory").strategy == strategy


def test_critical_is_faster_than_normal_in_every_mode(make: Any, clock: MockClock) -> None:
    for mode in TABLE:
        coord = make(mode)
        viewer = Module(f"viewer-{mode}", ["*"])
        coord.register_module(viewer)
        coord.publish(viewer.module_id, "normal", 1, "medium")
        coord.publish(viewer.module_id, "urgent", 2, "critical")
        advance(coord, clock, 0.6)
        keys = [u.key for u in viewer.updates()]
        assert keys == ["urgent", "normal"], (mode, keys)
        coord.stop()
