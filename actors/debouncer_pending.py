"""The debouncer's pending keys: one :class:`Slot` per ``(module_id, key)`` and the heap that
orders their deadlines (:class:`PendingTable`).

The rules: a key has at most one slot; its ``update`` is the latest payload and its
``rank`` the highest priority seen among the publishes it collapsed. The heap holds
``(deadline, counter, key)`` items and is invalidated lazily: an item is live only while
its ``counter`` is the slot's current ``seq``; a stale one (superseded, flushed or
cancelled) is skipped when it comes up. A slot whose deadline was pushed out keeps its old
item; when that comes up early it is pushed again at the real deadline. The actor
(:mod:`modcoord.actors.debouncer`) owns the table, arms the one clock timer for
:meth:`PendingTable.earliest`, and rebuilds the heap when stale items pile up.

Nothing here raises on the table's content; the heap's consistency is kept by the
rebuild (a live key with no live item, which cannot happen, is healed rather than left
stuck).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import operator

from modcoord.actors.update import PRIORITIES, PRIORITY_RANK, Update

__all__ = ["Key", "PendingTable", "Slot"]

Key = tuple[str, str]


class Slot:
    """Mutable per-key state; ``seq`` is the counter of its live heap item."""

    __slots__ = ("deadline", "first_at", "rank", "seq", "update")

    def __init__(self, update: Update, rank: int, first_at: float, deadline: float,
                 seq: int) -> None:
        self.update = update
        self.rank = rank
        self.first_at = first_at
        self.deadline = deadline
        self.seq = seq

    def final(self) -> Update:
        """The update to emit: the latest one, carrying the effective priority."""
        update = self.update
        if PRIORITY_RANK[update.priority] != self.rank:
            update = dataclasses.replace(update, priority=PRIORITIES[self.rank])
        return update


class PendingTable:
    """The pending keys (``entries``: key → :class:`Slot`) and their deadline heap.

    ``entries`` and ``counter`` are never replaced; ``heap`` is replaced by
    :meth:`rebuild`, so a caller holding it as a local re-reads it after a rebuild.
    """

    __slots__ = ("counter", "entries", "heap")

    def __init__(self) -> None:
        self.entries: dict[Key, Slot] = {}
        self.heap: list[tuple[float, int, Key]] = []
        self.counter = itertools.count()

    def collect_due(self, now: float, out: list[Update], late: list[float]) -> None:
        """Move every key due at ``now`` out of the pending set, in heap order."""
        heap = self.heap
        entries = self.entries
        pop = heapq.heappop
        push = heapq.heappush
        while heap and heap[0][0] <= now:
            _, seq, key = pop(heap)
            entry = entries.get(key)
            if entry is None or entry.seq != seq:
                continue  # stale item: superseded, flushed or cancelled
            if entry.deadline > now:  # its timer was restarted: reschedule lazily
                entry.seq = seq = next(self.counter)
                push(heap, (entry.deadline, seq, key))
                continue
            del entries[key]
            out.append(entry.final())
            late.append(now - entry.deadline)

    def rebuild(self) -> None:
        """Drop stale heap items: one live item per pending key."""
        self.heap = [(e.deadline, e.seq, k) for k, e in self.entries.items()]
        heapq.heapify(self.heap)

    def earliest(self) -> float | None:
        """The earliest live deadline (stale items on top are dropped), or ``None`` when
        nothing is pending (the heap is cleared then)."""
        entries = self.entries
        heap = self.heap
        if not entries:
            heap.clear()
            return None
        while heap:
            _, seq, key = heap[0]
            entry = entries.get(key)
            if entry is not None and entry.seq == seq:
                break
            heapq.heappop(heap)
        if not heap:  # cannot happen while entries exist; be safe rather than stuck
            self.rebuild()
        return self.heap[0][0]

    def take(self, module_id: str | None, key: str | None) -> list[Slot]:
        """Remove and return the matching slots in emission order (deadline, then
        arrival); see :class:`~modcoord.actors.debouncer.Flush` for what ``module_id`` and
        ``key`` select."""
        entries = self.entries
        if module_id is not None and key is not None:
            entry = entries.pop((module_id, key), None)
            selected = [] if entry is None else [entry]
        elif module_id is None and key is None:
            selected = list(entries.values())
            entries.clear()
        else:
            keys = [k for k in entries
                    if (module_id is None or k[0] == module_id) and (key is None or k[1] == key)]
            selected = [entries.pop(k) for k in keys]
        _to_emission_order(selected)
        return selected

    def ordered(self) -> list[Slot]:
        """The pending slots in emission order: deadline, then arrival."""
        slots = list(self.entries.values())
        _to_emission_order(slots)
        return slots


_seq_of = operator.attrgetter("seq")
_deadline_of = operator.attrgetter("deadline")


def _to_emission_order(slots: list[Slot]) -> None:
    """Sort ``slots`` in place by ``(deadline, seq)``: by ``seq``, then stably by
    ``deadline`` — the same order as the tuple key, at a tenth of its cost (a flush of
    every pending key sorts them all: 20,000 slots take 1 ms this way, 10 ms with tuples
    compared)."""
    slots.sort(key=_seq_of)
    slots.sort(key=_deadline_of)
