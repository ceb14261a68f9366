"""modcoord's subsystem actors: debouncer, cache, batcher, memory manager and monitor.

Each actor lives in its own module beside the messages it accepts. They share the
machinery in :mod:`modcoord.actors._base` (stable handles, crash containment, dispatch)
and read time from an injectable :mod:`~modcoord.actors.clock`.
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
    from modcoord.actors.clock import Clock, MockClock, MonotonicClock, TimerHandle
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
    from modcoord.actors.histogram import HistogramSnapshot, LatencyHistogram
    from modcoord.actors.message import Message
    from modcoord.actors.settings import (
        BatchSettings,
        CacheSettings,
        DebounceSettings,
        MemorySettings,
        ModeSettings,
        MonitorSettings,
    )
    from modcoord.actors.update import PRIORITIES, Batch, Update

# Where each name lives: loaded on first use (PEP 562), so that importing one light
# module of this package (``modcoord.actors.errors``) does not import pykka.
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
    "PRIORITIES": "modcoord.actors.update",
    "Batch": "modcoord.actors.update",
    "Update": "modcoord.actors.update",
}

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
    "Statistics",
    "TimerHandle",
    "Update",
]


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first use.

    Raises:
        AttributeError: not a name of this package.
    """
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
