"""The data that flows through modcoord: updates, priorities and batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from modcoord.actors.message import Message

__all__ = ["PRIORITIES", "PRIORITY_RANK", "Batch", "Priority", "Update", "updates_from_rows"]

Priority = Literal["critical", "high", "medium", "low"]
PRIORITIES: tuple[str, ...] = ("critical", "high", "medium", "low")
PRIORITY_RANK: dict[str, int] = {p: i for i, p in enumerate(PRIORITIES)}  # lower is sooner


@dataclass(frozen=True, slots=True)
class Update(Message):
    """One published update.

    Attributes:
        module_id: the publishing module.
        key: what the update is about; debouncing is per ``(module_id, key)``.
        payload: any msgpack-serializable value; inside the daemon, from intake to
            delivery, its encoding (a :data:`~modcoord.actors.payload.WirePayload`).
        priority: ``critical``, ``high``, ``medium`` or ``low``.
        seq: arrival sequence number in the daemon (orders updates; not a timestamp).
        published_at: clock reading when the daemon accepted it (for latency).
    """

    module_id: str
    key: str
    payload: Any
    priority: str = "medium"
    seq: int = 0
    published_at: float = 0.0

    @property
    def dedup_key(self) -> tuple[str, str]:
        return (self.module_id, self.key)


@dataclass(frozen=True, slots=True)
class Batch(Message):
    """A delivery: updates ordered by priority, grouped by source module within a priority.

    Attributes:
        batch_id: increasing per batcher.
        updates: the updates, ordered by priority (critical first); within one priority,
            grouped by source module (modules in order of their first update), and each
            module's updates in arrival (``seq``) order.
        reason: why it went out: ``window``, ``size``, ``critical``, ``flush``,
            ``unbatched``.
        wire: the updates already in a subscriber's wire form, when they crossed from an
            actor process that way: the msgpack array of ``[module_id, key, payload,
            priority, seq]`` rows that a batch event carries, so that delivering to a
            module connection splices it instead of encoding ``updates`` again (which
            are then decoded only if something looks at them). ``None`` otherwise. Not
            compared: it is another form of ``updates``.
    """

    batch_id: int
    updates: Sequence[Update]
    reason: str = "window"
    wire: bytes | None = field(default=None, compare=False)

    @property
    def by_module(self) -> dict[str, list[Update]]:
        """The updates grouped by source module, each group in batch order."""
        out: dict[str, list[Update]] = {}
        for u in self.updates:
            out.setdefault(u.module_id, []).append(u)
        return out

    def __len__(self) -> int:
        return len(self.updates)


_new = object.__new__
_slots: dict[str, Any] = dict(Update.__dict__)  # the fields' slot descriptors
_set_module_id = _slots["module_id"].__set__
_set_key = _slots["key"].__set__
_set_payload = _slots["payload"].__set__
_set_priority = _slots["priority"].__set__
_set_seq = _slots["seq"].__set__
_set_published_at = _slots["published_at"].__set__


def updates_from_rows(rows: Any, published_at: Sequence[float] = ()) -> tuple[Update, ...]:
    """The updates of a delivery's rows ``[module_id, key, payload, priority, seq]``, as
    ``Update(*row)`` makes them (``published_at`` from ``published_at`` by position,
    else 0.0), at twice its speed: a frozen dataclass's ``__init__`` sets each field
    through ``object.__setattr__``; this sets the slots directly (a module process builds
    one per delivered update).

    Raises:
        IndexError, TypeError: a row is not a sequence of at least five values.
    """
    out: list[Update] = []
    append = out.append
    for row in rows:
        u = _new(Update)
        _set_module_id(u, row[0])
        _set_key(u, row[1])
        _set_payload(u, row[2])
        _set_priority(u, row[3])
        _set_seq(u, row[4])
        _set_published_at(u, 0.0)
        append(u)
    for u, at in zip(out, published_at, strict=False):  # none for a module's delivery
        _set_published_at(u, at)
    return tuple(out)
