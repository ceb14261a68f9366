"""modcoord's subsystem actors: debouncer, cache, batcher, memory manager and monitor.

Each actor lives in its own module beside the messages it accepts. They share the
machinery in :mod:`modcoord.actors._base` (stable handles, crash containment, dispatch)
and read time from an injectable :mod:`~modcoord.actors.clock`.
"""

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
