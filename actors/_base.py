"""The machinery every modcoord actor shares: stable handles, supervision hooks, dispatch.

Design rules (followed by every actor in this package):

- An actor is addressed through its :class:`ActorHandle` (by name), never through a raw
  pykka ref, so a restart is invisible to callers: while an actor is being restarted the
  handle buffers messages (asks included) and hands them to the successor in order.
- Messages are frozen :class:`~modcoord.actors.message.Message` dataclasses, dispatched to
  the method decorated with :func:`handles` for that type.
- A handler that raises a :class:`~modcoord.actors.errors.ModcoordError` has refused the
  message (bad input, backpressure): the caller gets the error and the actor carries on.
  Any other exception — ``BaseException`` included — is a crash: the caller gets
  :class:`~modcoord.actors.errors.ActorCrashedError`, the actor stops, its unprocessed
  inbox moves to its handle, its pending work is exported with :meth:`export_pending`
  and reported to the supervisor, which starts a successor with it. Unlike pykka's
  default, a ``BaseException`` never stops the other actors.
- Every actor reads time from ``context.clock``, answers :class:`Statistics` with an
  immutable snapshot, applies :class:`Reconfigure` live keeping pending work, and
  flushes (never drops) its pending work when stopped.
- Objects shared with the façade (metrics, cache store, gauges, activity) come from
  ``context.shared`` (:class:`~modcoord.actors.shared.Shared`), typed; peers from
  ``context.handles``. pykka's private parts are reached only in
  :mod:`modcoord.actors._pykka`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import pykka
from loguru import logger
from pydantic import BaseModel

from modcoord.actors._pykka import Envelope, LoopActor, UrgentInbox, envelope, is_stop_request
from modcoord.actors.clock import Clock
from modcoord.actors.errors import (
    ActorCrashedError,
    ActorStoppedError,
    CallTimeoutError,
    InvalidMessageError,
    ModcoordError,
)
from modcoord.actors.histogram import LatencyHistogram
from modcoord.actors.message import Message
from modcoord.actors.shared import Shared

__all__ = [
    "DEFAULT_ASK_TIMEOUT",
    "ActorContext",
    "ActorHandle",
    "Crash",
    "FailureReport",
    "Handover",
    "InjectedFault",
    "ManagedActor",
    "Reconfigure",
    "Shared",
    "Statistics",
    "handles",
]

DEFAULT_ASK_TIMEOUT = 5.0
"""Seconds an internal ``ask`` waits before raising :class:`CallTimeoutError`."""

F = TypeVar("F", bound=Callable[..., Any])


# -- messages every actor accepts --------------------------------------------------------


@dataclass(frozen=True)
class Statistics(Message):
    """Ask for the actor's statistics; the reply is an immutable snapshot."""


@dataclass(frozen=True)
class Reconfigure(Message):
    """Apply new settings live (a pydantic model, or its dict); pending work is kept."""

    settings: Any


@dataclass(frozen=True)
class Crash(Message):
    """Fault injection (tests and ``modcoord debug crash``): fail while handling this.

    ``kind`` is ``exception`` (a RuntimeError) or ``base_exception`` (a BaseException
    subclass, which pykka would otherwise answer by stopping every actor).
    """

    kind: str = "exception"


@dataclass(frozen=True)
class Handover(Message):
    """Supervisor only: export pending work and stop without flushing (for a restart)."""


class InjectedFault(BaseException):
    """The BaseException raised by ``Crash(kind="base_exception")``."""


@dataclass(frozen=True)
class FailureReport:
    """What a crashed actor tells its supervisor."""

    name: str
    generation: int
    error: str
    fatal: bool
    handover: Any


# -- handles -------------------------------------------------------------------------------


