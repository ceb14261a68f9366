"""The thread-safe hot-path objects the actors share with the façade, and :class:`Shared`.

The request path reads and writes these objects in its own thread, without a message hop;
the actors maintain them. They belong to the supervisor's side, not to any one actor, so
an actor's restart loses none of them.

=================  ================================================================
``metrics``        :class:`~.metrics.MetricsRegistry` — latency histograms, counters
``cache_store``    :class:`~.cache_store.CacheStore` — coordination results
``queue_gauge``    :class:`~.admission.QueueGauge` — batch queue admission
``backlog``        :class:`~.admission.Backlog` — updates not yet taken in by the debouncer
``activity``       :class:`~.activity.ActivityTable` — module activity and sweeps
``widening``       :class:`~.pressure.Widening` — the CPU-pressure factor on delays
``plugins``        :class:`~modcoord.actors.plugins.PluginHost` — loaded plugins, guards
``demand``         :class:`~.demand.Demand` — reads per context, background computations
``cluster``        :class:`~.cluster.ClusterProbe` — the cluster, for the monitor's rules
=================  ================================================================

:class:`Shared` bundles them, with the daemon's hooks (where batches are delivered, how
resident memory, available memory and CPU time are read, which connections are live, how
a swept module is told), into the one typed, frozen object every actor's context carries.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from modcoord.actors.clock import Clock
from modcoord.actors.plugins import GuardedCachePolicy, PluginHost
from modcoord.actors.settings import ModeSettings, PluginSettings
from modcoord.actors.shared.activity import ActivityTable
from modcoord.actors.shared.admission import Backlog, QueueGauge
from modcoord.actors.shared.cache_store import CacheStore
from modcoord.actors.shared.cluster import ClusterProbe
from modcoord.actors.shared.demand import Demand
from modcoord.actors.shared.metrics import MetricsRegistry
from modcoord.actors.shared.pressure import Widening
from modcoord.actors.update import Batch, Update

__all__ = [
    "AvailableReader",
    "Compute",
    "Computed",
    "ConnectionStates",
    "CpuReader",
    "Deliver",
    "NotifySwept",
    "ReleaseBuffers",
    "RssReader",
    "Settled",
    "Shared",
    "Widening",
    "no_buffers",
    "no_connection_states",
    "no_settle",
    "no_sink",
    "no_swept_notice",
    "psutil_available",
    "psutil_cpu_seconds",
    "psutil_rss",
    "usable_cpus",
]

Deliver = Callable[[str, Batch], None]
"""Hands a batch to a subscriber: ``deliver(subscriber_id, batch)``, in the batcher's thread.
A sink that raises is logged and counted by the batcher."""
Settled = Callable[[Sequence[Update]], None]
"""``settled(updates)``: the batcher has sent ``updates`` to every subscriber (or to none
that wanted them), in the batcher's thread; what held them for a crash lets them go."""
RssReader = Callable[[], int]
"""Returns the daemon's resident memory in bytes; may raise (the check is skipped)."""
AvailableReader = Callable[[], int]
"""Returns the machine's available memory in bytes; may raise (not judged this check)."""
CpuReader = Callable[[], float]
"""Returns the CPU seconds (user + system) the daemon has used since it started; may
raise (not judged this check)."""
ConnectionStates = Callable[[float], Mapping[str, bool]]
"""``states(stall_s)``: module id → whether its connection is live (open, and taking its
output within ``stall_s``). Modules it cannot judge are left out. May raise."""
NotifySwept = Callable[[str, dict[str, Any]], None]
"""``notify(module_id, notice)``: tell a swept module (a ``swept`` event). May raise."""
ReleaseBuffers = Callable[[], None]
"""``release()``: ask every module connection to give back the buffer capacity a burst
left behind (done in the I/O thread soon after; returns at once). May raise."""
Computed = Callable[[dict[str, Any], bool], None]
"""``done(value, cacheable)``: a coordination result, and whether it may be cached (no
module reported an error)."""
Compute = Callable[[str, dict[str, Any], Computed], None]
"""``compute(mode, context, done)``: compute a coordination result exactly as a cache miss
does; ``done`` runs once, in any thread. Never raises."""


def no_sink(subscriber_id: str, batch: Batch) -> None:
    """The delivery sink of a context built without one: logs each batch it cannot deliver
    (a warning naming the batch and the subscriber)."""
    logger.bind(actor="batcher").warning(
        "batch not delivered: no delivery sink", batch=batch.batch_id,
        subscriber=subscriber_id,
    )


def no_settle(updates: Sequence[Update]) -> None:
    """Nothing holds updates for a crash beyond the actors themselves."""


def no_connection_states(stall_s: float) -> Mapping[str, bool]:
    """No connection can tell: only calls count as activity."""
    return {}


def no_swept_notice(module_id: str, notice: dict[str, Any]) -> None:
    """Nobody to tell: the module learns it was swept at its next call."""


def no_buffers() -> None:
    """No connections: no buffers to give back."""


@functools.cache
def _process() -> Any:
    import psutil

    return psutil.Process()


