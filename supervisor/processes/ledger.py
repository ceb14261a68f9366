"""The ledger: accepted updates held in the daemon while an actor process has them.

Why a ledger in the parent (and not shared memory or a journal): the daemon is the one
process that outlives its actor processes, and every update already passes through it on
the way in (intake) and on the way out (delivery), so holding a reference to the update
costs one dict entry and no copy; shared memory would need a second serialisation and an
allocator that survives a child killed mid-write, a journal a disk write per publish.

Rules:

- :meth:`record` is called when updates are handed to an out-of-process actor; per
  ``(module_id, key)`` only the newest seq is kept — the debouncer's own rule (latest
  wins), so an older update of a key is superseded here exactly when it would be there.
- :meth:`release` is called when the batcher has sent updates to every subscriber
  (``settled``): an entry goes when an update of its key with the same or a newer seq has
  been sent. :meth:`cancel` drops a key (an explicit ``cancel``).
- :meth:`replay` returns what is held, in seq order, for the successor of a killed actor
  process: delivery is at least once (an update sent just before the kill may be sent
  again), and per key the order holds (only the newest of a key is held).

Thread-safe: the I/O thread records, the channels' reader threads release.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from modcoord.actors.update import Update

__all__ = ["LedgerStatistics", "UpdateLedger", "updates_in"]

_HANDOVER_DEPTH = 4
"""How deep :func:`updates_in` looks into a handover (entries of tuples of updates)."""


def updates_in(value: Any, depth: int = _HANDOVER_DEPTH) -> Iterator[Update]:
    """Every :class:`Update` inside a handover (its dataclass fields, tuples, lists)."""
    if isinstance(value, Update):
        yield value
    elif depth <= 0 or value is None or isinstance(value, (str, bytes, int, float)):
        return
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from updates_in(item, depth - 1)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from updates_in(getattr(value, f.name), depth - 1)


@dataclass(frozen=True)
class LedgerStatistics:
    """A snapshot: ``held`` now, and ``recorded``/``released``/``replayed`` so far."""

    held: int
    recorded: int
    released: int
    replayed: int


class UpdateLedger:
    """Accepted updates not yet sent by the batcher, newest per key (module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], Update] = {}
        self._recorded = 0
        self._released = 0
        self._replayed = 0

    def __len__(self) -> int:
        return len(self._held)

    def record(self, updates: Iterable[Update]) -> None:
        """Hold ``updates`` (newest seq per key wins)."""
        with self._lock:
            held = self._held
            n = 0
            for u in updates:
                key = (u.module_id, u.key)
                old = held.get(key)
                if old is None or old.seq <= u.seq:
                    held[key] = u
                n += 1
            self._recorded += n

    def release(self, sent: Iterable[tuple[str, str, int]]) -> int:
        """``(module_id, key, seq)`` were sent to every subscriber: drop the entries they
        cover (same key, seq not newer). Returns how many entries went."""
        if not self._held:
            return 0
        gone = 0
        with self._lock:
            held = self._held
            for module_id, key, seq in sent:
                k = (module_id, key)
                u = held.get(k)
                if u is not None and u.seq <= seq:
                    del held[k]
                    gone += 1
            self._released += gone
        return gone

    def release_updates(self, updates: Iterable[Update]) -> None:
        """:meth:`release` for updates themselves (a batcher in the daemon settled them)."""
        if self._held:
            self.release((u.module_id, u.key, u.seq) for u in updates)

    def cancel(self, module_id: str, key: str) -> bool:
        """Drop ``(module_id, key)`` (an explicit cancel). Returns whether one was held."""
        with self._lock:
            return self._held.pop((module_id, key), None) is not None

    def replay(self) -> tuple[Update, ...]:
        """What is held, in seq order (kept held until released)."""
        with self._lock:
            out = sorted(self._held.values(), key=lambda u: u.seq)
            self._replayed += len(out)
            return tuple(out)

    def statistics(self) -> LedgerStatistics:
        with self._lock:
            return LedgerStatistics(len(self._held), self._recorded, self._released,
                                    self._replayed)
