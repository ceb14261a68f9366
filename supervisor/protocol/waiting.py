"""When a waiting thread spins and when it blocks: :class:`SpinPolicy`, shared by the
client (a caller waiting for its answer) and the daemon's I/O loop (waiting for the next
request right after serving one).

Spinning — polling the socket without blocking for a short while — saves the ~50 µs it
costs to wake an idle virtual CPU, but only when the CPU it burns is otherwise idle. On a
busy machine the spinning thread takes the CPU that the other side needs to produce the
answer, and a spin that does not see its answer in time was pure waste. So a waiter spins
only when it pays:

- **No CPU idle: block at once.** The idle-CPU probe (:func:`idle_cpus`, from the
  runnable count in ``/proc/loadavg``) is sampled at most once per
  :data:`PROBE_INTERVAL_S`; while the last sample shows no idle CPU beside the caller,
  every wait blocks at once.
- **Spins that do not pay: block at once for a while.** After :data:`MISSES_TO_BACK_OFF`
  spins in a row that ended without their answer, waits block at once for the back-off
  time, which starts at :data:`BACKOFF_MIN_S`, doubles with each further streak of misses
  up to :data:`BACKOFF_MAX_S` and halves (decays) with each spin that pays. A back-off
  ends early when the answers come fast again: after :data:`MISSES_TO_BACK_OFF` waits in
  a row that blocked at once and still had their answer within the spin time
  (:meth:`SpinPolicy.blocked`) — say, cached calls after a run of slow ones — so that a
  streak of slow answers does not cost up to a second of fast ones a thread wake each.

The policy is a plain object used by one thread at a time (the connection's token holder,
the server's I/O thread); the clock and the probe are injected so that the decision can be
tested deterministically. Nothing here raises: a probe that fails or cannot read
``/proc/loadavg`` (another OS) reports "unknown", which counts as idle (spinning as before).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import NamedTuple

__all__ = [
    "BACKOFF_MAX_S",
    "BACKOFF_MIN_S",
    "MISSES_TO_BACK_OFF",
    "PROBE_INTERVAL_S",
    "SPIN_S",
    "SpinPolicy",
    "WaitStatistics",
    "idle_cpus",
]

SPIN_S = 0.0002
"""How long a waiter spins (polls without blocking) before it blocks, when spinning pays."""

PROBE_INTERVAL_S = 0.01
"""The idle-CPU probe is sampled at most this often (a sample is a ``pread`` of
``/proc/loadavg``: 7-24 µs measured on a 2-core machine at load 10-16, so at most 0.24 %
of one CPU)."""

MISSES_TO_BACK_OFF = 4
"""Spins in a row that end without their answer before waits block at once for a while."""

BACKOFF_MIN_S = 0.01
"""The first back-off: how long waits block at once after a streak of unpaid spins."""

BACKOFF_MAX_S = 1.0
"""The longest back-off (it doubles with each streak, halves with each paid spin)."""

_LOADAVG = "/proc/loadavg"
_loadavg_fd: int | None = None
_cpus = os.cpu_count() or 1


def idle_cpus() -> float:
    """CPUs idle beside the calling thread now: the online CPUs minus the tasks runnable
    on them other than the caller (``/proc/loadavg``'s fourth field counts the running and
    runnable tasks of the whole system, the caller included). ``math.inf`` when unknown
    (no ``/proc/loadavg``, an unreadable or odd line): unknown counts as idle."""
    global _loadavg_fd
    try:
        if _loadavg_fd is None:
            _loadavg_fd = os.open(_LOADAVG, os.O_RDONLY | os.O_CLOEXEC)
        fields = os.pread(_loadavg_fd, 128, 0).split()
        running = int(fields[3].split(b"/")[0])
    except (OSError, IndexError, ValueError):
        return math.inf
    return float(_cpus - (running - 1))


class WaitStatistics(NamedTuple):
    """A snapshot of a :class:`SpinPolicy`'s counters (immutable; a named tuple, so that
    the light client imports no ``dataclasses``).

    Attributes:
        spins: waits that spun first.
        spins_paid: spins that saw their answer (or the next request) within the spin.
        blocked_busy: waits that blocked at once because no CPU was idle.
        blocked_backoff: waits that blocked at once because recent spins had not paid.
        idle_probes: samples of the idle-CPU probe.
    """

    spins: int = 0
    spins_paid: int = 0
    blocked_busy: int = 0
    blocked_backoff: int = 0
    idle_probes: int = 0


class SpinPolicy:
    """Decides, for each wait, whether to spin first and for how long.

    Use: ``budget = policy.spin_budget()`` before a wait (0.0: block at once), then, if the
    budget was positive, ``policy.spun(paid)`` once the spin is over (``paid``: the answer
    came within it); if it was 0.0, ``policy.blocked(waited_s)`` once the answer came.

    Args:
        clock: monotonic seconds (injected for tests).
        probe: idle CPUs beside the caller (:func:`idle_cpus`; ``math.inf`` for unknown).
        spin_s: the spin, when spinning pays (0 disables spinning).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 probe: Callable[[], float] = idle_cpus, spin_s: float = SPIN_S) -> None:
        self._clock = clock
        self._probe = probe
        self._spin_s = spin_s
        self._next_probe = -math.inf
        self._idle = math.inf
        self._misses = 0
        self._backoff_s = BACKOFF_MIN_S
        self._blocking_until = -math.inf
        self._backing_off = False  # the last budget was 0.0 because of the back-off
        self._fast_blocked = 0  # blocked waits in a row answered within the spin time
        self._spins = 0
        self._spins_paid = 0
        self._blocked_busy = 0
        self._blocked_backoff = 0
        self._probes = 0

    def spin_budget(self) -> float:
        """How long to spin before blocking in the wait that starts now (0.0: block)."""
        if self._spin_s <= 0:
            return 0.0
        now = self._clock()
        if now < self._blocking_until:
            self._blocked_backoff += 1
            self._backing_off = True
            return 0.0
        self._backing_off = False
        if now >= self._next_probe:
            self._next_probe = now + PROBE_INTERVAL_S
            self._probes += 1
            try:
                self._idle = self._probe()
            except Exception:  # a probe must not break a wait: unknown counts as idle
                self._idle = math.inf
        if self._idle < 1:
            self._blocked_busy += 1
            return 0.0
        self._spins += 1
        return self._spin_s

    def spun(self, paid: bool) -> None:
        """Record how a spin ended: ``paid`` if its answer came within it."""
        if paid:
            self._spins_paid += 1
            self._misses = 0
            self._backoff_s = max(BACKOFF_MIN_S, self._backoff_s / 2)
            return
        self._misses += 1
        if self._misses >= MISSES_TO_BACK_OFF:
            self._misses = 0
            self._blocking_until = self._clock() + self._backoff_s
            self._backoff_s = min(BACKOFF_MAX_S, self._backoff_s * 2)

    def blocked(self, waited_s: float) -> None:
        """Record how long a wait that blocked at once (its budget was 0.0) took to get
        its answer. During a back-off, :data:`MISSES_TO_BACK_OFF` of them in a row that
        a spin would have covered (``waited_s`` at most the spin time, the wake-up
        included) end the back-off and halve the next one: the other side answers fast
        again. Waits that blocked because no CPU was idle are not counted."""
        if not self._backing_off:
            return
        if waited_s > self._spin_s:
            self._fast_blocked = 0
            return
        self._fast_blocked += 1
        if self._fast_blocked >= MISSES_TO_BACK_OFF:
            self._fast_blocked = 0
            self._backing_off = False
            self._blocking_until = -math.inf
            self._backoff_s = max(BACKOFF_MIN_S, self._backoff_s / 2)

    def statistics(self) -> WaitStatistics:
        """A snapshot of the counters."""
        return WaitStatistics(spins=self._spins, spins_paid=self._spins_paid,
                              blocked_busy=self._blocked_busy,
                              blocked_backoff=self._blocked_backoff, idle_probes=self._probes)
