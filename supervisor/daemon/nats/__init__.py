"""The NATS engine (``daemon.yaml`` ``engine: {kind: nats}``): modcoord across hosts.

Imported only when the engine is ``nats``: the local daemon and the client never import
nats-py. The pure logic (partitions, membership, the lease state machine) does no I/O and is
tested with the fake clock; the runtime modules drive it over NATS.
"""

from __future__ import annotations

__all__: list[str] = []
