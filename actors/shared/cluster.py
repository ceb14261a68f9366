"""The cluster as the monitor sees it: :class:`ClusterSnapshot`, read through a
:class:`ClusterProbe` whose source another engine sets (the NATS engine; the local engine
leaves it unset, so the cluster rules do not apply).

The snapshot is typed and immutable; its counters are cumulative (the monitor turns them
into changes between evaluations).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ClusterProbe", "ClusterSnapshot", "ClusterView"]


@dataclass(frozen=True)
class ClusterSnapshot:
    """One daemon's view of its cluster.

    Attributes:
        disconnected: the names of this daemon's NATS connections that are down now.
        instances: live instances (this one included).
        partitions: ``engine.partitions``.
        owned: partitions this daemon owns now.
        unowned: partitions no instance holds, as this daemon last read their leases (the
            key absent, or unchanged for the lease time: its owner stopped renewing).
        buffered: the agent's updates not yet acknowledged by JetStream.
        max_buffered: ``engine.max_buffered``.
        refused: publishes the agent refused for a full buffer since start (cumulative).
        lag: ``(partition, stream messages not yet acknowledged)`` of each owned partition
            whose consumer could be read.
        lag_error: why the lag could not be read (``None``: it was).
    """

    disconnected: tuple[str, ...]
    instances: int
    partitions: int
    owned: int
    unowned: tuple[int, ...]
    buffered: int
    max_buffered: int
    refused: int
    lag: tuple[tuple[int, int], ...] = ()
    lag_error: str | None = None


class ClusterProbe:
    """Where the monitor reads the cluster from: ``source`` returns a snapshot, or is
    ``None`` (no cluster: the local engine)."""

    __slots__ = ("source",)

    def __init__(self) -> None:
        self.source: Callable[[], ClusterSnapshot | None] | None = None

    def read(self) -> ClusterSnapshot | None:
        """The source's snapshot, or ``None`` without a source. Raises what the source
        raises (the monitor logs it and judges without the cluster)."""
        source = self.source
        return source() if source is not None else None


@dataclass(frozen=True)
class ClusterView:
    """The cluster as the insight rules see it: the latest snapshot and what changed.

    Attributes:
        snapshot: the probe's latest :class:`ClusterSnapshot`.
        lag_growth: ``(partition, growth)``: how many stream messages each owned
            partition's lag grew over ``window_s`` (the monitor keeps the history; a
            partition seen for the first time grew 0).
        window_s: the window ``lag_growth`` covers (seconds).
        new_refusals: publishes the agent refused since the previous evaluation.
    """

    snapshot: ClusterSnapshot
    lag_growth: tuple[tuple[int, int], ...] = ()
    window_s: float = 0.0
    new_refusals: int = 0
