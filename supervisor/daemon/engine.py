"""The engine seam: the one typed interface between the daemon and the coordination core.

The daemon's server and controller reach the core — module registry, publish path,
coordination, modes, actors — only through :class:`Engine`. The default
implementation is the in-process actor system
(:class:`~modcoord.supervisor.daemon.coordinator.ModuleCoordinator`, alias
``LocalEngine``), built by :func:`create_engine`, which the daemon process calls; the
second, ``engine: {kind: nats}``, spreads the core over several hosts through NATS
(:mod:`modcoord.supervisor.daemon.nats`). The server, the protocol and the client are the
same for both.

Threads: the data calls (``publish_many``, ``publish_backlog``, ``timers_overdue``,
``coordinate``, ``status_brief``) run on the server's I/O thread and must not block;
``register``/``unregister`` run on the registration thread; the control calls may block
(they run on control threads). Every method documents what it raises; a refusal is a
:class:`~modcoord.actors.errors.ModcoordError` whose type name reaches the client.

Results shared with the server are typed (frozen dataclasses with ``as_dict()`` giving
the wire form); ``status`` and ``insights`` return their documents (every ``status``
field is listed in docs/REFERENCE.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from modcoord.actors.errors import ModcoordError
from modcoord.actors.reply import Reply
from modcoord.supervisor.protocol.calls import CoordinationResult, Params
from modcoord.supervisor.protocol.module import ModuleEndpoint, ModuleInfo

if TYPE_CHECKING:
    from modcoord.actors.plugins import PluginHost
    from modcoord.actors.shared.metrics import MetricsRegistry
    from modcoord.supervisor.daemon.config import ConfigSet

__all__ = [
    "ENGINES",
    "Accepted",
    "Engine",
    "ModeSwitch",
    "OptimizeReport",
    "PublishItem",
    "Registration",
    "ServerBackend",
    "StatusBrief",
    "create_engine",
]

PublishItem = tuple[str, str, Any, str]
"""One publish: ``(module_id, key, payload, priority)``."""


class Accepted:
    """A publish result that is not known yet: ``publish_many`` may return one in an
    item's place when the update counts as accepted only later (the NATS engine: once
    JetStream acknowledged it). The server answers the publisher when it settles.

    :meth:`settle` runs the callbacks once, with the sequence number or the error refusing
    the update; a callback added after that runs at once. Thread-safe; callbacks run in
    the settling thread and must not block (an exception in one is logged by the caller).
    """

    __slots__ = ("_callbacks", "_lock", "_result")

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._callbacks: list[Callable[[int | ModcoordError], None]] = []
        self._result: int | ModcoordError | None = None

    @property
    def result(self) -> int | ModcoordError | None:
        """The outcome, or None while unsettled."""
        return self._result

    def on_settled(self, callback: Callable[[int | ModcoordError], None]) -> None:
        """Call ``callback(result)`` once the outcome is known (at once if it is)."""
        with self._lock:
            if self._result is None:
                self._callbacks.append(callback)
                return
            result = self._result
        callback(result)

    def settle(self, result: int | ModcoordError) -> None:
        """Record the outcome and run the callbacks (a second settle is ignored)."""
        with self._lock:
            if self._result is not None:
                return
            self._result = result
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(result)


# -- typed results -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Registration:
    """The answer to ``register``: the id registered, the current mode and its strategy."""

    module_id: str
    mode: str
    strategy: str

    def as_dict(self) -> dict[str, Any]:
        return {"module_id": self.module_id, "mode": self.mode, "strategy": self.strategy}


@dataclass(frozen=True, slots=True)
class ModeSwitch:
    """The answer to ``set_mode``.

    Attributes:
        mode: the canonical mode now in force.
        previous: the mode before.
        strategy: the new mode's memory strategy.
        results: module id → what its ``on_mode_change`` returned.
        errors: module id → error text (failed, or no answer in time).
    """

    mode: str
    previous: str
    strategy: str
    results: Mapping[str, Any] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "previous": self.previous, "strategy": self.strategy,
                "results": dict(self.results), "errors": dict(self.errors)}


@dataclass(frozen=True, slots=True)
class OptimizeReport:
    """The answer to ``optimize``.

    Attributes:
        debounces_flushed: pending debounced updates handed on now.
        updates_delivered: queued updates delivered now.
        cache_cleared: cache entries removed.
        memory: the forced cleanup's report (its ``as_dict()`` form).
    """

    debounces_flushed: int
    updates_delivered: int
    cache_cleared: int
    memory: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"debounces_flushed": self.debounces_flushed,
                "updates_delivered": self.updates_delivered,
                "cache_cleared": self.cache_cleared, "memory": dict(self.memory)}


@dataclass(frozen=True, slots=True)
class StatusBrief:
    """What ``hello`` reports without blocking: the daemon's pid and the current mode."""

    pid: int
    mode: str

    def as_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "mode": self.mode}


