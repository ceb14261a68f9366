"""The NATS engine (``daemon.yaml`` ``engine: {kind: nats}``): modcoord spread over a NATS
cluster (docs/SCALING.md). Imported only when that engine is chosen: the local daemon and
the client never import nats-py."""

from modcoord.supervisor.daemon.nats.engine import NatsEngine

__all__ = ["NatsEngine"]
