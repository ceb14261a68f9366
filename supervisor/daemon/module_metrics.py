"""Modules' own ``get_performance_metrics()`` values, polled and bounded.

Every ``monitor.module_metrics_interval_ms`` the coordinator asks each registered module
that offers ``get_performance_metrics()`` (``has_metrics``) for its values, through its
endpoint (a callback frame to the module's process; never blocking). :class:`ModuleMetricsTable`
keeps each module's latest answer, kept to what a metric can carry:

- only string names of at most :data:`MAX_METRIC_NAME_CHARS` characters with real, finite
  numbers (bools and everything else are dropped: ``dropped_non_numeric``);
- at most ``monitor.module_metrics_max`` per module, the first by name (the rest:
  ``dropped_over_cap``);
- an answer not in within ``daemon.callback_timeout_ms`` is a timeout (counted when the
  next poll finds it missing; the module is asked again then); a late answer is ignored
  (``late``); an error answer is counted (``errors``) and keeps the previous values.

Every drop, timeout and error is counted (``status`` → ``module_metrics.statistics``) and
logged at WARNING. ``status`` shows the values per module; ``/metrics`` exports them as
``modcoord_module_metric{module, name}``.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from loguru import logger

from modcoord.actors.plugins import finite_number
from modcoord.supervisor.protocol.module import ModuleEndpoint

__all__ = ["MAX_METRIC_NAME_CHARS", "ModuleMetricsTable"]

MAX_METRIC_NAME_CHARS = 100
"""A module metric's name is kept only up to this length (longer: dropped as non-numeric)."""

_log = logger.bind(actor="coordinator", event="module_metrics")


class ModuleMetricsTable:
    """The latest bounded ``get_performance_metrics()`` values of each module (see the
    module doc). Thread-safe: answers arrive on I/O threads.

    Args:
        now: the clock's ``monotonic`` (deadlines are read from it).
    """

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._lock = threading.Lock()
        self._values: dict[str, dict[str, float]] = {}
        self._pending: dict[str, tuple[float, int]] = {}  # module -> (deadline, token)
        self._tokens = itertools.count(1)
        self.polls = self.answers = self.errors = self.timeouts = self.late = 0
        self.dropped_non_numeric = self.dropped_over_cap = 0

    def poll(self, targets: Iterable[tuple[str, ModuleEndpoint]], timeout_s: float,
             cap: int) -> int:
        """Ask every module in ``targets`` (id, endpoint) for its metrics, unless its
        previous request is still within ``timeout_s``; returns how many were asked.

        An endpoint that raises is counted as an error; nothing here blocks on a module.
        """
        now = self._now()
        asked = 0
        for module_id, endpoint in targets:
            with self._lock:
                pending = self._pending.get(module_id)
                if pending is not None:
                    if now < pending[0]:
                        continue
                    self.timeouts += 1
                    timed_out = True
                else:
                    timed_out = False
                token = next(self._tokens)
                self._pending[module_id] = (now + timeout_s, token)
                self.polls += 1
            if timed_out:
                _log.bind(module=module_id, timeout_s=timeout_s).warning(
                    "get_performance_metrics did not answer within daemon.callback_timeout_ms;"
                    " asked again")
            asked += 1

            def reply(result: Any, error: str | None, module_id: str = module_id,
                      token: int = token) -> None:
                self._answer(module_id, token, cap, result, error)

            try:
                endpoint.performance_metrics(module_id, reply)
            except Exception as exc:
                self._answer(module_id, token, cap, None, f"{type(exc).__name__}: {exc}")
        return asked

    def _answer(self, module_id: str, token: int, cap: int, result: Any,
                error: str | None) -> None:
        now = self._now()
        with self._lock:
            pending = self._pending.get(module_id)
            if pending is None or pending[1] != token or now > pending[0]:
                self.late += 1
                return
            del self._pending[module_id]
            if error is not None or not isinstance(result, Mapping):
                self.errors += 1
                why = error if error is not None else (
                    f"answered {type(result).__name__}, not a mapping of name to number")
            else:
                why = None
        if why is not None:
            _log.bind(module=module_id, error=why).warning("get_performance_metrics failed")
            return
        assert isinstance(result, Mapping)
        numeric: dict[str, float] = {}
        bad = 0
        for name, value in result.items():
            number = finite_number(value)
            if type(name) is not str or not name or len(name) > MAX_METRIC_NAME_CHARS or (
                    number is None):
                bad += 1
                continue
            numeric[name] = number
        names = sorted(numeric)
        over = max(0, len(names) - cap)
        kept = {n: numeric[n] for n in names[:cap]}
        with self._lock:
            self._values[module_id] = kept
            self.answers += 1
            self.dropped_non_numeric += bad
            self.dropped_over_cap += over
        if bad or over:
            _log.bind(module=module_id, non_numeric=bad, over_cap=over, cap=cap).warning(
                "get_performance_metrics values dropped: not numbers, or beyond "
                "monitor.module_metrics_max")

    def forget(self, module_id: str) -> None:
        """A module unregistered: drop its values and any request in flight."""
        with self._lock:
            self._values.pop(module_id, None)
            self._pending.pop(module_id, None)

    def values(self) -> dict[str, dict[str, float]]:
        """Module id → its latest values (copies)."""
        with self._lock:
            return {m: dict(v) for m, v in sorted(self._values.items())}

    def statistics(self) -> dict[str, int]:
        """The counters (see the module doc)."""
        with self._lock:
            return {"polls": self.polls, "answers": self.answers, "errors": self.errors,
                    "timeouts": self.timeouts, "late": self.late,
                    "dropped_non_numeric": self.dropped_non_numeric,
                    "dropped_over_cap": self.dropped_over_cap,
                    "pending": len(self._pending)}
