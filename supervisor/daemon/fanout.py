"""Fan-out: ask every target module's ``on_mode_change`` and gather the answers by a deadline.

A coordination miss and a mode switch both call each module's endpoint and wait for all
answers, or for ``callback_timeout_ms``: whoever has not answered by then is reported
with an error (``timeout: no answer from module``), never waited for longer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from modcoord.actors.clock import Clock, TimerHandle
from modcoord.supervisor.protocol.module import ModuleEndpoint

__all__ = ["Done", "ModeChangeFlight", "fan_out"]

Done = Callable[[dict[str, Any], dict[str, str]], None]
"""Called once with ``(results, errors)``: module id → answer, module id → error text."""


class ModeChangeFlight:
    """Gathers ``on_mode_change`` replies for one coordination or mode switch."""

    def __init__(self, expected: Sequence[str], done: Done) -> None:
        self.results: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self._waiting = set(expected)
        self._done = done
        self._lock = threading.Lock()
        self._finished = False
        if not self._waiting:
            self._finish()

    def reply(self, module_id: str, result: Any, error: str | None) -> None:
        with self._lock:
            if self._finished or module_id not in self._waiting:
                return
            self._waiting.discard(module_id)
            if error is None:
                self.results[module_id] = result
            else:
                self.errors[module_id] = error
            last = not self._waiting
        if last:
            self._finish()

    def expire(self) -> None:
        with self._lock:
            if self._finished:
                return
            for module_id in self._waiting:
                self.errors[module_id] = "timeout: no answer from module"
            self._waiting.clear()
        self._finish()

    @property
    def finished(self) -> bool:
        return self._finished

    def _finish(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
        self._done(self.results, self.errors)


def fan_out(clock: Clock, timeout_s: float, targets: Sequence[tuple[str, ModuleEndpoint]],
            mode: str, strategy: str, context: dict[str, Any], done: Done) -> None:
    """Call ``endpoint.mode_change`` of every target; ``done(results, errors)`` runs once,
    when all answered or ``timeout_s`` after the start (the rest then count as errors).

    An endpoint that raises is an error for that module; nothing here raises.
    """
    if not targets:
        ModeChangeFlight([], done)
        return
    timer: list[TimerHandle] = []

    def finished(results: dict[str, Any], errors: dict[str, str]) -> None:
        if timer:
            timer[0].cancel()  # frees the flight (and what it holds) now, not at expiry
        done(results, errors)

    flight = ModeChangeFlight([m for m, _ in targets], finished)
    timer.append(clock.call_at(clock.monotonic() + timeout_s, flight.expire))
    if flight.finished:
        timer[0].cancel()
    for module_id, endpoint in targets:
        def answer(result: Any, error: str | None, module_id: str = module_id) -> None:
            flight.reply(module_id, result, error)

        try:
            endpoint.mode_change(module_id, mode, strategy, context, answer)
        except Exception as exc:
            flight.reply(module_id, None, f"{type(exc).__name__}: {exc}")
