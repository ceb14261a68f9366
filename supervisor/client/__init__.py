"""The client library that module processes import: ``connect()`` and what it returns.

It imports only the protocol (never the daemon, pykka, pydantic, loguru or PyYAML, nor
msgspec, asyncio, logging or dataclasses), so a module process pays for the socket,
msgpack and the futures, nothing more. What only some clients use is imported on first
use: :mod:`.results` (dataclasses) with the first ``coordinate`` result or
``statistics()`` (or the first use of its names here), the batch types with the first
batch, asyncio when a future is first awaited, :mod:`logging` with the first log record.
Its logs go to the standard :mod:`logging` logger ``modcoord.client``.

- :mod:`.api`: :func:`connect`, :class:`Client` (one method per call), :class:`ActorProxy`.
- :mod:`.future`: :class:`Future`, the eventual answer of a call.
- :mod:`.connection`: the socket's lifecycle, the reader thread, reconnecting and the
  hello; built on :mod:`._sending` (the state, the buffered writes, the writer thread,
  losing a stream) and :mod:`._reading` (the reading token (leader/follower), the
  reader's loop, decoding).
- :mod:`.callbacks`: the callback thread (``on_batch``, ``on_mode_change``,
  ``get_performance_metrics``, ``swept`` events); :mod:`._rows`: a large batch's updates
  kept in wire form until the module looks at them.
- :mod:`.registry`: the module objects a client hosts.
- :mod:`.results`: :class:`CoordinationResult`, :class:`ClientStatistics`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modcoord.supervisor.client.api import ActorProxy, Client, connect
from modcoord.supervisor.client.future import Future

if TYPE_CHECKING:
    from modcoord.supervisor.client.results import ClientStatistics, CoordinationResult

__all__ = [
    "ActorProxy",
    "Client",
    "ClientStatistics",
    "CoordinationResult",
    "Future",
    "connect",
]

_RESULT_NAMES = frozenset({"ClientStatistics", "CoordinationResult"})


def __getattr__(name: str) -> Any:
    """Import :mod:`.results` on first use of one of its names (PEP 562).

    Raises:
        AttributeError: not a name of this package.
    """
    if name not in _RESULT_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from modcoord.supervisor.client import results

    value = getattr(results, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
