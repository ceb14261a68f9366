"""The coordinate path: a coordination request answered from the cache, or computed once.

Rules (hot path, no actor hop; see docs/ARCHITECTURE.md, rule 9): the caller's thread makes
the canonical key (:func:`~modcoord.actors.shared.cache_keys.cache_key`) and looks it up in
the :class:`~modcoord.actors.shared.cache_store.CacheStore`. A fresh entry answers at once; a
request for a key already being computed joins that computation (single flight); otherwise
the caller leads: every registered module supporting the mode is asked
(``on_mode_change``, :mod:`~modcoord.supervisor.daemon.fanout`) within
``callback_timeout_ms``, and the result is stored only when no module failed. Every answer
records its latency (``coordination`` histogram) and says whether it was ``cached``.

On failure: an unknown mode or a context that is not plain data is answered with
:class:`~modcoord.actors.errors.InvalidMessageError` (the reply gets it; nothing is
computed or stored); a module that fails or does not answer in time has its error in the
result's ``errors`` and the result is not cached (the next request computes again); a
leader's error reaches every request that joined it. The blocking form raises
:class:`~modcoord.actors.errors.CallTimeoutError` when no result comes within its timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from modcoord.actors.clock import Clock
from modcoord.actors.errors import InvalidMessageError, ModcoordError
from modcoord.actors.modes import mode_or_none
from modcoord.actors.reply import Reply, ReplyBox
from modcoord.actors.shared import Computed
from modcoord.actors.shared.cache_store import CacheStore, cache_key
from modcoord.actors.shared.demand import Demand
from modcoord.actors.shared.metrics import MetricsRegistry
from modcoord.supervisor.daemon.config import normalize_mode
from modcoord.supervisor.daemon.fanout import fan_out
from modcoord.supervisor.protocol.calls import CoordinationResult
from modcoord.supervisor.protocol.module import ModuleEndpoint

__all__ = ["Coordination", "Targets", "wire_mode"]

Targets = Callable[[str], list[tuple[str, ModuleEndpoint]]]
"""The registered modules supporting a mode: ``(module id, endpoint)`` pairs."""


def wire_mode(mode: Any) -> str:
    """``mode`` made canonical (:func:`modcoord.actors.modes.mode_or_none`).

    Raises:
        InvalidMessageError: it names no mode (the message lists the modes).
    """
    canonical = mode_or_none(mode)
    if canonical is None:
        try:
            return normalize_mode(mode)  # a mode spelled by a non-string, or raises
        except ModcoordError as exc:
            raise InvalidMessageError(str(exc)) from None
    return canonical


class Coordination:
    """The coordinate path of one engine.

    Args:
        clock: the engine's time source (fan-out deadlines).
        store: the shared cache store.
        demand: told of every read (the cache's pre-warm and refresh-ahead use it).
        metrics: where the ``coordination`` latency is recorded.
        touch: called with each calling module's id (its activity).
        targets: the modules to ask for a mode.
        strategy: a mode's ``memory.strategy``.
        callback_timeout_s: the ``callback_timeout_ms`` in force, in seconds.
    """

    def __init__(self, *, clock: Clock, store: CacheStore, demand: Demand,
                 metrics: MetricsRegistry, touch: Callable[[str], None], targets: Targets,
                 strategy: Callable[[str], str],
                 callback_timeout_s: Callable[[], float]) -> None:
        self._clock = clock
        self._store = store
        self._demand = demand
        self._metrics = metrics
        self._touch = touch
        self._targets = targets
        self._strategy = strategy
        self._callback_timeout_s = callback_timeout_s

    def coordinate(self, mode: str, context: dict[str, Any] | None = None,
                   reply: Reply | None = None, caller: Sequence[str] = (),
                   timeout: float = 5.0) -> CoordinationResult | None:
        """Coordinate the modules for ``mode`` and ``context``.

        With ``reply``, returns at once and calls ``reply(result_dict, None)`` or
        ``reply(None, error)`` exactly once, from any thread. Without it, blocks up to
        ``timeout`` and returns a :class:`CoordinationResult`.

        Raises:
            InvalidMessageError: unknown mode or a context that is not plain data.
            CallTimeoutError: (blocking form) no result within ``timeout``.
        """
        if reply is None:
            box = ReplyBox()
            self.coordinate(mode, context, box, caller)
            return CoordinationResult(**box.wait(timeout, "coordinate"))
        started = time.perf_counter()
        try:
            canonical = wire_mode(mode)
        except InvalidMessageError as exc:
            reply(None, exc)
            return None
        if context is None:
            context = {}
        for module_id in caller:
            self._touch(module_id)
        try:
            key = cache_key(canonical, context)
        except ModcoordError as exc:
            reply(None, exc)
            return None
        lookup = self._store.lookup(key)
        kind = lookup.kind
        self._demand.read(canonical, key, kind)
        if kind == "hit":
            self._answer(reply, lookup.value, True, started)
        elif kind == "wait":
            assert lookup.flight is not None
            lookup.flight.add_waiter(
                lambda value, error: reply(None, error) if error is not None
                else self._answer(reply, value, True, started)
            )
        else:
            self._compute(canonical, context, key, reply, started)
        return None

    def _answer(self, reply: Reply, value: dict[str, Any], cached: bool, started: float) -> None:
        elapsed = time.perf_counter() - started
        self._metrics.record("coordination", elapsed)
        reply({**value, "cached": cached, "latency_ms": elapsed * 1000.0}, None)

    def _compute(self, mode: str, context: dict[str, Any], key: str, reply: Reply,
                 started: float) -> None:
        def done(value: dict[str, Any], cacheable: bool) -> None:
            if cacheable:
                self._store.complete(key, value)
            else:
                self._store.fail(key, None, value)
            self._answer(reply, value, False, started)

        self.compute(mode, context, done)

    def compute(self, mode: str, context: dict[str, Any], done: Computed) -> None:
        """Compute the coordination result of ``mode`` and ``context``: every registered
        module supporting ``mode`` is asked (``on_mode_change``) within
        ``callback_timeout_ms``. ``done(value, cacheable)`` runs once, in any thread;
        ``cacheable`` is false when a module failed or did not answer (its error is in
        ``value["errors"]``). A cache miss and the cache actor's refreshes and pre-warms
        all compute through here. Never raises."""
        strategy = self._strategy(mode)
        targets = self._targets(mode)

        def finished(results: dict[str, Any], errors: dict[str, str]) -> None:
            done({"mode": mode, "strategy": strategy, "results": results, "errors": errors},
                 not errors)

        fan_out(self._clock, self._callback_timeout_s(), targets, mode, strategy, context,
                finished)
