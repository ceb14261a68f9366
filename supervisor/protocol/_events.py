"""What the daemon sends a client unasked: events and callback requests (private: the
public names are those of :mod:`modcoord.supervisor.protocol.calls`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

__all__ = ["CALLBACKS", "EVENTS", "BatchEvent", "GetPerformanceMetricsParams",
           "OnModeChangeParams", "SweptEvent"]


class BatchEvent(msgspec.Struct):
    """Event ``batch``: updates delivered to ``module_id`` (the subscriber). Each update
    is ``[source_module_id, key, payload, priority, seq]``; a batch too large for one
    frame comes as several events with the same ``batch_id``."""

    module_id: str
    batch_id: int
    reason: str
    updates: list[tuple[str, str, Any, str, int]]


class SweptEvent(msgspec.Struct):
    """Event ``swept``: the memory manager removed ``module_id``'s subscriptions after
    ``idle_s`` seconds idle (the limit is ``inactive_after_ms``); register it again."""

    module_id: str
    reason: str
    idle_s: float
    inactive_after_ms: int


EVENTS: Mapping[str, type[msgspec.Struct]] = {"batch": BatchEvent, "swept": SweptEvent}
"""Event name → its params struct."""


class OnModeChangeParams(msgspec.Struct):
    """Callback ``on_mode_change``: call the module's ``on_mode_change(mode, strategy,
    context)`` and answer with its result."""

    module_id: str
    mode: str
    strategy: str
    context: dict[str, Any]


class GetPerformanceMetricsParams(msgspec.Struct):
    """Callback ``get_performance_metrics``: answer with the module's metrics map."""

    module_id: str


CALLBACKS: Mapping[str, type[msgspec.Struct]] = {
    "on_mode_change": OnModeChangeParams,
    "get_performance_metrics": GetPerformanceMetricsParams,
}
"""Callback method name → its params struct."""
