"""Shared, thread-safe measurements that outlive any one actor.

The request path records into a :class:`MetricsRegistry` without a message hop (a lock
and a few arithmetic operations); the monitor reads it to compute percentiles, insights
and the Prometheus exposition. Because the registry belongs to the supervisor, a monitor
restart loses no history.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from modcoord.actors.clock import Clock
from modcoord.actors.histogram import LatencyHistogram

__all__ = ["HISTOGRAMS", "MetricsRegistry"]

HISTOGRAMS: tuple[str, ...] = (
    "coordination",         # coordinate request to result, in the daemon
    "publish_to_delivery",  # publish accepted to batch handed to the subscriber's sink
    "debounce_lateness",    # how late debounce timers fired
)


class MetricsRegistry:
    """Named latency histograms and counters.

    Args:
        clock: the clock the histograms' recent windows read.
        window_s: length of the recent window.
        names: histogram names to create up front (more are created on first use).
    """

    def __init__(self, clock: Clock, window_s: float = 60.0,
                 names: Iterable[str] = HISTOGRAMS) -> None:
        self.clock = clock
        self.window_s = window_s
        self._lock = threading.Lock()
        self._histograms: dict[str, LatencyHistogram] = {
            n: LatencyHistogram(clock, window_s) for n in names
        }
        self._counters: dict[str, int] = {}

    def histogram(self, name: str) -> LatencyHistogram:
        """Return the histogram called ``name``, creating it if needed."""
        h = self._histograms.get(name)
        if h is None:
            with self._lock:
                h = self._histograms.setdefault(name, LatencyHistogram(self.clock, self.window_s))
        return h

    def record(self, name: str, seconds: float) -> None:
        """Record one latency observation (seconds) into histogram ``name``."""
        self.histogram(name).record(seconds)

    def record_many(self, name: str, values: list[float]) -> None:
        """Record several observations (seconds) into histogram ``name`` at once."""
        self.histogram(name).record_many(values)

    def increment(self, name: str, by: int = 1) -> None:
        """Add ``by`` to counter ``name``."""
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + by

    def counters(self) -> dict[str, int]:
        """Return a copy of every counter."""
        with self._lock:
            return dict(self._counters)

    def histograms(self) -> dict[str, LatencyHistogram]:
        """Return the histograms by name (the objects themselves, for reading)."""
        with self._lock:
            return dict(self._histograms)

    def trim(self) -> None:
        """Forget recent windows (memory cleanup); totals are kept."""
        for h in self.histograms().values():
            h.trim()
