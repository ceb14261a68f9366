"""The client library that module processes import: ``connect()`` and what it returns.

It imports only the protocol (never the daemon), so a module process pays for the socket,
msgpack and the futures, nothing more.
"""

from modcoord.supervisor.client.client import (
    ActorProxy,
    Client,
    ClientStatistics,
    CoordinationResult,
    Future,
    connect,
)

__all__ = [
    "ActorProxy",
    "Client",
    "ClientStatistics",
    "CoordinationResult",
    "Future",
    "connect",
]
