"""The NATS engine (``daemon.yaml`` ``engine: {kind: nats}``): modcoord across hosts
(docs/SCALING.md).

Imported only when the engine is ``nats``: the local daemon and the client never import
nats-py. The pure logic (partitions, membership, the lease state machine) does no I/O and is
tested with the fake clock; the runtime modules drive it over NATS.
"""

from __future__ import annotations

from modcoord.supervisor.daemon.nats.engine import NatsEngine

__all__ = ["NatsEngine"]