class ActorHandle:
    """A stable, named address for an actor that survives restarts.

    States: ``starting`` and ``suspended`` buffer every message; ``running`` delivers to
    the current actor; ``closed`` refuses with :class:`ActorStoppedError`.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._ref: pykka.ActorRef[Any] | None = None
        self._state = "starting"
        self._buffer: deque[Envelope[Any]] = deque()
        self.dropped = 0

    @property
    def state(self) -> str:
        return self._state

    @property
    def ref(self) -> pykka.ActorRef[Any] | None:
        """The current actor's pykka ref (``None`` before the first start)."""
        return self._ref

    def is_alive(self) -> bool:
        return self._state == "running" and self._ref is not None and self._ref.is_alive()

    def buffered(self) -> int:
        """Messages held while the actor restarts."""
        return len(self._buffer)

    def _put(self, item: Envelope[Any]) -> None:
        with self._lock:
            if self._state == "running":
                assert self._ref is not None
                self._ref.actor_inbox.put(item)
            elif self._state == "closed":
                raise ActorStoppedError(self.name, "actor is stopped")
            else:
                self._buffer.append(item)

    def tell(self, message: Any) -> None:
        """Send without waiting.

        Raises:
            ActorStoppedError: the actor was stopped and will not be restarted.
        """
        self._put(envelope(message))

    def ask_future(self, message: Any) -> pykka.Future[Any]:
        """Send and return a pykka future for the reply.

        Raises:
            ActorStoppedError: the actor was stopped and will not be restarted.
        """
        future: pykka.Future[Any] = pykka.ThreadingFuture()
        self._put(envelope(message, reply_to=future))
        return future

    def ask(self, message: Any, timeout: float = DEFAULT_ASK_TIMEOUT) -> Any:
        """Send and wait for the reply.

        Raises:
            CallTimeoutError: no reply within ``timeout`` seconds.
            ActorCrashedError: the actor failed while handling this message.
            ActorStoppedError: the actor is stopped.
            ModcoordError: the actor refused the message (for example invalid input).
        """
        future = self.ask_future(message)
        try:
            return future.get(timeout=timeout)
        except pykka.Timeout as exc:
            raise CallTimeoutError(f"{self.name}: no reply within {timeout} s") from exc
        except pykka.ActorDeadError as exc:
            raise ActorStoppedError(self.name, str(exc)) from exc

    # -- supervisor side --

    def install(self, ref: pykka.ActorRef[Any]) -> None:
        """Make ``ref`` the current actor and hand it every buffered message, in order."""
        with self._lock:
            self._ref = ref
            while self._buffer:
                ref.actor_inbox.put(self._buffer.popleft())
            self._state = "running"

    def suspend(self) -> None:
        """Start buffering (before a restart)."""
        with self._lock:
            if self._state != "closed":
                self._state = "suspended"

    def suspend_and_drain(self, inbox: Any) -> int:
        """Buffer from now on, and move the unprocessed ``inbox`` in front of the buffer."""
        with self._lock:
            if self._state != "closed":
                self._state = "suspended"
            drained: list[Envelope[Any]] = []
            while not inbox.empty():
                env = inbox.get()
                if is_stop_request(env.message):
                    if env.reply_to is not None:
                        env.reply_to.set(None)
                    continue
                drained.append(env)
            self._buffer.extendleft(reversed(drained))
            return len(drained)

    def close(self, reason: str = "actor is stopped") -> int:
        """Refuse all further messages; fail buffered asks. Returns buffered tells dropped."""
        with self._lock:
            self._state = "closed"
            dropped = 0
            while self._buffer:
                env = self._buffer.popleft()
                if env.reply_to is not None:
                    err = ActorStoppedError(self.name, reason)
                    env.reply_to.set_exception((type(err), err, None))
                else:
                    dropped += 1
            self.dropped += dropped
            return dropped


# -- the actor base ----------------------------------------------------------------------


def _ignore_failure(report: FailureReport) -> None:
    """The failure sink of a context without a supervisor: the crash is logged already."""


class ActorContext:
    """What the supervisor gives each actor: time, peers, shared objects, where to report
    failure.

    Args:
        clock: where the actor reads time and arms timers.
        handles: the peers' handles by actor name.
        report_failure: called (in the crashing actor's thread) with a crash's report.
        generation: which start of the actor this is (0 first, +1 per restart).
        fault_injection: whether ``Crash`` messages are honoured.
        shared: the shared hot-path objects and hooks; by default a fresh
            :meth:`Shared.create` for ``clock`` (give every actor the same one).
    """

    __slots__ = ("clock", "fault_injection", "generation", "handles", "report_failure",
                 "shared")

    def __init__(self, clock: Clock, handles: Mapping[str, ActorHandle],
                 report_failure: Callable[[FailureReport], None] = _ignore_failure,
                 generation: int = 0, fault_injection: bool = True,
                 shared: Shared | None = None) -> None:
        self.clock = clock
        self.handles = handles
        self.report_failure = report_failure
        self.generation = generation
        self.fault_injection = fault_injection
        self.shared: Shared = shared if shared is not None else Shared.create(clock)


def handles(message_type: type[Message]) -> Callable[[F], F]:
    """Mark a method as the handler for ``message_type``."""

    def mark(fn: F) -> F:
        setattr(fn, _HANDLES, message_type)
        return fn

    return mark


_HANDLES = "__modcoord_handles__"
"""The attribute :func:`handles` marks a handler with (read by ``ManagedActor``)."""


