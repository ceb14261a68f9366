"""Admission and flow control: how much work is in the pipeline, readable from any thread.

- :class:`QueueGauge` decides whether a publish may enter the batch queue
  (``batch.max_queue``); the façade asks it, the debouncer and the batcher keep it current.
- :class:`Backlog` counts updates told to the debouncer that it has not taken in yet; the
  server slows publishers down while it is high.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Backlog", "QueueGauge", "QueueGaugeStatistics"]


@dataclass(frozen=True)
class QueueGaugeStatistics:
    """A snapshot of a :class:`QueueGauge`.

    Attributes:
        max_queue: ``batch.max_queue``.
        depth: updates queued in the batcher now.
        in_transit: updates sent towards the batcher and not yet received by it.
        admitted / rejected: updates :meth:`QueueGauge.admit` accepted / refused.
    """

    max_queue: int
    depth: int
    in_transit: int
    admitted: int
    rejected: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class QueueGauge:
    """Thread-safe admission control for the batch queue, shared by façade and batcher.

    The batcher keeps :attr:`depth` (its queue length) current. Whoever sends the batcher
    an :class:`Enqueue` may also call :meth:`sent` (the batcher calls :meth:`received`
    when it takes it), so updates still in the batcher's inbox count against the limit
    too; without :meth:`sent`, ``in_transit`` simply stays 0. The gauge is advisory: it
    reserves nothing, so concurrent admissions may overshoot ``max_queue`` by what is in
    flight — the batcher accepts those anyway (nothing accepted is dropped).

    Args:
        max_queue: ``batch.max_queue``.
    """

    def __init__(self, max_queue: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._max_queue = max_queue
        self._depth = 0
        self._in_transit = 0
        self._admitted = 0
        self._rejected = 0

    @property
    def max_queue(self) -> int:
        """``batch.max_queue``; assigning it is the same as :meth:`set_max_queue`."""
        return self._max_queue

    @max_queue.setter
    def max_queue(self, value: int) -> None:
        self.set_max_queue(value)

    @property
    def depth(self) -> int:
        """Updates queued in the batcher now."""
        return self._depth

    @property
    def rejected(self) -> int:
        """Updates refused by :meth:`admit` so far."""
        return self._rejected

    def admit(self, n: int = 1) -> bool:
        """Decide whether ``n`` more updates may be accepted.

        Refused (and counted in :attr:`rejected`) when ``depth + in_transit + n`` would
        exceed ``max_queue`` — for one update: when the queue is already full. The caller
        then tells the publisher (``QueueFullError``); nothing is dropped silently.
        """
        with self._lock:
            if self._depth + self._in_transit + n > self._max_queue:
                self._rejected += n
                return False
            self._admitted += n
            return True

    def admit_up_to(self, n: int) -> int:
        """Admit as many of ``n`` updates as fit (all, or up to the limit); return how many.

        The refused rest is counted in :attr:`rejected`. One lock for a whole read's worth
        of publishes.
        """
        with self._lock:
            room = self._max_queue - self._depth - self._in_transit
            take = n if room >= n else max(0, room)
            self._admitted += take
            self._rejected += n - take
            return take

    def set_depth(self, depth: int) -> None:
        """Batcher only: record the queue length now."""
        self._depth = depth

    def set_max_queue(self, max_queue: int) -> None:
        """Apply a new ``batch.max_queue``."""
        with self._lock:
            self._max_queue = max_queue

    def sent(self, n: int) -> None:
        """``n`` updates were sent towards the batcher (an :class:`Enqueue` told)."""
        with self._lock:
            self._in_transit += n

    def received(self, n: int) -> None:
        """Batcher only: ``n`` updates arrived (never goes below zero)."""
        with self._lock:
            self._in_transit = max(0, self._in_transit - n)

    def statistics(self) -> QueueGaugeStatistics:
        """Return an immutable snapshot."""
        with self._lock:
            return QueueGaugeStatistics(
                max_queue=self._max_queue,
                depth=self._depth,
                in_transit=self._in_transit,
                admitted=self._admitted,
                rejected=self._rejected,
            )


# -- the debouncer's intake ---------------------------------------------------------------


class Backlog:
    """Updates told to the debouncer that it has not taken in yet (thread-safe).

    The façade adds what it sends; the debouncer subtracts what it absorbs. The server reads
    :attr:`value` to slow publishers down (it stops reading their sockets) while the
    debouncer is behind, so its inbox stays bounded without refusing anything.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0
        self.next_deadline: float | None = None
        """The debouncer's armed timer (clock time), or None: lets the server tell that a
        deadline has passed without being served, and hold publishers back meanwhile."""

    @property
    def value(self) -> int:
        return self._value

    def add(self, n: int) -> None:
        with self._lock:
            self._value += n

    def sub(self, n: int) -> None:
        with self._lock:
            self._value = max(0, self._value - n)
