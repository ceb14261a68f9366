"""The data that flows through modcoord: updates, priorities and batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from modcoord.actors.message import Message

__all__ = ["PRIORITIES", "PRIORITY_RANK", "Batch", "Priority", "Update"]

Priority = Literal["critical", "high", "medium", "low"]
PRIORITIES: tuple[str, ...] = ("critical", "high", "medium", "low")
PRIORITY_RANK: dict[str, int] = {p: i for i, p in enumerate(PRIORITIES)}  # lower is sooner


@dataclass(frozen=True, slots=True)
class Update(Message):
    """One published update.

    Attributes:
        module_id: the publishing module.
        key: what the update is about; debouncing is per ``(module_id, key)``.
        payload: any msgpack-serializable value.
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
    """

    batch_id: int
    updates: tuple[Update, ...]
    reason: str = "window"

    @property
    def by_module(self) -> dict[str, list[Update]]:
        """The updates grouped by source module, each group in batch order."""
        out: dict[str, list[Update]] = {}
        for u in self.updates:
            out.setdefault(u.module_id, []).append(u)
        return out

    def __len__(self) -> int:
        return len(self.updates)
