"""The names the NATS engine shares across daemons: subjects, the stream, the buckets,
the consumer names and the wire structs of the messages. Every daemon of a cluster must
agree on them, so they live here and nowhere else.

Subjects:
    ``modcoord.upd.<p>.<instance>``: an agent's updates of partition ``p`` (the stream).
    ``modcoord.dlv.<instance>``: batches an owner delivers to that daemon's agent (request).
    ``modcoord.ctl.mode``: a mode switch, answered by every agent (request, many replies).
    ``modcoord.coord.<mode>``: a coordination scatter-gather (request, many replies).
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "BUCKET_CACHE_PREFIX",
    "BUCKET_LEASES",
    "BUCKET_LOCKS",
    "BUCKET_MEMBERS",
    "BUCKET_STATE",
    "CONTROL_MODE",
    "STREAM",
    "STREAM_SUBJECTS",
    "DeliveredUpdate",
    "Delivery",
    "StoredUpdate",
    "UpdateMessage",
    "consumer_name",
    "coord_subject",
    "delivery_subject",
    "partition_filter",
    "update_subject",
]

STREAM = "MODCOORD_UPD"
"""The JetStream stream of updates (WorkQueue retention: an acked message is gone)."""
STREAM_SUBJECTS = "modcoord.upd.>"
BUCKET_LEASES = "MODCOORD_LEASES"
"""KV: partition leases, key ``p.<n>``."""
BUCKET_MEMBERS = "MODCOORD_MEMBERS"
"""KV: instance heartbeats, key ``inst.<instance_id>``."""
BUCKET_STATE = "MODCOORD_STATE"
"""KV: cluster-wide state (key ``mode``)."""
BUCKET_LOCKS = "MODCOORD_LOCKS"
"""KV: short-lived locks (a cache miss computed once cluster-wide)."""
BUCKET_CACHE_PREFIX = "MODCOORD_CACHE_"
"""KV: one coordination cache bucket per mode (``MODCOORD_CACHE_<MODE>``)."""
CONTROL_MODE = "modcoord.ctl.mode"


def update_subject(partition: int, instance_id: str) -> str:
    """The subject an agent publishes partition ``partition``'s updates on."""
    return f"modcoord.upd.{partition}.{instance_id}"


def partition_filter(partition: int) -> str:
    """The filter subject of partition ``partition``'s consumer."""
    return f"modcoord.upd.{partition}.>"


def consumer_name(partition: int) -> str:
    """The durable consumer of partition ``partition`` (created by its first owner)."""
    return f"mc-p{partition}"


def delivery_subject(instance_id: str) -> str:
    """The subject an owner sends batches for ``instance_id``'s modules to."""
    return f"modcoord.dlv.{instance_id}"


def coord_subject(mode: str) -> str:
    """The scatter-gather subject of a coordination in ``mode``."""
    return f"modcoord.coord.{mode}"


class StoredUpdate(msgspec.Struct, array_like=True, frozen=True):
    """One update as an agent stores it in the stream (folded: the latest of its key).

    Attributes:
        module_id, key, payload, priority: as published.
        agent_seq: the agent's own increasing number (drops a late older copy).
        published_unix: wall-clock time of acceptance (publish-to-delivery latency).
    """

    module_id: str
    key: str
    payload: Any
    priority: str
    agent_seq: int
    published_unix: float


class UpdateMessage(msgspec.Struct, array_like=True, frozen=True):
    """One stream message: one agent flush of one partition."""

    instance_id: str
    updates: tuple[StoredUpdate, ...]


class DeliveredUpdate(msgspec.Struct, array_like=True, frozen=True):
    """One update of a delivered batch; ``seq`` is the stream sequence of the message that
    carried it (increasing per key: a subscriber drops an update whose ``seq`` is not
    newer than the last it saw for that key, a redelivered duplicate)."""

    module_id: str
    key: str
    payload: Any
    priority: str
    seq: int
    published_unix: float


class Delivery(msgspec.Struct, array_like=True, frozen=True):
    """A batch an owner sends to an agent (``delivery_subject``)."""

    owner: str
    batch_id: int
    reason: str
    updates: tuple[DeliveredUpdate, ...]
