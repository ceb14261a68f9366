"""What client calls resolve to beyond plain data: :class:`CoordinationResult`, and the
client's own counters, :class:`ClientStatistics`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modcoord.actors.errors import InvalidMessageError

__all__ = ["ClientStatistics", "CoordinationResult"]

_object_new = object.__new__


@dataclass(frozen=True)
class CoordinationResult:
    """The answer of ``coordinate``.

    Attributes:
        mode: the canonical mode coordinated.
        strategy: the mode's memory strategy.
        results: module id → what its ``on_mode_change`` returned.
        errors: module id → error text (modules that failed or timed out).
        cached: whether it came from the daemon's cache.
        latency_ms: the daemon's time to answer.
    """

    mode: str
    strategy: str
    results: dict[str, Any]
    errors: dict[str, str]
    cached: bool
    latency_ms: float

    @classmethod
    def from_wire(cls, data: Any) -> CoordinationResult:
        """Build from the daemon's result map.

        Raises:
            InvalidMessageError: the map lacks ``mode`` or has fields of the wrong type.
        """
        if type(data) is not dict or type(data.get("mode")) is not str:
            raise InvalidMessageError(f"coordinate: malformed result {data!r:.120}")
        results = data.get("results") or {}
        errors = data.get("errors") or {}
        if type(results) is not dict or type(errors) is not dict:
            raise InvalidMessageError("coordinate: results and errors must be maps")
        if errors:
            errors = {str(k): str(v) for k, v in errors.items()}
        strategy = data.get("strategy", "")
        # Every cached coordinate builds one: fill the fields directly, without the frozen
        # dataclass's per-field object.__setattr__ (half the cost).
        result = _object_new(cls)
        result.__dict__.update(
            mode=data["mode"],
            strategy=strategy if type(strategy) is str else str(strategy),
            results=results,
            errors=errors,
            cached=bool(data.get("cached", False)),
            latency_ms=float(data.get("latency_ms", 0.0)),
        )
        return result


@dataclass(frozen=True)
class ClientStatistics:
    """A snapshot of a client's counters.

    Attributes:
        connected: whether a connection is up now.
        calls: requests sent.
        pending: requests awaiting an answer.
        connection_losses: times the connection was lost.
        reconnects: successful reconnections.
        batches_received: batch events delivered to modules.
        callbacks_run: callback requests answered.
        callback_errors: module callbacks (or on_batch) that raised, and callback results
            replaced by an error because they could not be sent.
        modules: modules registered through this client.
        writes: writes of buffered requests to the socket (several requests per write
            when they come faster than the writes).
        caller_reads: times a waiting caller read the connection itself (instead of being
            woken by the reader thread).
        sweeps_notified: ``swept`` events received (each re-registered its module).
    """

    connected: bool
    calls: int
    pending: int
    connection_losses: int
    reconnects: int
    batches_received: int
    callbacks_run: int
    callback_errors: int
    modules: int
    writes: int
    caller_reads: int
    sweeps_notified: int = 0
