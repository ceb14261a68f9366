"""The ModuleCoordinator: the in-process engine the daemon serves, usable in-process too.

It implements :class:`~modcoord.supervisor.daemon.engine.Engine` (alias ``LocalEngine``):
it owns the actor system — the supervisor, the five children and the
:class:`~modcoord.actors.shared.Shared` objects they maintain — and offers register,
publish, coordinate, mode switches, status, insights, optimize and per-actor calls.

Hot paths avoid actor hops (see docs/ARCHITECTURE.md, rule 9): ``publish_many`` hands one
message per call to the debouncer; ``coordinate`` answers cache hits from the
:class:`~modcoord.actors.shared.cache_store.CacheStore` in the caller's thread and
computes misses once per key (single flight) by calling every module's
``on_mode_change`` (:mod:`~modcoord.supervisor.daemon.coordination`).

This module is the façade: lifecycle, modules, publish, mode switches and the control
calls. Its parts live beside it: the coordinate path in
:mod:`~modcoord.supervisor.daemon.coordination`, the publish intake (checks and admission)
in :mod:`~modcoord.supervisor.daemon.intake`, the status document in
:mod:`~modcoord.supervisor.daemon.status` and the actor-call → message table in
:mod:`~modcoord.supervisor.daemon.actor_messages` (``adaptive_status`` is re-exported here).

On failure: calls that need the supervisor raise
:class:`~modcoord.actors.errors.CallTimeoutError` when it does not answer in time; bad
input raises :class:`~modcoord.actors.errors.InvalidMessageError` and changes nothing;
publishing beyond the batch queue gets :class:`~modcoord.actors.errors.QueueFullError`
per refused update (counted); a batch for a module that went away is counted in
``undeliverable`` and logged.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import psutil
from loguru import logger

from modcoord.actors._base import ActorHandle, Statistics
from modcoord.actors.batcher import BatcherActor, FlushBatches
from modcoord.actors.cache import CacheActor, Clear, Prewarm
from modcoord.actors.clock import Clock, MonotonicClock
from modcoord.actors.debouncer import DebouncerActor, Flush
from modcoord.actors.errors import (
    CallTimeoutError,
    InvalidMessageError,
    ModcoordError,
)
from modcoord.actors.memory import ForceCleanup, MemoryManagerActor, Reactivate
from modcoord.actors.monitor import Insights, MonitorActor
from modcoord.actors.plugins import PluginHost
from modcoord.actors.reply import Reply
from modcoord.actors.settings import PluginSettings
from modcoord.actors.shared import Computed, Shared
from modcoord.actors.shared.activity import ActivityTable
from modcoord.actors.shared.admission import Backlog, QueueGauge
from modcoord.actors.shared.cache_store import CacheStore
from modcoord.actors.shared.demand import Demand
from modcoord.actors.shared.metrics import MetricsRegistry
from modcoord.actors.update import Batch
from modcoord.supervisor.daemon.actor_messages import ACTOR_MESSAGES, plain
from modcoord.supervisor.daemon.config import ConfigSet, load_config_dir, normalize_mode
from modcoord.supervisor.daemon.coordination import Coordination, wire_mode
from modcoord.supervisor.daemon.engine import (
    ModeSwitch,
    OptimizeReport,
    PublishItem,
    Registration,
    StatusBrief,
)
from modcoord.supervisor.daemon.fanout import fan_out
from modcoord.supervisor.daemon.intake import Intake
from modcoord.supervisor.daemon.module_metrics import ModuleMetricsTable
from modcoord.supervisor.daemon.status import adaptive_status, gather_statistics, status_document
from modcoord.supervisor.processes.ledger import UpdateLedger
from modcoord.supervisor.protocol.calls import (
    ACTOR_NAMES,
    CoordinationResult,
    bind_actor_args,
)
from modcoord.supervisor.protocol.module import LocalEndpoint, ModuleEndpoint, ModuleInfo
from modcoord.supervisor.supervisor import (
    ApplySettings,
    ChildSpec,
    ChildStatus,
    CrashChild,
    RegisterModule,
    SetMode,
    StartChildren,
    StopChildren,
    SupervisionPolicy,
    SupervisorActor,
    UnregisterModule,
)

if TYPE_CHECKING:
    from modcoord.supervisor.processes.host import ProcessHosting

__all__ = [
    "ACTOR_NAMES",
    "CoordinationResult",
    "LocalEngine",
    "ModuleCoordinator",
    "adaptive_status",
    "default_child_specs",
]


def default_child_specs(out_of_process: Iterable[str] = ()) -> list[ChildSpec]:
    """The children in start order: monitor first, debouncer last (stopped first); those
    named in ``out_of_process`` run in processes of their own."""
    own = frozenset(out_of_process)
    return [
        ChildSpec(name, cls, process=name in own)
        for name, cls in (("monitor", MonitorActor), ("memory", MemoryManagerActor),
                          ("cache", CacheActor), ("batcher", BatcherActor),
                          ("debouncer", DebouncerActor))
    ]


class ModuleCoordinator:
    """The actor system behind one daemon (or one in-process instance).

    Args:
        config: a validated config directory (default: the packaged configs).
        mode: the initial mode (default: ``daemon.default_mode``).
        clock: time source (default: a real :class:`MonotonicClock`).
        rss_reader: returns the process's resident memory in bytes (default: psutil).
        fault_injection: honour ``crash`` requests (``--allow-fault-injection``).
        on_escalate: called with a reason when the supervisor gives up.
        policy: supervision policy (default from ``daemon.yaml``).
        specs: child specs (default: :func:`default_child_specs` with ``daemon.yaml``'s
            ``supervisor.out_of_process`` — with the real clock only: an injected clock
            keeps every actor in this process, where it can reach them).
    """

    def __init__(
        self,
        config: ConfigSet | None = None,
        *,
        mode: str | None = None,
        clock: Clock | None = None,
        rss_reader: Callable[[], int] | None = None,
        fault_injection: bool = False,
        on_escalate: Callable[[str], None] | None = None,
        policy: SupervisionPolicy | None = None,
        specs: Sequence[ChildSpec] | None = None,
    ) -> None:
        self.config = config or load_config_dir()
        self.mode = normalize_mode(mode or self.config.daemon.default_mode)
        self.clock: Clock = clock or MonotonicClock()
        self._owns_clock = clock is None
        process = psutil.Process()
        self._rss_reader = rss_reader or (lambda: int(process.memory_info().rss))
        sup = self.config.daemon.supervisor
        self.policy = policy or SupervisionPolicy(
            max_restarts=sup.max_restarts, within_s=sup.within_s,
            backoff_initial_s=sup.backoff_initial_ms / 1000.0,
            backoff_max_s=sup.backoff_max_ms / 1000.0,
        )
        self.fault_injection = fault_injection
        self.on_escalate = on_escalate
        self.escalated: str | None = None
        self.specs = list(specs or default_child_specs(
            sup.out_of_process if self._owns_clock else ()))
        settings = self.config.mode(self.mode)
        # Accepted updates an actor process holds, kept here against its death.
        self.ledger = UpdateLedger()
        self.shared = Shared.create(
            self.clock, settings, deliver=self._deliver, rss_reader=self._rss_reader,
            connection_states=self._connection_states, notify_swept=self._notify_swept,
            release_buffers=self._release_buffers,
            compute=self.compute, settled=self.ledger.release_updates,
        )
        # The hot path's objects, read in the caller's thread (no actor hop).
        self.metrics: MetricsRegistry = self.shared.metrics
        self.cache_store: CacheStore = self.shared.cache_store
        self.queue_gauge: QueueGauge = self.shared.queue_gauge
        self.activity: ActivityTable = self.shared.activity
        self.demand: Demand = self.shared.demand
        self.backlog: Backlog = self.shared.backlog
        self.handles: dict[str, ActorHandle] = {s.name: ActorHandle(s.name) for s in self.specs}
        self.hosting: ProcessHosting | None = None
        if any(s.process for s in self.specs):
            from modcoord.supervisor.processes.host import ProcessHosting

            self.hosting = ProcessHosting(
                tuple(s.name for s in self.specs if s.process), self.handles, self.shared,
                self.ledger, heartbeat_interval=sup.heartbeat_interval_ms / 1000.0,
                heartbeat_timeout=sup.heartbeat_timeout_ms / 1000.0,
                plugins=lambda: self.config.mode(self.mode).plugins)
        self._endpoints: dict[str, ModuleEndpoint] = {}
        self._infos: dict[str, ModuleInfo] = {}
        self._modules_lock = threading.Lock()
        self._supervisor: Any = None
        self._started_at = time.monotonic()
        self._running = False
        self.undeliverable = 0
        self.callback_timeout_s = self.config.daemon.callback_timeout_ms / 1000.0
        self._log = logger.bind(actor="coordinator")
        # Modules' own get_performance_metrics(), polled every
        # monitor.module_metrics_interval_ms (see module_metrics.py).
        self.module_metrics = ModuleMetricsTable(self.clock.monotonic)
        self._poll_timer: Any = None
        # Publish intake (intake.py): checks, admission, hand-over to the debouncer.
        self.intake = Intake(
            clock=self.clock, infos=self._infos,
            max_frame_bytes=self.config.daemon.max_frame_bytes,
            queue_gauge=self.queue_gauge, backlog=self.backlog,
            handles=self.handles, touch=self._touch,
        )
        # The coordinate path (coordination.py): cache, single flight, fan-out.
        self.coordination = Coordination(
            clock=self.clock, store=self.cache_store, demand=self.demand,
            metrics=self.metrics, touch=self._touch, targets=self._mode_targets,
            strategy=self._strategy, callback_timeout_s=lambda: self.callback_timeout_s,
        )

    # -- lifecycle --

    def start(self) -> ModuleCoordinator:
        """Start the supervisor and its children. Returns self.

        Raises:
            CallTimeoutError: the children did not start within 10 s.
        """
        self._supervisor = SupervisorActor.start(
            self.specs, self.handles, self.config.modes, self.mode, self.clock,
            policy=self.policy, shared=self.shared, fault_injection=self.fault_injection,
            on_escalate=self._escalated, hosting=self.hosting,
        )
        self._supervisor.ask(StartChildren(), timeout=10.0)
        self._started_at = time.monotonic()
        self._running = True
        self._arm_module_metrics()
        self._log.info("coordinator started")
        return self

    def _arm_module_metrics(self) -> None:
        interval = self.config.mode(self.mode).monitor.module_metrics_interval_ms / 1000.0
        self._poll_timer = self.clock.call_at(self.clock.monotonic() + interval,
                                              self._poll_module_metrics)

    def _poll_module_metrics(self) -> None:
        """Timer callback (the clock's thread): ask the modules that offer
        ``get_performance_metrics()``; the answers come on I/O threads. Never blocks."""
        if not self._running:
            return
        try:
            with self._modules_lock:
                targets = [(m, self._endpoints[m]) for m, info in self._infos.items()
                           if info.has_metrics and m in self._endpoints]
            cap = self.config.mode(self.mode).monitor.module_metrics_max
            self.module_metrics.poll(targets, self.callback_timeout_s, cap)
        except Exception:
            self._log.opt(exception=True).error("polling module metrics failed")
        finally:
            self._arm_module_metrics()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully: children stop in reverse order, flushing pending work."""
        if not self._running:
            return
        self._running = False
        if self._poll_timer is not None:
            self._poll_timer.cancel()
        try:
            self._supervisor.ask(StopChildren(timeout=timeout), timeout=timeout + 5.0)
        except Exception:
            self._log.opt(exception=True).error("stopping children failed")
        try:
            self._supervisor.stop(timeout=timeout)
        except Exception:
            self._log.opt(exception=True).error("stopping the supervisor failed")
        self.shared.plugins.close()
        if self._owns_clock and isinstance(self.clock, MonotonicClock):
            self.clock.close()
        self._log.info("coordinator stopped")

    def __enter__(self) -> ModuleCoordinator:
        return self.start() if not self._running else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._running

    @property
    def plugins(self) -> PluginHost:
        """The plugins of the mode in force (``shared.plugins``)."""
        return self.shared.plugins

    def _escalated(self, reason: str) -> None:
        # ``_running`` stays True: ``stop()`` must still stop the supervisor actor and the
        # clock (non-daemon threads) or the process never exits; ``is_coordinating``
        # already reads ``escalated``.
        self.escalated = reason
        if self.on_escalate is not None:
            self.on_escalate(reason)

    def _ask_supervisor(self, message: Any, timeout: float = 5.0) -> Any:
        try:
            return self._supervisor.ask(message, timeout=timeout)
        except Exception as exc:
            if isinstance(exc, ModcoordError):
                raise
            import pykka

            if isinstance(exc, pykka.Timeout):
                raise CallTimeoutError(f"supervisor: no reply within {timeout} s") from exc
            raise

    # -- modules --

    def register(self, info: ModuleInfo, endpoint: ModuleEndpoint) -> Registration:
        """Register a module reached through ``endpoint``.

        Raises:
            InvalidMessageError: another live module already uses this id.
        """
        with self._modules_lock:
            current = self._endpoints.get(info.module_id)
            if current is not None and current is not endpoint:
                raise InvalidMessageError(
                    f"module id {info.module_id!r} is already registered by another client"
                )
            self._endpoints[info.module_id] = endpoint
            self._infos[info.module_id] = info
        reply = self._ask_supervisor(RegisterModule(info))
        self.activity.touch(info.module_id)
        logger.bind(actor="supervisor", module=info.module_id).info(
            "module registered", name=info.name)
        strategy = self._strategy(self.mode)
        return Registration(module_id=info.module_id, mode=reply["mode"], strategy=strategy)

    def register_module(self, module: Any) -> Registration:
        """Register an in-process module object (callbacks run in the caller's threads)."""
        return self.register(ModuleInfo.of(module), LocalEndpoint(module))

    def unregister(self, module_id: str, endpoint: ModuleEndpoint | None = None) -> bool:
        """Unregister a module (its subscriptions and activity tracking go too)."""
        with self._modules_lock:
            current = self._endpoints.get(module_id)
            if current is None or (endpoint is not None and current is not endpoint):
                return False
            del self._endpoints[module_id]
            self._infos.pop(module_id, None)
        self.module_metrics.forget(module_id)
        if self._running:  # after stop() the actors are gone: nothing left to route to
            self._ask_supervisor(UnregisterModule(module_id))
        logger.bind(actor="supervisor", module=module_id).info("module unregistered")
        return True

    def modules(self) -> dict[str, ModuleInfo]:
        with self._modules_lock:
            return dict(self._infos)

    def _deliver(self, subscriber_id: str, batch: Batch) -> None:
        endpoint = self._endpoints.get(subscriber_id)
        if endpoint is None:
            self.undeliverable += len(batch.updates)
            logger.bind(actor="batcher", module=subscriber_id).warning(
                "batch for a module that went away", batch=batch.batch_id,
                updates=len(batch.updates))
            return
        endpoint.deliver(subscriber_id, batch)

    # -- publish --

    def publish(self, module_id: str, key: str, payload: Any, priority: str = "medium") -> int:
        """Publish one update; returns its sequence number.

        Raises:
            InvalidMessageError: unknown module or priority.
            QueueFullError: the batch queue is full (backpressure); nothing was accepted.
        """
        (result,) = self.publish_many([(module_id, key, payload, priority)])
        if isinstance(result, BaseException):
            raise result
        return int(result)

    def publish_many(self, items: Iterable[PublishItem]) -> list[int | ModcoordError]:
        """Publish several updates in one hop; per item, its seq or the error refusing it
        (:meth:`Intake.publish_many <modcoord.supervisor.daemon.intake.Intake.publish_many>`:
        admission once per call, only deliverable updates accepted)."""
        return self.intake.publish_many(items)

    def publish_backlog(self) -> int:
        """Updates accepted but not yet taken in by the debouncer (for flow control)."""
        return self.backlog.value

    def timers_overdue(self, grace: float = 0.0005) -> bool:
        """Whether a debounce deadline passed more than ``grace`` seconds ago unserved
        (the server then holds publishers back: timers come before intake)."""
        return self.intake.timers_overdue(grace)

    def _touch(self, module_id: str) -> None:
        if self.activity.touch(module_id):
            self.handles["memory"].tell(Reactivate(module_id))

    def _connection_states(self, stall_s: float) -> dict[str, bool]:
        """For the memory manager: module id → whether its connection is live (open and
        taking its output; see ``Connection.live``). Modules whose endpoint cannot tell
        (in-process objects) are left out: only their calls count as activity."""
        with self._modules_lock:
            endpoints = list(self._endpoints.items())
        states: dict[str, bool] = {}
        for module_id, endpoint in endpoints:
            live = getattr(endpoint, "live", None)
            if callable(live):
                try:
                    states[module_id] = bool(live(stall_s))
                except Exception:
                    self._log.bind(module=module_id).opt(exception=True).error(
                        "liveness unknown")
        return states

    def _notify_swept(self, module_id: str, notice: dict[str, Any]) -> None:
        """For the memory manager: tell a swept module (a ``swept`` event on its
        connection) where its endpoint can; never raises."""
        endpoint = self._endpoints.get(module_id)
        swept = getattr(endpoint, "swept", None)
        if not callable(swept):
            return
        try:
            swept(module_id, notice)
        except Exception:
            self._log.bind(module=module_id).opt(exception=True).error(
                "could not tell the module it was swept")

    def _release_buffers(self) -> None:
        """For the memory manager's full cleanups: each module connection gives back the
        buffer capacity a burst left behind (in the I/O thread); never raises."""
        with self._modules_lock:
            endpoints = {id(e): e for e in self._endpoints.values()}.values()
        for endpoint in endpoints:
            release = getattr(endpoint, "release_buffers", None)
            if callable(release):
                try:
                    release()
                except Exception:
                    self._log.opt(exception=True).error("buffers not released")

    # -- coordinate --

    def _strategy(self, mode: str) -> str:
        return str(self.config.mode(mode).memory.strategy)

    def coordinate(self, mode: str, context: dict[str, Any] | None = None,
                   reply: Reply | None = None, caller: Sequence[str] = (),
                   timeout: float = 5.0) -> CoordinationResult | None:
        """Coordinate the modules for ``mode`` and ``context``
        (:meth:`Coordination.coordinate <modcoord.supervisor.daemon.coordination.
        Coordination.coordinate>`: a reply at once with ``reply``, else a blocking
        :class:`CoordinationResult`).

        Raises:
            InvalidMessageError: unknown mode or a context that is not plain data.
            CallTimeoutError: (blocking form) no result within ``timeout``.
        """
        return self.coordination.coordinate(mode, context, reply, caller, timeout)

    def compute(self, mode: str, context: dict[str, Any], done: Computed) -> None:
        """Compute the coordination result of ``mode`` and ``context`` by asking the modules
        (:meth:`Coordination.compute <modcoord.supervisor.daemon.coordination.Coordination.
        compute>`); ``done(value, cacheable)`` runs once, in any thread. Never raises."""
        self.coordination.compute(mode, context, done)

    def _mode_targets(self, mode: str) -> list[tuple[str, ModuleEndpoint]]:
        """The registered modules supporting ``mode``, with their endpoints."""
        with self._modules_lock:
            return [(m, self._endpoints[m]) for m, info in self._infos.items()
                    if mode in info.supported_modes]

    # -- control --

    def set_mode(self, mode: str, timeout: float | None = None) -> ModeSwitch:
        """Switch mode: reconfigure every actor live, then call every module's
        ``on_mode_change``, then let the cache pre-warm the new mode's most read contexts
        (``cache.prewarm``). Pending work is kept.

        Raises:
            InvalidMessageError: unknown mode.
        """
        canonical = wire_mode(mode)
        previous = self._ask_supervisor(SetMode(canonical))
        self.mode = canonical
        self.queue_gauge.max_queue = self.config.mode(canonical).batch.max_queue
        self._apply_plugins(self.config.mode(canonical).plugins)
        strategy = self._strategy(canonical)
        with self._modules_lock:
            targets = list(self._endpoints.items())
        box: dict[str, Any] = {}
        event = threading.Event()

        def done(results: dict[str, Any], errors: dict[str, str]) -> None:
            box.update(results=results, errors=errors)
            event.set()

        fan_out(self.clock, self.callback_timeout_s, targets, canonical, strategy,
                {"previous_mode": previous}, done)
        event.wait(timeout if timeout is not None else self.callback_timeout_s + 1.0)
        with contextlib.suppress(ModcoordError):  # a restarting cache: nothing pre-warmed
            self.handles["cache"].tell(Prewarm(canonical))
        return ModeSwitch(mode=canonical, previous=previous, strategy=strategy,
                          results=box.get("results", {}), errors=box.get("errors", {}))

    def _apply_plugins(self, settings: PluginSettings) -> None:
        """Load the plugins of ``settings`` here and in every actor process."""
        self.shared.apply_plugins(settings)
        if self.hosting is not None:
            self.hosting.apply_plugins(settings)

    def apply_config(self, config: ConfigSet) -> None:
        """Swap in a new validated config (a reload); actors reconfigured live."""
        self.config = config
        self.cache_store.reconfigure(config.mode(self.mode).cache)
        self.queue_gauge.max_queue = config.mode(self.mode).batch.max_queue
        self.callback_timeout_s = config.daemon.callback_timeout_ms / 1000.0
        self._apply_plugins(config.mode(self.mode).plugins)
        self._ask_supervisor(ApplySettings(config.modes))

    def crash(self, actor: str, kind: str = "exception", *, kill: bool = False) -> None:
        """Fault injection: make ``actor`` fail (only with fault injection enabled);
        ``kill``: SIGKILL the process of an actor that runs in one of its own.

        Raises:
            InvalidMessageError: fault injection disabled, or unknown actor/kind, or
                ``kill`` for an actor inside the daemon.
        """
        self._ask_supervisor(CrashChild(actor, kind, kill))

    def actor_call(self, actor: str, method: str, args: dict[str, Any] | None = None,
                   timeout: float = 5.0, posargs: Sequence[Any] = ()) -> Any:
        """Call an actor's method by name (``cache``, ``statistics``).

        Raises:
            InvalidMessageError: unknown actor or method (naming the valid ones), or
                arguments that do not fit the method's declaration in
                :data:`~modcoord.supervisor.protocol.calls.ACTOR_CALLS` (naming the
                argument).
        """
        params = bind_actor_args(actor, method, posargs, args or {})
        message = ACTOR_MESSAGES[actor, method](**params.to_wire())
        return plain(self.handles[actor].ask(message, timeout=timeout))

    def statistics(self, actor: str, timeout: float = 5.0) -> Any:
        """Return the statistics snapshot of ``actor``."""
        return self.handles[actor].ask(Statistics(), timeout=timeout)

    def status(self) -> dict[str, Any]:
        """The status document: the dict ``status --json`` prints (fields: docs/REFERENCE.md;
        assembled by :func:`~modcoord.supervisor.daemon.status.status_document`)."""
        doc = status_document(
            typed=gather_statistics(self.handles),
            children=self._ask_supervisor(ChildStatus()),
            metrics=self.metrics,
            started_at=self._started_at,
            mode=self.mode,
            strategy=self._strategy(self.mode),
            coordinating=self._running and not self.escalated,
            modules=len(self._infos),
            rss_reader=self._rss_reader,
            max_queue=self.queue_gauge.max_queue,
            undeliverable=self.undeliverable,
            plugins=self.shared.plugins,
            module_metrics=self.module_metrics,
            rejected=self.queue_gauge.rejected,
        ) | {"engine": {"kind": "local"}}
        if self.hosting is not None:
            doc["plugins"] = self.hosting.plugin_statistics(doc["plugins"])
        return doc

    def deliver(self, subscriber_id: str, batch: Batch) -> None:
        """Hand ``batch`` to the local module ``subscriber_id`` (its endpoint queues it,
        never blocking); a module that went away is counted in ``undeliverable`` and
        logged. Another engine delivering through this one (NATS) calls it."""
        self._deliver(subscriber_id, batch)

    def insights(self) -> dict[str, Any]:
        """Insights and recommendations (the dict ``insights --json`` prints)."""
        result: dict[str, Any] = self.handles["monitor"].ask(Insights(), timeout=5.0)
        return result

    def optimize(self) -> OptimizeReport:
        """Flush pending debounces and batches (never drop), clear the cache, clean memory."""
        flushed = self.handles["debouncer"].ask(Flush(), timeout=5.0)
        delivered = self.handles["batcher"].ask(FlushBatches(), timeout=5.0)
        cleared = self.handles["cache"].ask(Clear(), timeout=5.0)
        report = self.handles["memory"].ask(ForceCleanup(), timeout=10.0)
        self._log.info("optimized", flushed=flushed, delivered=delivered,
                       cache_cleared=cleared)
        return OptimizeReport(debounces_flushed=flushed, updates_delivered=delivered,
                              cache_cleared=cleared, memory=plain(report))

    def status_brief(self) -> StatusBrief:
        """Pid and mode, without blocking (for ``hello``)."""
        return StatusBrief(pid=os.getpid(), mode=self.mode)


LocalEngine = ModuleCoordinator
"""The in-process engine (:class:`~modcoord.supervisor.daemon.engine.Engine`): the default,
and today the only one."""

