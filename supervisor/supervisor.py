"""The supervisor actor: starts the subsystem actors, restarts them, routes modules.

It follows Erlang/OTP's supervisor semantics, adapted to pykka threads:

- **Child specs** (:class:`ChildSpec`): name, actor class, restart policy — ``permanent``
  (always restarted), ``transient`` (restarted after a crash, not after a normal stop) or
  ``temporary`` (never restarted; its buffered messages are failed and counted).
- **Strategy** (:class:`SupervisionPolicy`): ``one_for_one`` restarts the failed child;
  ``one_for_all`` restarts every child; ``rest_for_one`` restarts the failed child and
  those started after it. Children that are restarted alongside hand their pending work
  over (:class:`~modcoord.actors.Handover`) instead of flushing it.
- **Intensity**: more than ``max_restarts`` restarts within ``within_s`` escalates: the
  children are stopped (flushing their work), the reason is logged, and ``on_escalate`` is
  called (the daemon then exits non-zero so a service manager restarts it).
- **Backoff**: the first restart of a child is immediate, later ones (within the intensity
  window) wait ``initial * 2**(n-2)`` seconds with ±20 % jitter, capped at ``max``.

While a child restarts its :class:`~modcoord.actors.ActorHandle` buffers every message,
and the successor takes over the predecessor's pending work, so callers never notice.
The supervisor also holds the current mode and the registry of modules.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

import pykka
from loguru import logger

from modcoord.actors._base import (
    ActorContext,
    ActorHandle,
    Crash,
    FailureReport,
    Handover,
    ManagedActor,
    Reconfigure,
)
from modcoord.actors._pykka import envelope
from modcoord.actors.batcher import Subscribe, Unsubscribe
from modcoord.actors.clock import Clock
from modcoord.actors.errors import ActorStoppedError, InvalidMessageError, ModcoordError
from modcoord.actors.memory import Forget, Track
from modcoord.actors.message import Message
from modcoord.actors.monitor import ForgetModule, Restarted
from modcoord.actors.settings import ModeSettings, actor_settings
from modcoord.actors.shared import Shared
from modcoord.supervisor.protocol.module import ModuleInfo

if TYPE_CHECKING:
    from modcoord.supervisor.processes.host import ProcessHosting

__all__ = [
    "SECTION_OF",
    "ChildFailed",
    "ChildSpec",
    "SupervisionPolicy",
    "SupervisorActor",
]

RestartPolicy = Literal["permanent", "transient", "temporary"]
Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]

SECTION_OF: dict[str, str] = {
    "debouncer": "debounce",
    "cache": "cache",
    "batcher": "batch",
    "memory": "memory",
    "monitor": "monitor",
}
"""Which config section configures which actor."""


@dataclass(frozen=True)
class ChildSpec:
    """How to run one child actor.

    ``process``: run it in a process of its own (:mod:`modcoord.supervisor.processes`)
    rather than as a thread of the daemon; needs the supervisor's ``hosting``.
    """

    name: str
    actor_class: type[ManagedActor]
    restart: RestartPolicy = "permanent"
    process: bool = False


@dataclass(frozen=True)
class SupervisionPolicy:
    """Strategy, intensity and backoff for all children."""

    strategy: Strategy = "one_for_one"
    max_restarts: int = 5
    within_s: float = 30.0
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0
    jitter: float = 0.2


# -- messages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildFailed(Message):
    """A child crashed (sent by the child's thread through ``report_failure``)."""

    name: str
    generation: int
    error: str
    fatal: bool
    handover: Any = None


@dataclass(frozen=True)
class _RestartDue(Message):
    names: tuple[str, ...]
    token: int


@dataclass(frozen=True)
class StartChildren(Message):
    """Start every child in order (once)."""


@dataclass(frozen=True)
class StopChildren(Message):
    """Stop every child in reverse order, each flushing its pending work."""

    timeout: float = 10.0


@dataclass(frozen=True)
class ChildStatus(Message):
    """Reply: ``{name: {"alive": bool, "restarts": int, "state": str}}``."""


@dataclass(frozen=True)
class CrashChild(Message):
    """Fault injection: make the named child fail (``kind`` as in ``Crash``)."""

    name: str
    kind: str = "exception"
    kill: bool = False


@dataclass(frozen=True)
class SetMode(Message):
    """Switch mode: reconfigure every child with that mode's settings."""

    mode: str


@dataclass(frozen=True)
class ApplySettings(Message):
    """New settings for every mode (a reload); the current mode's are applied live."""

    modes: Mapping[str, Any]


@dataclass(frozen=True)
class RegisterModule(Message):
    """A module registered: route it to the batcher (subscriptions) and memory (activity)."""

    info: ModuleInfo


@dataclass(frozen=True)
class UnregisterModule(Message):
    """A module went away: drop its subscriptions and activity tracking."""

    module_id: str


@dataclass(frozen=True)
class Modules(Message):
    """Reply: the registered modules as a tuple of ModuleInfo."""


@dataclass(frozen=True)
class SupervisorStatistics(Message):
    """Reply: a frozen :class:`SupervisorSnapshot`."""


@dataclass(frozen=True)
class SupervisorSnapshot:
    mode: str
    children: Mapping[str, Mapping[str, Any]]
    restarts_total: int
    escalated: str | None
    modules: int


# -- the actor -----------------------------------------------------------------------------


@dataclass
class _Child:
    spec: ChildSpec
    handle: ActorHandle
    generation: int = 0
    restarts: int = 0
    restart_times: deque[float] = field(default_factory=deque)
    state: str = "new"  # new | running | restarting | stopped | failed
    handover: Any = None
    ref: pykka.ActorRef[Any] | None = None


class SupervisorActor(pykka.ThreadingActor):
    """Supervises the subsystem actors (see the module docstring).

    Args:
        specs: the children, in start order.
        handles: a handle per child name (shared with everyone who sends to children).
        modes: settings per mode name.
        mode: the initial mode.
        clock: time and timers (backoff).
        policy: strategy, intensity and backoff.
        shared: the shared objects given to every child's context (default: a fresh
            :meth:`Shared.create` for ``clock`` and the initial mode's settings).
        fault_injection: whether ``Crash`` messages are honoured.
        on_escalate: called with the reason when the intensity limit is passed.
        hosting: starts the children whose spec says ``process`` in processes of their
            own (without it every child runs in the daemon).
    """

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        handles: Mapping[str, ActorHandle],
        modes: Mapping[str, ModeSettings],
        mode: str,
        clock: Clock,
        policy: SupervisionPolicy | None = None,
        shared: Shared | None = None,
        fault_injection: bool = False,
        on_escalate: Callable[[str], None] | None = None,
        rng: random.Random | None = None,
        hosting: ProcessHosting | None = None,
    ) -> None:
        super().__init__()
        self.specs = list(specs)
        self.handles = handles
        self.modes = dict(modes)
        self.mode = mode
        self.clock = clock
        self.policy = policy or SupervisionPolicy()
        self.shared = shared if shared is not None else Shared.create(
            clock, self.modes.get(mode))
        self.fault_injection = fault_injection
        self.on_escalate = on_escalate
        self.rng = rng or random.Random()
        self.hosting = hosting
        self.children: dict[str, _Child] = {
            s.name: _Child(spec=s, handle=handles[s.name]) for s in self.specs
        }
        self.modules: dict[str, ModuleInfo] = {}
        self.escalated: str | None = None
        self._restart_times: deque[float] = deque()
        self._token = 0
        self._log = logger.bind(actor="supervisor")

    # -- dispatch --

    def on_receive(self, message: Any) -> Any:
        handler = getattr(self, "_on_" + type(message).__name__.lstrip("_"), None)
        if handler is None:
            raise InvalidMessageError(f"supervisor does not accept {type(message).__name__}")
        return handler(message)

    # -- lifecycle --

    def _settings_for(self, name: str) -> Any:
        return actor_settings(self.modes[self.mode], SECTION_OF[name], self.mode)

    def _context(self, child: _Child) -> ActorContext:
        me = self.actor_ref

        def report(report: FailureReport) -> None:
            try:
                me.tell(
                    ChildFailed(report.name, report.generation, report.error, report.fatal,
                                report.handover)
                )
            except pykka.ActorDeadError:
                logger.bind(actor=report.name).error("supervisor gone; failure not handled")

        return ActorContext(
            clock=self.clock,
            handles=self.handles,
            report_failure=report,
            generation=child.generation,
            fault_injection=self.fault_injection,
            shared=self.shared,
        )

    def _in_process(self, child: _Child) -> bool:
        """Whether ``child`` runs in a process of its own."""
        return child.spec.process and self.hosting is not None

    def _start_child(self, child: _Child, takeover: Any = None) -> None:
        if self._in_process(child):
            assert self.hosting is not None
            context = self._context(child)
            ref = cast("pykka.ActorRef[Any]", self.hosting.start(
                child.spec.name, child.spec.actor_class, self._settings_for(child.spec.name),
                generation=child.generation, fault_injection=self.fault_injection,
                report=context.report_failure, takeover=takeover))
        else:
            ref = child.spec.actor_class.start(
                self._settings_for(child.spec.name), self._context(child), takeover=takeover
            )
        if self._in_process(child) and child.spec.name == "batcher":
            # A killed process handed nothing over: the subscriptions come from the module
            # list, told before anything the handle held for the successor (a flush on
            # stop, a replay), so that no batch goes out with no subscriber.
            for info in self.modules.values():
                ref.actor_inbox.put(envelope(Subscribe(info.module_id, info.subscribe)))
        child.ref = ref
        child.state = "running"
        child.handover = None
        child.handle.install(ref)

    def _on_StartChildren(self, message: StartChildren) -> None:
        for name, child in self.children.items():
            if child.state == "new":
                self._start_child(child)
                self._log.bind(child=name).info("started")

    def _on_StopChildren(self, message: StopChildren) -> dict[str, bool]:
        return self._stop_children(message.timeout)

    def _stop_children(self, timeout: float) -> dict[str, bool]:
        out: dict[str, bool] = {}
        ended = [c for c in self.children.values()
                 if c.state in ("restarting", "failed") and self._in_process(c)]
        if ended and self.hosting is not None and "debouncer" in self.handles:
            # An actor process ended and its successor only starts to flush: what it held
            # is in the ledger, and goes to the debouncer before the debouncer stops.
            self.hosting.replay([c.handover for c in ended])
        for name in reversed(list(self.children)):
            child = self.children[name]
            if child.state == "restarting":
                # Its pending work waits for a successor: start one now so it can flush.
                self._start_child(child, takeover=child.handover)
            ref = child.ref
            dropped = child.handle.close("actor stopped")
            if dropped:
                self._log.bind(child=name).warning(
                    "buffered messages refused at stop", messages=dropped)
            ok = True
            if ref is not None and ref.is_alive():
                try:
                    ok = bool(ref.stop(block=True, timeout=timeout))
                except pykka.Timeout:
                    ok = False
            child.state = "stopped"
            out[name] = ok
            self._log.bind(child=name).info("stopped")
        return out

    def on_stop(self) -> None:
        if any(c.state in ("running", "restarting") for c in self.children.values()):
            self._stop_children(timeout=5.0)

    # -- failures --

    def _on_ChildFailed(self, message: ChildFailed) -> None:
        child = self.children.get(message.name)
        if child is None or message.generation != child.generation:
            return
        if child.state != "running":
            return
        child.state = "failed"
        child.handover = message.handover
        log = self._log.bind(child=message.name)
        log.error("child failed", error=message.error)
        if child.spec.restart == "temporary":
            dropped = child.handle.close("temporary actor failed and is not restarted")
            child.state = "stopped"
            log.warning("temporary child not restarted: buffered messages refused",
                        messages=dropped)
            return
        if self.escalated:
            return
        now = self.clock.monotonic()
        window_start = now - self.policy.within_s
        while self._restart_times and self._restart_times[0] < window_start:
            self._restart_times.popleft()
        if len(self._restart_times) + 1 > self.policy.max_restarts:
            self._escalate(
                f"restart intensity exceeded: more than {self.policy.max_restarts} restarts "
                f"within {self.policy.within_s:g} s (last: {message.name}: {message.error})"
            )
            return
        self._restart_times.append(now)
        group = self._restart_group(message.name)
        for name in group:
            other = self.children[name]
            if name == message.name or other.state != "running":
                continue
            other.handle.suspend()
            try:
                assert other.ref is not None
                other.handover = other.ref.ask(Handover(), timeout=5.0)
            except Exception:  # the sibling could not hand over: it flushes instead
                log.bind(child=name).opt(exception=True).error("could not hand over")
                other.handover = None
            other.state = "failed"
        for name in group:
            self.children[name].state = "restarting"
        delay = self._backoff(child, now)
        self._token += 1
        if delay <= 0:
            self._restart(group)
        else:
            log.info("restarting", children=",".join(group), delay_s=round(delay, 3))
            token = self._token
            me = self.actor_ref

            def due() -> None:
                with contextlib.suppress(pykka.ActorDeadError):  # supervisor stopped
                    me.tell(_RestartDue(tuple(group), token))

            self.clock.call_at(now + delay, due)

    def _restart_group(self, name: str) -> list[str]:
        names = list(self.children)
        if self.policy.strategy == "one_for_all":
            return names
        if self.policy.strategy == "rest_for_one":
            return names[names.index(name):]
        return [name]

    def _backoff(self, child: _Child, now: float) -> float:
        window_start = now - self.policy.within_s
        times = child.restart_times
        while times and times[0] < window_start:
            times.popleft()
        n = len(times)
        times.append(now)
        if n == 0:
            return 0.0
        base = min(self.policy.backoff_max_s, self.policy.backoff_initial_s * 2 ** (n - 1))
        jitter = 1.0 + self.rng.uniform(-self.policy.jitter, self.policy.jitter)
        return float(min(self.policy.backoff_max_s, base * jitter))

    def _on_RestartDue(self, message: _RestartDue) -> None:
        if self.escalated:
            return
        self._restart(list(message.names))

    def _restart(self, names: list[str]) -> None:
        replay = False
        handed_over: list[Any] = []
        for name in names:  # in start order
            child = self.children[name]
            if child.state != "restarting":
                continue
            child.generation += 1
            child.restarts += 1
            handed_over.append(child.handover)
            self._start_child(child, takeover=child.handover)
            self._log.bind(child=name).warning(
                "restarted: pending work taken over", restarts=child.restarts,
            )
            if self._in_process(child):
                replay = True
            if "monitor" in self.handles:
                self._tell("monitor", Restarted(name))
        if replay and self.hosting is not None and "debouncer" in self.handles:
            self.hosting.replay(handed_over)

    def _escalate(self, reason: str) -> None:
        self.escalated = reason
        self._log.critical("escalating: stopping all children", reason=reason)
        for child in self.children.values():
            if child.state == "failed":
                child.state = "restarting"
        self._stop_children(timeout=5.0)
        if self.on_escalate is not None:
            try:
                self.on_escalate(reason)
            except Exception:
                self._log.opt(exception=True).error("on_escalate failed")

    # -- queries and commands --

    def _on_ChildStatus(self, message: ChildStatus) -> dict[str, dict[str, Any]]:
        from modcoord.supervisor.processes.host import process_usage

        daemon = process_usage(os.getpid())
        out: dict[str, dict[str, Any]] = {}
        for name, child in self.children.items():
            pid = getattr(child.ref, "pid", None) if self._in_process(child) else None
            out[name] = {
                "alive": child.handle.is_alive(),
                "restarts": child.restarts,
                "state": child.state,
                "buffered": child.handle.buffered(),
                "process": "own" if self._in_process(child) else "daemon",
                **(process_usage(pid) if pid is not None else daemon),
            }
        return out

    def _on_SupervisorStatistics(self, message: SupervisorStatistics) -> SupervisorSnapshot:
        return SupervisorSnapshot(
            mode=self.mode,
            children=self._on_ChildStatus(ChildStatus()),
            restarts_total=sum(c.restarts for c in self.children.values()),
            escalated=self.escalated,
            modules=len(self.modules),
        )

    def _on_CrashChild(self, message: CrashChild) -> None:
        if not self.fault_injection:
            raise InvalidMessageError(
                "fault injection is disabled; start the daemon with --allow-fault-injection"
            )
        child = self.children.get(message.name)
        if child is None:
            raise InvalidMessageError(
                f"unknown actor {message.name!r}; choose one of {', '.join(self.children)}"
            )
        if message.kind not in ("exception", "base_exception"):
            raise InvalidMessageError("kind must be 'exception' or 'base_exception'")
        if message.kill:
            ref = child.ref
            if not self._in_process(child) or ref is None or self.hosting is None:
                raise InvalidMessageError(
                    f"{message.name} runs inside the daemon (pid {os.getpid()}); --kill "
                    "needs an actor in a process of its own: list it in daemon.yaml "
                    "supervisor.out_of_process, or crash it without --kill")
            pid = self.hosting.kill(ref)
            if pid is None:
                raise InvalidMessageError(
                    f"{message.name}'s process is being started or restarted; try --kill "
                    "again in a moment (see 'modcoord status')")
            self._log.bind(child=message.name).warning(
                "fault injection: actor process killed", actor_pid=pid)
            return
        self._log.bind(child=message.name).warning("fault injection: crashing",
                                                   kind=message.kind)
        child.handle.tell(Crash(kind=message.kind))

    def _on_SetMode(self, message: SetMode) -> str:
        if message.mode not in self.modes:
            raise InvalidMessageError(f"unknown mode {message.mode!r}")
        previous, self.mode = self.mode, message.mode
        self._reconfigure_all()
        self._log.info("mode switched", previous=previous, mode=self.mode)
        return previous

    def _on_ApplySettings(self, message: ApplySettings) -> None:
        self.modes = dict(message.modes)
        self._reconfigure_all()

    def _reconfigure_all(self) -> None:
        for name, child in self.children.items():
            if child.state == "stopped":
                continue
            with contextlib.suppress(ActorStoppedError):  # stopping: nothing to reconfigure
                child.handle.tell(Reconfigure(self._settings_for(name)))

    def _on_RegisterModule(self, message: RegisterModule) -> dict[str, Any]:
        info = message.info
        self.modules[info.module_id] = info
        self._tell("batcher", Subscribe(info.module_id, info.subscribe))
        self._tell("memory", Track(info.module_id, info.subscribe))
        return {"module_id": info.module_id, "mode": self.mode}

    def _on_UnregisterModule(self, message: UnregisterModule) -> bool:
        known = self.modules.pop(message.module_id, None) is not None
        if known:
            self._tell("batcher", Unsubscribe(message.module_id))
            self._tell("memory", Forget(message.module_id))
            self._tell("monitor", ForgetModule(message.module_id))
        return known

    def _on_Modules(self, message: Modules) -> tuple[ModuleInfo, ...]:
        return tuple(self.modules.values())

    def _tell(self, name: str, message: Any) -> None:
        try:
            self.handles[name].tell(message)
        except ModcoordError:
            self._log.bind(child=name).warning("child stopped: message not routed",
                                               message_type=type(message).__name__)
