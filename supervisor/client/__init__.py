"""The client library that module processes import: ``connect()`` and what it returns.

It imports only the protocol (never the daemon, pykka, pydantic, loguru or PyYAML), so a
module process pays for the socket, msgpack and the futures, nothing more. Its logs go to
the standard :mod:`logging` logger ``modcoord.client``.

- :mod:`.api`: :func:`connect`, :class:`Client` (one method per call), :class:`ActorProxy`.
- :mod:`.future`: :class:`Future`, the eventual answer of a call.
- :mod:`.connection`: the socket, the buffered writes, the reading token
  (leader/follower), the reader and writer threads, reconnecting and the hello.
- :mod:`.callbacks`: the callback thread (``on_batch``, ``on_mode_change``,
  ``get_performance_metrics``, ``swept`` events).
- :mod:`.registry`: the module objects a client hosts.
- :mod:`.results`: :class:`CoordinationResult`, :class:`ClientStatistics`.
"""

from modcoord.supervisor.client.api import ActorProxy, Client, connect
from modcoord.supervisor.client.future import Future
from modcoord.supervisor.client.results import ClientStatistics, CoordinationResult

__all__ = [
    "ActorProxy",
    "Client",
    "ClientStatistics",
    "CoordinationResult",
    "Future",
    "connect",
]
