"""The ``engine`` part of the status document as Prometheus samples: the cluster as this
daemon sees it (the NATS engine; the local engine's ``{"kind": "local"}`` gives none).

:data:`ENGINE_FAMILIES` declares the ``modcoord_engine_*`` families (``(name, type, unit,
labels, help)``; :data:`~modcoord.supervisor.daemon.exposition.METRICS` takes them in,
docs/REFERENCE.md lists them). Labels are bounded: ``connection`` is ``data`` or
``control``; ``partition`` is one of this daemon's owned partitions, fewer than
``engine.partitions`` (at most 4096). Missing or malformed values are left out, never
guessed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ENGINE_FAMILIES", "engine_families"]

Add = Callable[..., None]
"""``add(family, value, *label_values)``: a non-numeric value is left out."""

ENGINE_FAMILIES: tuple[tuple[str, Any, str, tuple[str, ...], str], ...] = (
    ("modcoord_engine_connected", "gauge", "", ("connection",),
     "1 while this daemon's NATS connection (data, control) is up, else 0."),
    ("modcoord_engine_reconnects_total", "counter", "", ("connection",),
     "Times the NATS connection came back after a loss."),
    ("modcoord_engine_instances", "gauge", "", (),
     "Live daemons of the cluster, as this one sees them (itself included)."),
    ("modcoord_engine_partitions", "gauge", "", (), "engine.partitions."),
    ("modcoord_engine_partitions_owned", "gauge", "", (),
     "Partitions this daemon owns now."),
    ("modcoord_engine_partitions_unowned", "gauge", "", (),
     "Partitions no daemon holds, as this one last read their leases."),
    ("modcoord_engine_partition_pending", "gauge", "", ("partition",),
     "Stream messages of an owned partition not yet fetched by this daemon."),
    ("modcoord_engine_partition_ack_pending", "gauge", "", ("partition",),
     "Stream messages of an owned partition fetched and not yet acknowledged (held "
     "until their batch was delivered)."),
    ("modcoord_engine_agent_buffered", "gauge", "", (),
     "Updates accepted by this daemon and not yet acknowledged by JetStream."),
    ("modcoord_engine_agent_max_buffered", "gauge", "", (), "engine.max_buffered."),
    ("modcoord_engine_agent_acked_total", "counter", "", (),
     "Updates JetStream acknowledged (folded ones included)."),
    ("modcoord_engine_agent_refused_total", "counter", "", (),
     "Publishes refused because the agent's buffer was full (QueueFullError)."),
    ("modcoord_engine_delivered_updates_total", "counter", "", (),
     "Updates of batches from any owner handed to this daemon's modules."),
)


def _count(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _sequence_len(value: Any) -> int | None:
    return len(value) if isinstance(value, (list, tuple)) else None


def engine_families(add: Add, engine: Mapping[str, Any]) -> None:
    """Add the cluster samples of ``engine`` (the status document's field) through
    ``add``; nothing unless ``engine.kind`` is ``nats``."""
    if engine.get("kind") != "nats":
        return
    connections = engine.get("connections")
    if isinstance(connections, Mapping):
        for name in ("data", "control"):
            c = connections.get(name)
            if isinstance(c, Mapping):
                if isinstance(c.get("connected"), bool):
                    add("modcoord_engine_connected", c["connected"], name)
                add("modcoord_engine_reconnects_total", _count(c.get("reconnects")), name)
    add("modcoord_engine_instances", _sequence_len(engine.get("instances")))
    partitions = engine.get("partitions")
    if isinstance(partitions, Mapping):
        add("modcoord_engine_partitions", _count(partitions.get("total")))
        add("modcoord_engine_partitions_owned", _sequence_len(partitions.get("owned")))
        add("modcoord_engine_partitions_unowned", _sequence_len(partitions.get("unowned")))
    lag = engine.get("lag")
    if isinstance(lag, Mapping):
        for p in sorted((k for k in lag if str(k).isdigit()), key=int):
            entry = lag[p]
            if isinstance(entry, Mapping):
                add("modcoord_engine_partition_pending", _count(entry.get("pending")), str(p))
                add("modcoord_engine_partition_ack_pending", _count(entry.get("ack_pending")),
                    str(p))
    agent = engine.get("agent")
    if isinstance(agent, Mapping):
        add("modcoord_engine_agent_buffered", _count(agent.get("buffered")))
        add("modcoord_engine_agent_max_buffered", _count(agent.get("max_buffered")))
        add("modcoord_engine_agent_acked_total", _count(agent.get("acked")))
        add("modcoord_engine_agent_refused_total", _count(agent.get("refused")))
    deliveries = engine.get("deliveries")
    if isinstance(deliveries, Mapping):
        add("modcoord_engine_delivered_updates_total", _count(deliveries.get("updates")))