# -- the interface -------------------------------------------------------------------------


class Engine(Protocol):
    """The coordination core, as the daemon sees it (see the module docstring)."""

    @property
    def mode(self) -> str:
        """The current canonical mode."""
        ...

    @property
    def config(self) -> ConfigSet:
        """The validated config in force."""
        ...

    @property
    def metrics(self) -> MetricsRegistry:
        """Latency histograms and counters (for the metrics exposition)."""
        ...

    @property
    def plugins(self) -> PluginHost:
        """The plugins the current mode names and their guards (exporters read it)."""
        ...

    @property
    def running(self) -> bool:
        """Whether :meth:`start` ran and :meth:`stop` did not."""
        ...

    # -- lifecycle --

    def start(self) -> Engine:
        """Start the core. Raises CallTimeoutError if it does not come up in time."""
        ...

    def stop(self, timeout: float = 10.0) -> None:
        """Stop, delivering pending work first (never raises)."""
        ...

    # -- data calls --

    def register(self, info: ModuleInfo, endpoint: ModuleEndpoint) -> Registration:
        """Register a module reached through ``endpoint``.

        Raises:
            InvalidMessageError: another live endpoint already uses this id.
        """
        ...

    def unregister(self, module_id: str, endpoint: ModuleEndpoint | None = None) -> bool:
        """Unregister ``module_id`` if registered (through ``endpoint``, when given);
        returns whether it was."""
        ...

    def publish_many(self, items: Sequence[PublishItem]
                     ) -> Sequence[int | ModcoordError | Accepted]:
        """Publish the items in order; per item its sequence number, the error refusing
        it (InvalidMessageError, QueueFullError), or an :class:`Accepted` settling later
        with one of those. Never raises for one bad item."""
        ...

    def publish_backlog(self) -> int:
        """Updates accepted but not yet taken in (the server's flow control reads it)."""
        ...

    def timers_overdue(self) -> bool:
        """Whether a debounce deadline has passed unserved (publishers wait meanwhile)."""
        ...

    def coordinate(self, mode: str, context: dict[str, Any] | None = None,
                   reply: Reply | None = None, caller: Sequence[str] = (),
                   timeout: float = 5.0) -> CoordinationResult | None:
        """Coordinate the modules for ``mode`` and ``context``.

        With ``reply`` (the server's form): returns None at once and calls
        ``reply(result_map, None)`` or ``reply(None, error)`` exactly once, from any
        thread; an unknown mode or a context that is not plain data is an
        InvalidMessageError given to ``reply``. Without it: blocks up to ``timeout`` and
        returns the result (raising the error, or CallTimeoutError).
        """
        ...

    def status_brief(self) -> StatusBrief:
        """Pid and mode, without blocking."""
        ...

    # -- control calls --

    def set_mode(self, mode: str, timeout: float | None = None) -> ModeSwitch:
        """Switch mode live (pending work kept) and tell every module.

        Raises:
            InvalidMessageError: unknown mode.
        """
        ...

    def status(self) -> dict[str, Any]:
        """The status document (every field in docs/REFERENCE.md)."""
        ...

    def insights(self) -> dict[str, Any]:
        """``{"insights": [...], "recommendations": [...], "status": ...}``."""
        ...

    def optimize(self) -> OptimizeReport:
        """Flush pending work (never drop), clear the cache, force a memory cleanup."""
        ...

    def actor_call(self, actor: str, method: str, args: dict[str, Any] | None = None,
                   timeout: float = 5.0, posargs: Sequence[Any] = ()) -> Any:
        """Call an actor's method by name; the reply in its wire form.

        Raises:
            InvalidMessageError: unknown actor, method or arguments.
        """
        ...

    def crash(self, actor: str, kind: str = "exception", *, kill: bool = False) -> None:
        """Fault injection: make ``actor`` fail (``kill``: SIGKILL its process).

        Raises:
            InvalidMessageError: fault injection is disabled, or unknown actor or kind,
                or ``kill`` for an actor that runs inside the daemon.
        """
        ...

    def apply_config(self, config: ConfigSet) -> None:
        """Swap in a new validated config (a reload), live."""
        ...


