"""modcoord's subsystem actors: debouncer, cache, batcher, memory manager and monitor.

The tree::

    _pykka.py       every reach into pykka's private parts, marked, and a check of them
    _base.py        handles, the actor base (crash containment, dispatch), ActorContext
    shared/         the thread-safe hot-path objects and Shared, the typed context fields
    debouncer.py    cache.py  batcher.py  memory.py  monitor.py — one actor each, with
                    its messages and snapshots
    rules.py        the monitor's insight rules: pure functions of a typed snapshot
    clock.py  histogram.py  message.py  update.py  settings.py  reply.py  errors.py

Importing this package is cheap: the names below are loaded on first use (PEP 562), so
``import modcoord.actors.errors`` (what the client needs) loads neither pykka, pydantic nor
loguru.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modcoord.actors._base import (
        DEFAULT_ASK_TIMEOUT,
        ActorContext,
        ActorHandle,
        Crash,
        FailureReport,
        Handover,
        InjectedFault,
        ManagedActor,
        Reconfigure,
        Statistics,
    )
    from modcoord.actors.clock import (
        Clock,
        MockClock,
        MonotonicClock,
        TimerHandle,
    )
    from modcoord.actors.errors import (
        ActorCrashedError,
        ActorError,
        ActorStoppedError,
        CallTimeoutError,
        ConfigError,
        ConnectionLostError,
        InvalidMessageError,
        ModcoordError,
        NotRunningError,
        QueueFullError,
        RemoteError,
    )
    from modcoord.actors.histogram import (
        HistogramSnapshot,
        LatencyHistogram,
    )
    from modcoord.actors.message import (
        Message,
    )
    from modcoord.actors.settings import (
        BatchSettings,
        CacheSettings,
        DebounceSettings,
        MemorySettings,
        ModeSettings,
        MonitorSettings,
    )
    from modcoord.actors.shared import (
        Shared,
    )
    from modcoord.actors.update import (
        PRIORITIES,
        Batch,
        Update,
    )

__all__ = [
    "DEFAULT_ASK_TIMEOUT",
    "PRIORITIES",
    "ActorContext",
    "ActorCrashedError",
    "ActorError",
    "ActorHandle",
    "ActorStoppedError",
    "Batch",
    "BatchSettings",
    "CacheSettings",
    "CallTimeoutError",
    "Clock",
    "ConfigError",
    "ConnectionLostError",
    "Crash",
    "DebounceSettings",
    "FailureReport",
    "Handover",
    "HistogramSnapshot",
    "InjectedFault",
    "InvalidMessageError",
    "LatencyHistogram",
    "ManagedActor",
    "MemorySettings",
    "Message",
    "MockClock",
    "ModcoordError",
    "ModeSettings",
    "MonitorSettings",
    "MonotonicClock",
    "NotRunningError",
    "QueueFullError",
    "Reconfigure",
    "RemoteError",
    "Shared",
    "Statistics",
    "TimerHandle",
    "Update",
]

_WHERE: dict[str, str] = {
    "DEFAULT_ASK_TIMEOUT": "modcoord.actors._base",
    "ActorContext": "modcoord.actors._base",
    "ActorHandle": "modcoord.actors._base",
    "Crash": "modcoord.actors._base",
    "FailureReport": "modcoord.actors._base",
    "Handover": "modcoord.actors._base",
    "InjectedFault": "modcoord.actors._base",
    "ManagedActor": "modcoord.actors._base",
    "Reconfigure": "modcoord.actors._base",
    "Statistics": "modcoord.actors._base",
    "Clock": "modcoord.actors.clock",
    "MockClock": "modcoord.actors.clock",
    "MonotonicClock": "modcoord.actors.clock",
    "TimerHandle": "modcoord.actors.clock",
    "ActorCrashedError": "modcoord.actors.errors",
    "ActorError": "modcoord.actors.errors",
    "ActorStoppedError": "modcoord.actors.errors",
    "CallTimeoutError": "modcoord.actors.errors",
    "ConfigError": "modcoord.actors.errors",
    "ConnectionLostError": "modcoord.actors.errors",
    "InvalidMessageError": "modcoord.actors.errors",
    "ModcoordError": "modcoord.actors.errors",
    "NotRunningError": "modcoord.actors.errors",
    "QueueFullError": "modcoord.actors.errors",
    "RemoteError": "modcoord.actors.errors",
    "HistogramSnapshot": "modcoord.actors.histogram",
    "LatencyHistogram": "modcoord.actors.histogram",
    "Message": "modcoord.actors.message",
    "BatchSettings": "modcoord.actors.settings",
    "CacheSettings": "modcoord.actors.settings",
    "DebounceSettings": "modcoord.actors.settings",
    "MemorySettings": "modcoord.actors.settings",
    "ModeSettings": "modcoord.actors.settings",
    "MonitorSettings": "modcoord.actors.settings",
    "Shared": "modcoord.actors.shared",
    "PRIORITIES": "modcoord.actors.update",
    "Batch": "modcoord.actors.update",
    "Update": "modcoord.actors.update",
}
"""Which module defines each public name."""


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use (PEP 562)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
