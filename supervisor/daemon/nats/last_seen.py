"""The owner's memory of the newest stream sequence taken in per key (:class:`LastSeen`).

A redelivered update older than one already taken in for its key is stale; this table
says which. It is bounded two ways: the owner forgets, per partition, the keys at or below
the consumer's ack floor (:meth:`LastSeen.forget_through`: none of those messages can be
delivered again), and beyond :data:`MAX_LAST_SEEN` keys the oldest are forgotten anyway
(:attr:`LastSeen.evicted`; a late redelivery of one of those is delivered again, a
duplicate, never a loss).
"""

from __future__ import annotations

__all__ = ["MAX_LAST_SEEN", "LastSeen"]

MAX_LAST_SEEN = 250_000
"""Keys whose newest stream sequence the owner remembers, at most (measured: 260 bytes a
key of 15 characters, so about 65 MB full); beyond it the oldest are forgotten, counted
and logged (see the module docstring)."""


class LastSeen:
    """The newest stream sequence taken in per key, per partition (loop only).

    Each partition's table is kept in the order keys were last taken in (nearly stream
    order: fetches come in sequence order, redeliveries excepted), so forgetting below an
    ack floor pops from the front and stops at the first newer key: it costs what it
    forgets, and never forgets a key above the floor.

    Args:
        limit: keys remembered at most, over all partitions (then the oldest of the
            partition being written go first; see :attr:`evicted`).
    """

    def __init__(self, limit: int = MAX_LAST_SEEN) -> None:
        if limit < 1:
            raise ValueError(f"LastSeen limit must be at least 1, not {limit}")
        self.limit = limit
        self._tables: dict[int, dict[tuple[str, str], int]] = {}
        self._size = 0
        self.forgotten = 0
        """Keys forgotten because their newest sequence was at or below the ack floor."""
        self.evicted = 0
        """Keys forgotten above the floor because of :attr:`limit`."""

    def __len__(self) -> int:
        return self._size

    def partitions(self) -> list[int]:
        """The partitions with remembered keys."""
        return sorted(self._tables)

    def take(self, p: int, key: tuple[str, str], seq: int) -> bool:
        """Whether an update of ``key`` at stream sequence ``seq`` is current (not older
        than the newest taken in). A current one is remembered, moved to the end of its
        partition's order; beyond :attr:`limit` that forgets the oldest key of ``p`` (of
        another partition if ``key`` is ``p``'s only one), counted in :attr:`evicted`."""
        table = self._tables.setdefault(p, {})
        last = table.get(key)
        if last is not None:
            if last > seq:
                return False  # stale: the key stays where it is
            del table[key]
        else:
            self._size += 1
        table[key] = seq
        while self._size > self.limit:
            # The oldest of this partition; if it has only this key, another partition's.
            q = p if len(table) > 1 else next(q for q, t in self._tables.items() if q != p)
            victim = self._tables[q]
            del victim[next(iter(victim))]
            if not victim:
                del self._tables[q]
            self._size -= 1
            self.evicted += 1
        return True

    def forget_through(self, p: int, floor: int) -> int:
        """Forget ``p``'s keys whose newest sequence is at or below ``floor`` (from the
        front, see the class docstring); how many went."""
        table = self._tables.get(p)
        if table is None:
            return 0
        gone = 0
        while table:
            key = next(iter(table))
            if table[key] > floor:
                break
            del table[key]
            gone += 1
        if not table:
            del self._tables[p]
        self._size -= gone
        self.forgotten += gone
        return gone