# -- the implementations -------------------------------------------------------------------


def _local(config: ConfigSet, *, mode: str, fault_injection: bool,
           on_escalate: Callable[[str], None]) -> Engine:
    from modcoord.supervisor.daemon.coordinator import ModuleCoordinator

    return ModuleCoordinator(config, mode=mode, fault_injection=fault_injection,
                             on_escalate=on_escalate)


def _nats(config: ConfigSet, *, mode: str, fault_injection: bool,
          on_escalate: Callable[[str], None]) -> Engine:
    try:
        from modcoord.supervisor.daemon.nats.engine import NatsEngine
    except ImportError as exc:  # nats-py missing
        raise ValueError(f"engine.kind nats needs nats-py ({exc}): install "
                         "modcoord[nats]") from None
    return NatsEngine(config, mode=mode, fault_injection=fault_injection,
                      on_escalate=on_escalate)


ENGINES: dict[str, Callable[..., Engine]] = {"local": _local, "nats": _nats}
"""Engine factories by name; ``local`` (the in-process actor system) is the default,
``nats`` spreads it over a NATS cluster (:mod:`modcoord.supervisor.daemon.nats`)."""


def create_engine(config: ConfigSet, *, mode: str, fault_injection: bool = False,
                  on_escalate: Callable[[str], None], kind: str | None = None) -> Engine:
    """Build (not start) the engine the daemon serves.

    Args:
        config: the validated config directory.
        mode: the initial canonical mode.
        fault_injection: honour ``crash`` requests.
        on_escalate: called with the reason when the core gives up (the daemon exits).
        kind: which implementation (:data:`ENGINES`); default ``daemon.yaml``
            ``engine.kind``.

    Raises:
        ValueError: unknown ``kind`` (names the known ones), or nats-py missing.
    """
    if kind is None:
        kind = config.daemon.engine.kind
    factory = ENGINES.get(kind)
    if factory is None:
        raise ValueError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")
    return factory(config, mode=mode, fault_injection=fault_injection,
                   on_escalate=on_escalate)


class ServerBackend(Protocol):
    """What the socket server needs behind it: the data calls of an :class:`Engine` plus
    ``call`` for the control calls (the daemon's ``Controller`` provides it, over whichever
    :class:`Engine` the daemon built; the server depends on nothing else).

    Every method may be called from the I/O thread except ``call`` (control threads) and
    ``register``/``unregister`` (the registration thread); those on the I/O thread must
    not block. ``publish_backlog() -> int`` (updates accepted but not yet taken in by the
    debouncer) is optional: without it there is no flow control.
    """

    def register(self, info: ModuleInfo, endpoint: ModuleEndpoint) -> Any:
        """Register a module reachable through ``endpoint``; returns a wire-friendly value.

        Raises:
            ModcoordError: refused (e.g. the id is taken by another connection).
        """
        ...

    def unregister(self, module_id: str, endpoint: ModuleEndpoint | None = None) -> Any:
        """Unregister ``module_id`` if it is still registered through ``endpoint``."""
        ...

    def publish_many(self, items: Sequence[tuple[str, str, Any, str]]) -> Sequence[Any]:
        """Publish ``(module_id, key, payload, priority)`` items; per item a seq or an error."""
        ...

    def coordinate(self, mode: str, context: dict[str, Any],
                   reply: Callable[[Any, BaseException | None], None],
                   caller: Sequence[str] = ()) -> Any:
        """Coordinate; ``reply(result_dict, None)`` or ``reply(None, exc)`` exactly once."""
        ...

    def call(self, method: str, params: Params) -> Any:
        """A control call (blocking; runs on a control thread) with its decoded params
        (the struct its :data:`~modcoord.supervisor.protocol.calls.CALLS` entry declares).

        Raises:
            ModcoordError: the call failed (its type name goes to the client).
        """
        ...

    def status_brief(self) -> dict[str, Any]:
        """``{"pid", "mode"}`` for ``hello`` (non-blocking)."""
        ...
