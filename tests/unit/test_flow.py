"""Unit tests of the server's flow-control rules (daemon/flow.py) with fake connections:
no sockets, no threads. The server's behaviour under load is tested through real
connections in test_client_server.py, test_input_limits.py and test_delivery_limits.py."""

from __future__ import annotations

from typing import Any, cast

from modcoord.supervisor.daemon.connection import Connection
from modcoord.supervisor.daemon.flow import FlowHooks, PublisherFlow


class _Conn:
    """The connection attributes flow control reads and sets."""

    def __init__(self) -> None:
        self.closed = False
        self.last_publish = float("-inf")
        self.throttled = False
        self.full = False
        self.held = ()
        self.want_write = False
        self.progress_at = 0.0

    def buffered(self) -> int:
        return 0


def _conn() -> Any:
    return _Conn()


def test_publishers_pause_above_high_water_and_resume_only_when_no_reason_holds() -> None:
    backlog = [0]
    publisher, other = _conn(), _conn()
    interest: list[Any] = []
    counts: dict[str, int] = {}

    def count(name: str, n: int) -> None:
        counts[name] = counts.get(name, 0) + n

    hooks = FlowHooks(update_interest=interest.append, close=lambda conn, reason: None,
                      count=count, now=lambda: 0.0)
    flow = PublisherFlow(
        hooks, conns=lambda: [publisher, other],
        backlog=lambda: backlog[0], overdue=lambda: False, high_water=100, low_water=10,
        stall_s=60.0, max_buffer_bytes=1000, output_budget_bytes=10_000,
        output_stall_s=60.0)
    flow.after_publishing(cast(Connection, publisher))
    assert not flow.throttling and not publisher.throttled  # backlog 0: nothing to do
    backlog[0] = 101
    flow.after_publishing(cast(Connection, publisher))
    assert flow.throttling and publisher.throttled and not other.throttled
    assert interest == [publisher] and counts["backpressure_throttled"] == 1
    state = flow.backpressure()
    assert (state.pauses, state.active) == (1, True)
    # Output pressure on top: still paused after the backlog drains.
    assert flow.output_added(cast(Connection, other), 1500, 1500)  # above max_buffer_bytes
    flow.start_output_pressure()
    assert flow.output_pressure and counts["output_pauses"] == 1
    backlog[0] = 10
    flow.check_backlog()
    assert not flow.throttling and publisher.throttled  # output pressure holds them
    flow.output_taken(cast(Connection, other), 1500, 0)
    flow.check_output()
    assert not flow.output_pressure and not publisher.throttled
    assert interest == [publisher, publisher] and flow.out_total == 0
    assert flow.backpressure().pauses == 1 and flow.poll_timeout() is None
