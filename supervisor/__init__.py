"""modcoord's supervisor, daemon and client side.

Modules use :func:`connect`; everything modcoord raises derives from
:class:`ModcoordError`. Importing this package loads the errors, and the client when one
of its names is first used; never the daemon or the supervisor actor, nor pykka,
pydantic, loguru or PyYAML. The daemon is :mod:`modcoord.supervisor.daemon`, the
supervisor actor :mod:`modcoord.supervisor.supervisor`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
from modcoord.supervisor.protocol.errors import ProtocolVersionError

if TYPE_CHECKING:
    from modcoord.supervisor.client import Client, CoordinationResult, Future, connect

# The client is loaded on first use (PEP 562): the CLI imports this package without it
# for the commands that do not talk to the daemon.
_CLIENT_NAMES = frozenset({"Client", "CoordinationResult", "Future", "connect"})

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


def __getattr__(name: str) -> Any:
    """Import the client on first use of one of its names.

    Raises:
        AttributeError: not a name of this package.
    """
    if name not in _CLIENT_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module("modcoord.supervisor.client"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
