"""The server's statistics: :class:`ServerStatistics`, an immutable snapshot of its counters
and gauges, and :data:`COUNTERS`, the names of the fields that only ever grow (the server
keeps one integer per name and adds to it with ``count(name, n)``)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["COUNTERS", "ServerStatistics"]

#: The fields of :class:`ServerStatistics` that are counters since start.
COUNTERS: tuple[str, ...] = (
    "accepted", "refused", "closed", "requests", "publishes", "invalid_messages",
    "framing_errors", "stalled_disconnects", "undelivered_updates",
    "undelivered_bytes", "undeliverable_updates", "split_batches", "output_pauses",
    "internal_errors", "callbacks_sent", "callbacks_failed", "bytes_in", "reads",
    "backpressure_throttled", "backpressure_stalls",
    "frame_timeouts", "input_waits", "refused_at_limit", "accept_errors",
    "accept_pauses",
)


@dataclass(frozen=True)
class ServerStatistics:
    """A snapshot of the server's counters.

    Attributes:
        socket_path: where it listens.
        listening: whether it accepts connections.
        connections: connections open now.
        accepted: connections accepted since start.
        refused: peers refused (another uid, or credentials unknown).
        closed: connections closed since start.
        requests: requests received.
        publishes: publish requests handed to the coordinator.
        invalid_messages: messages answered with InvalidMessageError.
        framing_errors: connections closed for broken framing or undecodable frames.
        stalled_disconnects: connections closed as not reading (queued output none of
            which they took for ``output_stall_s`` under output pressure).
        undelivered_updates: updates of deliveries discarded because their connection
            closed before taking them (still queued then, or sent after it closed).
        undelivered_bytes: bytes of output discarded with them.
        undeliverable_updates: updates left out of a delivery because they could not be
            encoded or did not fit a frame (the rest of the batch was delivered).
        split_batches: deliveries (or held remainders of one) encoded in several frames
            because one would exceed ``max_frame_bytes``.
        output_pauses: times output pressure started (publishers paused).
        output_pressure: whether output pressure is on now.
        internal_errors: unexpected exceptions (logged).
        callbacks_sent: callback requests sent to modules.
        callbacks_failed: callbacks answered with "connection closed".
        bytes_in: bytes received.
        reads: reads from client sockets that returned data.
        backpressure_pauses: times the publish backlog crossed the high-water mark and
            reading from publishing connections stopped.
        backpressure_throttled: connections paused for backpressure since start (one
            count per connection per pause).
        backpressure_stalls: pauses ended because the backlog made no progress for
            ``backlog_stall_s`` (rather than by falling below the low-water mark).
        backpressure_paused_s: total time spent paused, in seconds (including the
            current pause).
        backpressure_active: whether publishers are paused now.
        buffered_out: bytes waiting to be sent, across connections.
        frame_timeouts: connections closed because a frame stayed incomplete longer than
            ``frame_timeout_s``.
        input_waits: times a connection was held back (not read) because its large frame
            did not fit the input budget.
        refused_at_limit: connections refused at the connection cap or the descriptor
            limit.
        accept_errors: ``accept`` calls that failed (``EMFILE`` and the like).
        accept_pauses: times accepting rested for ``ACCEPT_PAUSE_S`` at a limit.
        buffered_in: bytes of incomplete frames held now, across connections.
        input_reserved: bytes of the input budget reserved now.
        input_waiting: connections waiting for the input budget now.
        max_connections: the connection cap (from ``RLIMIT_NOFILE`` less the reserve).
        held_updates: updates of deliveries held unencoded behind full output buffers.
        output_budget_bytes: the output budget across connections.
        spins: times the I/O loop polled for the next request before blocking (right
            after activity, when it pays: ``protocol/waiting.py``).
        spins_paid: polls that saw the next request within the poll.
        blocked_busy: times it blocked at once because no CPU was idle.
        blocked_backoff: times it blocked at once because recent polls had not paid.
        idle_probes: samples of the idle-CPU probe.
    """

    socket_path: str
    listening: bool
    connections: int
    accepted: int
    refused: int
    closed: int
    requests: int
    publishes: int
    invalid_messages: int
    framing_errors: int
    stalled_disconnects: int
    undelivered_updates: int
    undelivered_bytes: int
    undeliverable_updates: int
    split_batches: int
    output_pauses: int
    output_pressure: bool
    internal_errors: int
    callbacks_sent: int
    callbacks_failed: int
    bytes_in: int
    reads: int
    backpressure_pauses: int
    backpressure_throttled: int
    backpressure_stalls: int
    backpressure_paused_s: float
    backpressure_active: bool
    buffered_out: int
    frame_timeouts: int
    input_waits: int
    refused_at_limit: int
    accept_errors: int
    accept_pauses: int
    buffered_in: int
    input_reserved: int
    input_waiting: int
    max_connections: int
    held_updates: int
    output_budget_bytes: int
    spins: int
    spins_paid: int
    blocked_busy: int
    blocked_backoff: int
    idle_probes: int
