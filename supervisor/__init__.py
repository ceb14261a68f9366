"""modcoord's supervisor, daemon and client side.

Modules use :func:`connect`; everything modcoord raises derives from
:class:`ModcoordError`.
"""

from modcoord.actors.errors import (
    ActorCrashedError,
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
from modcoord.supervisor.client import Client, CoordinationResult, Future, connect

__all__ = [
    "ActorCrashedError",
    "ActorStoppedError",
    "CallTimeoutError",
    "Client",
    "ConfigError",
    "ConnectionLostError",
    "CoordinationResult",
    "Future",
    "InvalidMessageError",
    "ModcoordError",
    "NotRunningError",
    "QueueFullError",
    "RemoteError",
    "connect",
]