def psutil_rss() -> int:
    """The process's resident memory in bytes (psutil)."""
    return int(_process().memory_info().rss)


def psutil_available() -> int:
    """The machine's available memory in bytes (``psutil.virtual_memory().available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def psutil_cpu_seconds() -> float:
    """The process's CPU time so far, user + system, in seconds (psutil)."""
    times = _process().cpu_times()
    return float(times.user + times.system)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where
    there is none), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class Shared:
    """Everything the actors share, typed: the hot-path objects and the daemon's hooks.

    Build one with :meth:`create` (every object made for a clock) and give the same
    instance to every actor's context: successors then take over the objects as they are.

    Attributes:
        metrics: latency histograms and counters (the monitor reads them).
        cache_store: the coordination result store (the cache actor maintains it).
        queue_gauge: batch queue admission (the batcher keeps it current).
        backlog: publishes told to the debouncer and not yet taken in.
        activity: module activity (the memory actor sweeps it).
        deliver: where the batcher hands each subscriber's batch.
        rss_reader: how the memory actor reads resident memory.
        connection_states: which module connections are live (the memory actor asks
            before each sweep).
        notify_swept: how a swept module is told.
        release_buffers: how a full cleanup has the connections give back buffer
            capacity.
        available_reader: how the memory actor reads the machine's available memory.
        cpu_reader: how the memory actor reads the daemon's CPU time.
        cpu_capacity: the CPUs the daemon may use (CPU pressure is a fraction of them).
        widening: the CPU-pressure factor the memory actor sets and the tuners read.
        plugins: the plugins the mode's ``plugins:`` section names, and their guards
            (:meth:`apply_plugins`).
        demand: reads per context and mode (the request path counts, the cache actor
            refreshes and pre-warms from it).
        compute: how a coordination result is computed (the coordinator's; ``None``
            without one: nothing is refreshed or pre-warmed).
        settled: told what the batcher has sent (the ledger of updates held for actor
            processes releases them).
        cluster: where the monitor reads the cluster (another engine sets its source).
    """

    metrics: MetricsRegistry
    cache_store: CacheStore
    queue_gauge: QueueGauge
    backlog: Backlog
    activity: ActivityTable
    deliver: Deliver = no_sink
    rss_reader: RssReader = psutil_rss
    connection_states: ConnectionStates = no_connection_states
    notify_swept: NotifySwept = no_swept_notice
    release_buffers: ReleaseBuffers = no_buffers
    available_reader: AvailableReader = psutil_available
    cpu_reader: CpuReader = psutil_cpu_seconds
    cpu_capacity: int = 1
    widening: Widening = field(default_factory=Widening)
    plugins: PluginHost = field(default_factory=PluginHost)
    demand: Demand = field(default_factory=Demand)
    compute: Compute | None = None
    settled: Settled = no_settle
    cluster: ClusterProbe = field(default_factory=ClusterProbe)

    def apply_plugins(self, settings: PluginSettings) -> None:
        """Load what ``settings`` names (:meth:`PluginHost.configure`) and give the cache
        store its policy (the built-in ``lru`` unless a plugin is named and loads)."""
        self.plugins.configure(settings)
        policy = self.plugins.cache_policy()
        self.cache_store.set_policy(GuardedCachePolicy(policy) if policy is not None else None)

    @classmethod
    def create(cls, clock: Clock, settings: ModeSettings | None = None, *,
               deliver: Deliver = no_sink, rss_reader: RssReader = psutil_rss,
               connection_states: ConnectionStates = no_connection_states,
               notify_swept: NotifySwept = no_swept_notice,
               release_buffers: ReleaseBuffers = no_buffers,
               available_reader: AvailableReader = psutil_available,
               cpu_reader: CpuReader = psutil_cpu_seconds,
               cpu_capacity: int | None = None,
               compute: Compute | None = None,
               settled: Settled = no_settle) -> Shared:
        """Make every shared object for ``clock``, sized by ``settings`` (a mode's
        settings; defaults when ``None``): the metrics window is ``monitor.window_s``,
        the store follows ``cache``, the gauge's limit is ``batch.max_queue``;
        ``cpu_capacity`` defaults to :func:`usable_cpus`."""
        s = settings if settings is not None else ModeSettings()
        shared = cls(
            metrics=MetricsRegistry(clock, window_s=s.monitor.window_s),
            cache_store=CacheStore(clock, s.cache),
            queue_gauge=QueueGauge(s.batch.max_queue),
            backlog=Backlog(),
            activity=ActivityTable(clock),
            deliver=deliver,
            rss_reader=rss_reader,
            connection_states=connection_states,
            notify_swept=notify_swept,
            release_buffers=release_buffers,
            available_reader=available_reader,
            cpu_reader=cpu_reader,
            cpu_capacity=cpu_capacity if cpu_capacity is not None else usable_cpus(),
            demand=Demand(s.cache.prewarm.track_max_contexts),
            compute=compute,
            settled=settled,
        )
        shared.apply_plugins(s.plugins)
        return shared
