"""The NATS engine (``daemon.yaml`` ``engine: {kind: nats}``): modcoord across hosts
(docs/SCALING.md).

Imported only when the engine is ``nats``: the local daemon and the client never import
nats-py. The pure logic (partitions, membership, the lease state machine) does no I/O and is
tested with the fake clock; the runtime modules drive it over NATS.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NatsEngine"]


def __getattr__(name: str) -> Any:
    # Lazy: the pure modules (partitions, used by the config's validation) import without
    # nats-py; only the engine needs it.
    if name == "NatsEngine":
        from modcoord.supervisor.daemon.nats.engine import NatsEngine

        return NatsEngine
    raise AttributeError(name)
