"""What client calls resolve to beyond plain data: :class:`CoordinationResult` (declared
once, in :mod:`modcoord.supervisor.protocol.calls`, and re-exported here), and the client's
own counters, :class:`ClientStatistics`."""

from __future__ import annotations

from dataclasses import dataclass

from modcoord.supervisor.protocol.calls import CoordinationResult

__all__ = ["ClientStatistics", "CoordinationResult"]


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
        spins: waits for an answer that spun (polled the socket) before blocking.
        spins_paid: spins that saw their answer within the spin.
        blocked_busy: waits that blocked at once because no CPU was idle (spinning would
            have taken the CPU the daemon needs to answer).
        blocked_backoff: waits that blocked at once because recent spins had not paid.
        idle_probes: samples of the idle-CPU probe (at most one per 10 ms).
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
    spins: int = 0
    spins_paid: int = 0
    blocked_busy: int = 0
    blocked_backoff: int = 0
    idle_probes: int = 0
