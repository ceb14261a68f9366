"""The actor-message table: which actor message each actor call of the protocol sends, and
how an actor's reply goes back on the wire.

Rules: :data:`ACTOR_MESSAGES` covers exactly the actor methods of the protocol's
:data:`~modcoord.supervisor.protocol.calls.ACTOR_CALLS`, each message's fields being exactly
the method's params; the protocol validates the arguments, this table only maps them.
:func:`plain` turns a reply into plain data (snapshots to dicts).

On failure: a table that disagrees with ``ACTOR_CALLS`` (a method on one side only, or a
renamed parameter) raises :class:`RuntimeError` at import, naming the difference, so the
daemon never starts with a call it cannot route.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from modcoord.actors._base import Statistics
from modcoord.actors.batcher import FlushBatches, QueueDepth
from modcoord.actors.cache import Clear, Purge, Shrink
from modcoord.actors.debouncer import Cancel, Flush, Pending
from modcoord.actors.memory import ForceCleanup
from modcoord.actors.message import Message
from modcoord.actors.monitor import Latencies, Trim
from modcoord.supervisor.protocol.calls import ACTOR_CALLS

__all__ = ["ACTOR_MESSAGES", "checked", "plain"]


def checked(messages: dict[tuple[str, str], type[Message]]
            ) -> dict[tuple[str, str], type[Message]]:
    """``messages`` if it covers exactly the protocol's actor methods, each message's
    fields being exactly the method's params (checked at import).

    Raises:
        RuntimeError: the two tables disagree (a method added on one side only, or a
            parameter renamed), naming the difference.
    """
    declared = {(actor, name): decl for actor, methods in ACTOR_CALLS.items()
                for name, decl in methods.items()}
    if set(messages) != set(declared):
        raise RuntimeError(
            "the coordinator's actor messages and the protocol's ACTOR_CALLS disagree: "
            f"only in ACTOR_CALLS {sorted(set(declared) - set(messages))}, only in the "
            f"coordinator {sorted(set(messages) - set(declared))}")
    for where, message in messages.items():
        fields = (tuple(f.name for f in dataclasses.fields(message))
                  if dataclasses.is_dataclass(message) else None)
        params = declared[where].params.__struct_fields__
        if fields != params:
            raise RuntimeError(f"{'.'.join(where)}: message {message.__name__} takes "
                               f"{fields}, ACTOR_CALLS declares {params}")
    return messages


# The message each actor method of the protocol's table sends, built from the method's
# bound and validated params (the protocol validates, this only maps).
ACTOR_MESSAGES: dict[tuple[str, str], type[Message]] = checked({
    ("debouncer", "statistics"): Statistics,
    ("debouncer", "flush"): Flush,
    ("debouncer", "cancel"): Cancel,
    ("debouncer", "pending"): Pending,
    ("cache", "statistics"): Statistics,
    ("cache", "clear"): Clear,
    ("cache", "purge"): Purge,
    ("cache", "shrink"): Shrink,
    ("batcher", "statistics"): Statistics,
    ("batcher", "flush"): FlushBatches,
    ("batcher", "queue_depth"): QueueDepth,
    ("memory", "statistics"): Statistics,
    ("memory", "force_cleanup"): ForceCleanup,
    ("monitor", "statistics"): Statistics,
    ("monitor", "latencies"): Latencies,
    ("monitor", "trim"): Trim,
})


def plain(value: Any) -> Any:
    """Make an actor reply wire-friendly (snapshots → dicts)."""
    as_dict = getattr(value, "as_dict", None)
    if callable(as_dict):
        return as_dict()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
