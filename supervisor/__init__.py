"""modcoord's supervisor, daemon and client side.

Modules use :func:`connect`; everything modcoord raises derives from
:class:`ModcoordError`. Importing this package loads the client and the errors only
(neither the daemon nor the supervisor actor, nor pykka, pydantic, loguru or PyYAML):
the daemon is :mod:`modcoord.supervisor.daemon`, the supervisor actor
:mod:`modcoord.supervisor.supervisor`.
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
from modcoord.supervisor.protocol.errors import ProtocolVersionError

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
    "ProtocolVersionError",
    "QueueFullError",
    "RemoteError",
    "connect",
]
