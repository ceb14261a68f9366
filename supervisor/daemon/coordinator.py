"""The ModuleCoordinator: the in-process engine the daemon serves, usable in-process too.

It implements :class:`~modcoord.supervisor.daemon.engine.Engine` (alias ``LocalEngine``):
it owns the actor system — the supervisor, the five children and the
:class:`~modcoord.actors.shared.Shared` objects they maintain — and offers register,
publish, coordinate, mode switches, status, insights, optimize and per-actor calls.

Hot paths avoid actor hops (see docs/ARCHITECTURE.md, rule 9): ``publish_many`` hands one
message per call to the debouncer; ``coordinate`` answers cache hits from the
:class:`~modcoord.actors.shared.cache_store.CacheStore` in the caller's thread and
computes misses once per key (single flight) by calling every module's
``on_mode_change`` (:mod:`~modcoord.supervisor.daemon.fanout`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psutil
from loguru import logger

from modcoord.actors._base import ActorHandle, Statistics
from modcoord.actors.batcher import BatcherActor, FlushBatches, QueueDepth
from modcoord.actors.cache import CacheActor, Clear, Prewarm, Purge, Shrink
from modcoord.actors.clock import Clock, MonotonicClock
from modcoord.actors.debouncer import Cancel, DebouncerActor, Flush, Pending, PublishMany
from modcoord.actors.errors import (
    CallTimeoutError,
    InvalidMessageError,
    ModcoordError,
    QueueFullError,
)
from modcoord.actors.memory import ForceCleanup, MemoryManagerActor, Reactivate
from modcoord.actors.message import Message
from modcoord.actors.modes import mode_or_none
from modcoord.actors.monitor import (
    Insights,
    Latencies,
    MonitorActor,
    Trim,
    adaptive_summaries,
)
from modcoord.actors.plugins import PluginHost
from modcoord.actors.reply import Reply, ReplyBox
from modcoord.actors.shared import Computed, Shared
from modcoord.actors.shared.activity import ActivityTable
from modcoord.actors.shared.admission import Backlog, QueueGauge
from modcoord.actors.shared.cache_store import CacheStore, cache_key
from modcoord.actors.shared.demand import Demand
from modcoord.actors.shared.metrics import MetricsRegistry
from modcoord.actors.tuning import AdaptiveSummary, DebounceSummary, ResourceSummary
from modcoord.actors.update import PRIORITY_RANK, Batch, Update
from modcoord.supervisor.daemon.config import ConfigSet, load_config_dir, normalize_mode
from modcoord.supervisor.daemon.engine import (
    ModeSwitch,
    OptimizeReport,
    PublishItem,
    Registration,
    StatusBrief,
)
from modcoord.supervisor.daemon.fanout import fan_out
from modcoord.supervisor.daemon.module_metrics import ModuleMetricsTable
from modcoord.supervisor.protocol.calls import (
    ACTOR_CALLS,
    ACTOR_NAMES,
    CoordinationResult,
    bind_actor_args,
)
from modcoord.supervisor.protocol.module import LocalEndpoint, ModuleEndpoint, ModuleInfo
from modcoord.supervisor.protocol.wire import check_payload, payload_packer
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

__all__ = [
    "ACTOR_NAMES",
    "CoordinationResult",
    "LocalEngine",
    "ModuleCoordinator",
    "default_child_specs",
]


def default_child_specs() -> list[ChildSpec]:
    """The children in start order: monitor first, debouncer last (stopped first)."""
    return [
        ChildSpec("monitor", MonitorActor),
        ChildSpec("memory", MemoryManagerActor),
        ChildSpec("cache", CacheActor),
        ChildSpec("batcher", BatcherActor),
        ChildSpec("debouncer", DebouncerActor),
    ]


def _checked(messages: dict[tuple[str, str], type[Message]]
             ) -> dict[tuple[str, str], type[Message]]:
    """``messages`` if it covers exactly the protocol's actor methods, each message's
    fields being exactly the method's params (checked at import).

    Raises:
        RuntimeError: the two tables disagree (a method added on one side only, or a
            parameter renamed), naming the difference.
    """
    declared = {(actor, name): decl for actor, methods in ACTOR_CALLS.items()
                for name, decl in methods.items()}
    if set(messages) != set(declared):
        raise RuntimeError(
            "the coordinator's actor messages and the protocol's ACTOR_CALLS disagree: "
            f"only in ACTOR_CALLS {sorted(set(declared) - set(messages))}, only in the "
            f"coordinator {sorted(set(messages) - set(declared))}")
    for where, message in messages.items():
        fields = (tuple(f.name for f in dataclasses.fields(message))
                  if dataclasses.is_dataclass(message) else None)
        params = declared[where].params.__struct_fields__
        if fields != params:
            raise RuntimeError(f"{'.'.join(where)}: message {message.__name__} takes "
                               f"{fields}, ACTOR_CALLS declares {params}")
    return messages


# The message each actor method of the protocol's table sends, built from the method's
# bound and validated params (the protocol validates, this only maps).
_ACTOR_MESSAGES: dict[tuple[str, str], type[Message]] = _checked({
    ("debouncer", "statistics"): Statistics,
    ("debouncer", "flush"): Flush,
    ("debouncer", "cancel"): Cancel,
    ("debouncer", "pending"): Pending,
    ("cache", "statistics"): Statistics,
    ("cache", "clear"): Clear,
    ("cache", "purge"): Purge,
    ("cache", "shrink"): Shrink,
    ("batcher", "statistics"): Statistics,
    ("batcher", "flush"): FlushBatches,
    ("batcher", "queue_depth"): QueueDepth,
    ("memory", "statistics"): Statistics,
    ("memory", "force_cleanup"): ForceCleanup,
    ("monitor", "statistics"): Statistics,
    ("monitor", "latencies"): Latencies,
    ("monitor", "trim"): Trim,
})


def _wire_mode(mode: Any) -> str:
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


def adaptive_status(summaries: Iterable[AdaptiveSummary]) -> dict[str, Any]:
    """The ``status`` document's ``adaptive`` field from the actors' typed summaries
    (serialised here, at the edge): ``enabled`` (any adapts), ``parameters`` (each
    configured, effective, reason, pinned), the debouncer's bounded per-module and per-key
    summary as ``debounce`` and the resource awareness as ``resources`` (while active)."""
    parts = tuple(summaries)
    out: dict[str, Any] = {
        "enabled": any(p.enabled for p in parts),
        "parameters": {k: v.as_dict() for p in parts for k, v in p.parameters.items()},
    }
    for part in parts:
        if part.enabled and isinstance(part, DebounceSummary):
            out["debounce"] = part.details()
        elif part.enabled and isinstance(part, ResourceSummary):
            out["resources"] = part.details()
    return out


def _plain(value: Any) -> Any:
    """Make an actor reply wire-friendly (snapshots → dicts)."""
    as_dict = getattr(value, "as_dict", None)
    if callable(as_dict):
        return as_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


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
        specs: child specs (default: :func:`default_child_specs`).
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
        self.specs = list(specs or default_child_specs())
        settings = self.config.mode(self.mode)
        self.shared = Shared.create(
            self.clock, settings, deliver=self._deliver, rss_reader=self._rss_reader,
            connection_states=self._connection_states, notify_swept=self._notify_swept,
            compute=self.compute,
        )
        # The hot path's objects, read in the caller's thread (no actor hop).
        self.metrics: MetricsRegistry = self.shared.metrics
        self.cache_store: CacheStore = self.shared.cache_store
        self.queue_gauge: QueueGauge = self.shared.queue_gauge
        self.activity: ActivityTable = self.shared.activity
        self.demand: Demand = self.shared.demand
        self.backlog: Backlog = self.shared.backlog
        self.handles: dict[str, ActorHandle] = {s.name: ActorHandle(s.name) for s in self.specs}
        self._endpoints: dict[str, ModuleEndpoint] = {}
        self._infos: dict[str, ModuleInfo] = {}
        self._modules_lock = threading.Lock()
        self._seq = itertools.count(1)
        self._supervisor: Any = None
        self._started_at = time.monotonic()
        self._running = False
        self.undeliverable = 0
        # Every accepted update must fit one delivery frame (checked at publish).
        self.max_frame_bytes = self.config.daemon.max_frame_bytes
        self.callback_timeout_s = self.config.daemon.callback_timeout_ms / 1000.0
        self._log = logger.bind(actor="coordinator")
        # Modules' own get_performance_metrics(), polled every
        # monitor.module_metrics_interval_ms (see module_metrics.py).
        self.module_metrics = ModuleMetricsTable(self.clock.monotonic)
        self._poll_timer: Any = None

    # -- lifecycle --

    def start(self) -> ModuleCoordinator:
        """Start the supervisor and its children. Returns self.

        Raises:
            CallTimeoutError: the children did not start within 10 s.
        """
        self._supervisor = SupervisorActor.start(
            self.specs, self.handles, self.config.modes, self.mode, self.clock,
            policy=self.policy, shared=self.shared, fault_injection=self.fault_injection,
            on_escalate=self._escalated,
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
        """Publish several updates in one hop; per item, its seq or the error refusing it.

        Admission is decided once for the whole call: as many as fit in the batch queue
        are accepted, in order; the rest get :class:`QueueFullError` (and are counted).
        Only deliverable updates are accepted: a payload nested too deeply, that cannot be
        encoded, or whose update would not fit one delivery frame gets
        :class:`InvalidMessageError` naming the limit (:func:`~modcoord.supervisor.protocol.wire.
        check_payload`).
        """
        now = self.clock.monotonic()
        infos = self._infos
        max_frame = self.max_frame_bytes
        pack = payload_packer()
        out: list[Any] = []
        valid: list[int] = []
        for i, (module_id, key, payload, priority) in enumerate(items := list(items)):
            if priority not in PRIORITY_RANK:
                out.append(InvalidMessageError(
                    f"priority must be one of critical, high, medium, low (got {priority!r})"))
            elif module_id not in infos:
                out.append(InvalidMessageError(f"module {module_id!r} is not registered"))
            else:
                try:
                    check_payload(module_id, key, payload, max_frame, pack)
                except InvalidMessageError as exc:
                    out.append(exc)
                    continue
                out.append(None)
                valid.append(i)
        if not valid:
            return out
        take = self.queue_gauge.admit_up_to(len(valid))
        seq = self._seq
        accepted: list[Update] = []
        touched: set[str] = set()
        for n, i in enumerate(valid):
            if n >= take:
                out[i] = QueueFullError(
                    f"batch queue full ({self.queue_gauge.max_queue} updates): publish "
                    "later, or raise batch.max_queue")
                continue
            module_id, key, payload, priority = items[i]
            number = next(seq)
            accepted.append(Update(module_id, key, payload, priority, number, now))
            out[i] = number
            touched.add(module_id)
        if accepted:
            self.backlog.add(len(accepted))
            self.handles["debouncer"].tell(PublishMany(tuple(accepted)))
        for module_id in touched:
            self._touch(module_id)
        return out

    def publish_backlog(self) -> int:
        """Updates accepted but not yet taken in by the debouncer (for flow control)."""
        return self.backlog.value

    def timers_overdue(self, grace: float = 0.0005) -> bool:
        """Whether a debounce deadline passed more than ``grace`` seconds ago unserved.

        The server holds publishers back while this is true: timers come before intake.
        """
        deadline = self.backlog.next_deadline
        return deadline is not None and self.clock.monotonic() - deadline > grace

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

    # -- coordinate --

    def _strategy(self, mode: str) -> str:
        return str(self.config.mode(mode).memory.strategy)

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
            canonical = _wire_mode(mode)
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
        lookup = self.cache_store.lookup(key)
        kind = lookup.kind
        self.demand.read(canonical, key, kind)
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
        self.metrics.record("coordination", elapsed)
        reply({**value, "cached": cached, "latency_ms": elapsed * 1000.0}, None)

    def _compute(self, mode: str, context: dict[str, Any], key: str, reply: Reply,
                 started: float) -> None:
        def done(value: dict[str, Any], cacheable: bool) -> None:
            if cacheable:
                self.cache_store.complete(key, value)
            else:
                self.cache_store.fail(key, None, value)
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
        with self._modules_lock:
            targets = [(m, self._endpoints[m]) for m, info in self._infos.items()
                       if mode in info.supported_modes]

        def finished(results: dict[str, Any], errors: dict[str, str]) -> None:
            done({"mode": mode, "strategy": strategy, "results": results, "errors": errors},
                 not errors)

        fan_out(self.clock, self.callback_timeout_s, targets, mode, strategy, context,
                finished)

    # -- control --

    def set_mode(self, mode: str, timeout: float | None = None) -> ModeSwitch:
        """Switch mode: reconfigure every actor live, then call every module's
        ``on_mode_change``, then let the cache pre-warm the new mode's most read contexts
        (``cache.prewarm``). Pending work is kept.

        Raises:
            InvalidMessageError: unknown mode.
        """
        canonical = _wire_mode(mode)
        previous = self._ask_supervisor(SetMode(canonical))
        self.mode = canonical
        self.queue_gauge.max_queue = self.config.mode(canonical).batch.max_queue
        self.shared.apply_plugins(self.config.mode(canonical).plugins)
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

    def apply_config(self, config: ConfigSet) -> None:
        """Swap in a new validated config (a reload); actors reconfigured live."""
        self.config = config
        self.cache_store.reconfigure(config.mode(self.mode).cache)
        self.queue_gauge.max_queue = config.mode(self.mode).batch.max_queue
        self.callback_timeout_s = config.daemon.callback_timeout_ms / 1000.0
        self.shared.apply_plugins(config.mode(self.mode).plugins)
        self._ask_supervisor(ApplySettings(config.modes))

    def crash(self, actor: str, kind: str = "exception") -> None:
        """Fault injection: make ``actor`` fail (only with fault injection enabled).

        Raises:
            InvalidMessageError: fault injection disabled, or unknown actor/kind.
        """
        self._ask_supervisor(CrashChild(actor, kind))

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
        message = _ACTOR_MESSAGES[actor, method](**params.to_wire())
        return _plain(self.handles[actor].ask(message, timeout=timeout))

    def statistics(self, actor: str, timeout: float = 5.0) -> Any:
        """Return the statistics snapshot of ``actor``."""
        return self.handles[actor].ask(Statistics(), timeout=timeout)

    def _gather_statistics(self, timeout: float = 2.0) -> dict[str, Any]:
        """Every actor's statistics as plain dicts (``None`` for one that did not answer)."""
        return {name: _plain(s) for name, s in self._gather_typed(timeout).items()}

    def _gather_typed(self, timeout: float = 2.0) -> dict[str, Any]:
        """Every actor's statistics object as it is (``None`` for one that did not
        answer)."""
        futures = {}
        for name in ACTOR_NAMES:
            with contextlib.suppress(ModcoordError):  # a stopped actor has no statistics
                futures[name] = self.handles[name].ask_future(Statistics())
        out: dict[str, Any] = {}
        deadline = time.monotonic() + timeout
        for name, future in futures.items():
            try:
                out[name] = future.get(timeout=max(0.01, deadline - time.monotonic()))
            except Exception:
                out[name] = None
        return out

    def status(self) -> dict[str, Any]:
        """The status document: the dict ``status --json`` prints (fields: docs/REFERENCE.md)."""
        typed = self._gather_typed()
        stats = {name: _plain(s) for name, s in typed.items()}
        children = self._ask_supervisor(ChildStatus())
        histogram = self.metrics.histogram("coordination")
        coordination = histogram.recent()
        if not coordination.count:  # nothing in the window (or trimmed): since start
            coordination = histogram.total()
        cache = stats.get("cache") or {}
        batcher = stats.get("batcher") or {}
        memory = stats.get("memory") or {}
        return {
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "mode": self.mode,
            "strategy": self._strategy(self.mode),
            "is_coordinating": self._running and not self.escalated,
            "actors": {
                name: {"alive": c["alive"], "restarts": c["restarts"], "state": c["state"]}
                for name, c in children.items()
            },
            "modules": len(self._infos),
            "performance_metrics": {
                "coordination_latency_ms": {
                    "p50": coordination.p50, "p95": coordination.p95, "p99": coordination.p99,
                    "max": coordination.max, "count": coordination.count,
                },
                "memory_usage_bytes": self._rss_reader(),
                "active_subscriptions": batcher.get("subscribers", 0),
                "cache_hit_rate": cache.get("hit_rate", 0.0),
                "batch_efficiency": batcher.get("efficiency", 0.0),
            },
            "cache_stats": cache,
            "batch_queue": {
                "pending": batcher.get("queue_depth", 0),
                "max_queue": self.queue_gauge.max_queue,
                "rejected": batcher.get("rejected", 0),
            },
            "debouncer": stats.get("debouncer"),
            "batcher": batcher,
            "memory": memory,
            "monitor": stats.get("monitor"),
            "undeliverable": self.undeliverable,
            "adaptive": adaptive_status(adaptive_summaries(typed)),
            "plugins": self.shared.plugins.statistics(),
            "module_metrics": {"modules": self.module_metrics.values(),
                               "statistics": self.module_metrics.statistics()},
            "last_reload_error": None,
        }

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
                              cache_cleared=cleared, memory=_plain(report))

    def status_brief(self) -> StatusBrief:
        """Pid and mode, without blocking (for ``hello``)."""
        return StatusBrief(pid=os.getpid(), mode=self.mode)


LocalEngine = ModuleCoordinator
"""The in-process engine (:class:`~modcoord.supervisor.daemon.engine.Engine`): the default,
and today the only one."""