class ManagedActor(LoopActor):
    """Base class of the five subsystem actors (see the module docstring for the rules).

    Subclasses set :attr:`actor_name` and :attr:`settings_type`, decorate handlers with
    :func:`handles`, and implement :meth:`statistics`, :meth:`apply_settings`,
    :meth:`export_pending`, :meth:`restore` and :meth:`flush_pending`.
    """

    actor_name: ClassVar[str] = "actor"
    settings_type: ClassVar[type[BaseModel]]
    _dispatch: ClassVar[dict[type, Callable[..., Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table: dict[type, Callable[..., Any]] = {}
        for klass in reversed(cls.__mro__):
            for attr in vars(klass).values():
                target = getattr(attr, _HANDLES, None)
                if target is not None:
                    table[target] = attr
        cls._dispatch = table

    def __init__(self, settings: Any, context: ActorContext, takeover: Any = None) -> None:
        super().__init__()
        self.context = context
        self.clock = context.clock
        self.settings = self._coerce(settings)
        self.handled = 0
        # Message handling time: in the shared registry, so it outlives restarts and
        # reaches the monitor and the metrics exposition.
        self.handling: LatencyHistogram = context.shared.metrics.histogram(
            f"actor_{self.actor_name}")
        self._takeover = takeover

    # -- hooks for subclasses --

    def statistics(self) -> Any:
        """Return an immutable snapshot of this actor's statistics."""
        raise NotImplementedError

    def apply_settings(self, old: Any, new: Any) -> None:
        """Apply new settings live; pending work is kept. ``self.settings`` is ``new``."""

    def export_pending(self) -> Any:
        """Return the pending work as plain data, for a successor's ``restore``."""
        return None

    def restore(self, pending: Any) -> None:
        """Take over a predecessor's pending work (called before any message)."""

    def flush_pending(self) -> None:
        """Deliver all pending work now (called on stop)."""

    def started(self) -> None:
        """Called once in the actor's thread before the first message."""

    # -- plumbing --

    def peer(self, name: str) -> ActorHandle:
        return self.context.handles[name]

    def tell_urgent(self, message: Any) -> bool:
        """Put ``message`` at the FRONT of this actor's inbox (timer wake-ups only).

        Callable from any thread. Returns False if this actor is no longer running (its
        successor, if any, arms its own timers).
        """
        if self.actor_stopped.is_set():
            return False
        inbox = self.actor_inbox
        assert isinstance(inbox, UrgentInbox)
        inbox.put_urgent(envelope(message))
        return True

    def _coerce(self, settings: Any) -> Any:
        if isinstance(settings, dict):
            return self.settings_type.model_validate(settings)
        return settings

    def on_start(self) -> None:
        if self._takeover is not None:
            self.restore(self._takeover)
            self._takeover = None
        self.started()

    def on_stop(self) -> None:
        if not getattr(self, "_handed_over", False):
            self.flush_pending()

    @handles(Statistics)
    def _on_statistics(self, message: Statistics) -> Any:
        return self.statistics()

    @handles(Reconfigure)
    def _on_reconfigure(self, message: Reconfigure) -> None:
        old, new = self.settings, self._coerce(message.settings)
        self.settings = new
        self.apply_settings(old, new)

    @handles(Crash)
    def _on_crash(self, message: Crash) -> None:
        if not self.context.fault_injection:
            raise InvalidMessageError("fault injection is disabled (--allow-fault-injection)")
        if message.kind == "base_exception":
            raise InjectedFault(f"injected BaseException in {self.actor_name}")
        raise RuntimeError(f"injected failure in {self.actor_name}")

    @handles(Handover)
    def _on_handover(self, message: Handover) -> Any:
        handle = self.context.handles.get(self.actor_name)
        if handle is not None:
            handle.suspend_and_drain(self.actor_inbox)
        self._handed_over = True
        pending = self.export_pending()
        pykka.ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()
        return pending

    def on_receive(self, message: Any) -> Any:
        handler = self._dispatch.get(type(message))
        if handler is None:
            raise InvalidMessageError(
                f"{self.actor_name} does not accept {type(message).__name__}"
            )
        return handler(self, message)

    def run_loop(self) -> None:
        """The message loop (replaces pykka's: see the module docstring)."""
        perf = time.perf_counter
        receive = self.receive
        while not self.actor_stopped.is_set():
            item = self.actor_inbox.get()
            started = perf()
            try:
                response = receive(item.message)
            except ModcoordError:
                if item.reply_to is not None:
                    item.reply_to.set_exception()
                else:
                    logger.bind(actor=self.actor_name).opt(exception=True).warning(
                        "message refused"
                    )
            except BaseException as exc:
                self._crash(exc, item)
            else:
                if item.reply_to is not None:
                    item.reply_to.set(response)
            finally:
                self.handled += 1
                self.handling.record(perf() - started)

    def _crash(self, exc: BaseException, item: Envelope[Any]) -> None:
        log = logger.bind(actor=self.actor_name)
        log.opt(exception=exc).error(
            "actor crashed", handling=type(item.message).__name__, error=repr(exc))
        handle = self.context.handles.get(self.actor_name)
        if handle is not None and handle.ref is self.actor_ref:
            handle.suspend_and_drain(self.actor_inbox)
        pykka.ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()
        try:
            pending = self.export_pending()
        except Exception:
            log.opt(exception=True).error("could not export pending work after crash")
            pending = None
        error = ActorCrashedError(self.actor_name, f"{type(exc).__name__}: {exc}")
        if item.reply_to is not None:
            item.reply_to.set_exception((type(error), error, None))
        self.context.report_failure(
            FailureReport(
                name=self.actor_name,
                generation=self.context.generation,
                error=f"{type(exc).__name__}: {exc}",
                fatal=not isinstance(exc, Exception),
                handover=pending,
            )
        )
