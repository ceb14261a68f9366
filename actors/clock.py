"""Clocks: where every actor reads time and schedules its timers.

Actors never call :func:`time.time` or :func:`time.monotonic` directly; they receive a
:class:`Clock`. Production uses :class:`MonotonicClock`, whose single scheduler thread runs
every timer of the process from one heap. Tests use :class:`MockClock` (after trio's
``MockClock``): time stands still until the test calls :meth:`MockClock.advance`, which runs
the timers that fall due, in deadline order, in the calling thread.

Timer callbacks must be quick and must not block: they normally just ``tell`` an actor.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Protocol

from loguru import logger

__all__ = ["Clock", "MockClock", "MonotonicClock", "TimerHandle"]


def _noop() -> None:
    pass


class TimerHandle:
    """A scheduled callback; :meth:`cancel` stops it from running (idempotent)."""

    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        """Cancel the timer. Does nothing if it already ran.

        The callback is released at once, so whatever it refers to is freed now rather
        than when the cancelled entry reaches the top of the scheduler's heap.
        """
        self.cancelled = True
        self.callback = _noop


class Clock(Protocol):
    """What actors need from time: a monotonic reading (seconds) and timers."""

    def monotonic(self) -> float:
        """Return the current monotonic time in seconds."""
        ...

    def call_at(self, deadline: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` once ``monotonic() >= deadline``."""
        ...


class _TimerHeap:
    """A heap of timers ordered by (deadline, insertion order)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._counter = itertools.count()

    def push(self, handle: TimerHandle) -> None:
        heapq.heappush(self._heap, (handle.deadline, next(self._counter), handle))

    def next_deadline(self) -> float | None:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> TimerHandle | None:
        while self._heap and self._heap[0][0] <= now:
            handle = heapq.heappop(self._heap)[2]
            if not handle.cancelled:
                return handle
        return None

    def __len__(self) -> int:
        return sum(1 for _, _, h in self._heap if not h.cancelled)


def _run_callback(handle: TimerHandle) -> None:
    try:
        handle.callback()
    except Exception:
        logger.opt(exception=True).error("timer callback failed")


class MonotonicClock:
    """The real clock: :func:`time.monotonic` plus one scheduler thread for all timers.

    The scheduler thread starts lazily on the first :meth:`call_at` and is a daemon
    thread, so it never keeps the process alive. :meth:`close` stops it; timers still
    pending then are dropped (their owners flush their own work on stop).
    """

    def __init__(self) -> None:
        self._timers = _TimerHeap()
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closed = False

    def monotonic(self) -> float:
        return time.monotonic()

    def call_at(self, deadline: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(deadline, callback)
        with self._cond:
            if self._closed:
                return handle
            self._timers.push(handle)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="modcoord-scheduler", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return handle

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` after ``delay`` seconds."""
        return self.call_at(time.monotonic() + delay, callback)

    def close(self) -> None:
        """Stop the scheduler thread. Further timers are accepted but never run."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    now = time.monotonic()
                    due = self._timers.pop_due(now)
                    if due is not None:
                        break
                    deadline = self._timers.next_deadline()
                    self._cond.wait(None if deadline is None else max(0.0, deadline - now))
            _run_callback(due)


class MockClock:
    """A clock that only moves when told to, for deterministic tests of timing logic.

    Example::

        clock = MockClock()
        clock.call_at(1.0, fired.set)
        clock.advance(0.5)   # nothing runs
        clock.advance(0.5)   # fired.set() runs now, in this thread
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._timers = _TimerHeap()
        self._lock = threading.RLock()

    def monotonic(self) -> float:
        return self._now

    def call_at(self, deadline: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(deadline, callback)
        with self._lock:
            self._timers.push(handle)
        return handle

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` after ``delay`` seconds of mock time."""
        return self.call_at(self._now + delay, callback)

    def advance(self, seconds: float) -> None:
        """Move time forward, running every timer that falls due, in deadline order.

        Each callback sees ``monotonic()`` equal to its own deadline, as if it fired
        exactly on time.

        Raises:
            ValueError: if ``seconds`` is negative (monotonic time never goes back).
        """
        if seconds < 0:
            raise ValueError("MockClock cannot go backwards")
        target = self._now + seconds
        while True:
            with self._lock:
                deadline = self._timers.next_deadline()
                if deadline is None or deadline > target:
                    break
                handle = self._timers.pop_due(deadline)
                if handle is None:
                    continue
                self._now = max(self._now, handle.deadline)
            _run_callback(handle)
        self._now = target

    def next_deadline(self) -> float | None:
        """Return the earliest deadline of a scheduled timer (``None`` when none), so a
        replay can step time from timer to timer."""
        with self._lock:
            return self._timers.next_deadline()

    def pending_timers(self) -> int:
        """Return how many timers are scheduled and not cancelled."""
        with self._lock:
            return len(self._timers)
