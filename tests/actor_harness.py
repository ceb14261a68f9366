"""The one harness for unit tests of an actor: no processes, no sockets, the test's clock.

:class:`ActorRig` gives the actor under test what the supervisor would — a named
:class:`ActorHandle` per actor, an :class:`ActorContext` on the test's (mock) clock with the
shared hot-path objects the test hands it, and a list that collects every failure the actor
reports — and can stand fake peers beside it that record what they receive (:func:`fake`).
Test files subclass it for their actor's own helpers (``advance``, ``stats``...).

The context is built in one place, :func:`make_context`, so a change of what actors share
is made here rather than in every test file. Tests stop every actor at teardown
(``pykka.ActorRegistry.stop_all()`` in a fixture).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pykka
from loguru import logger

from modcoord.actors import (
    ActorContext,
    ActorHandle,
    Clock,
    FailureReport,
    ManagedActor,
    Message,
    Shared,
)
from modcoord.actors.settings import ModeSettings

__all__ = ["WAIT_S", "ActorRig", "Recorder", "Sync", "actor_logs", "edited", "fake",
           "make_context", "make_shared", "packaged"]

WAIT_S = 5.0  # how long a test waits for an actor's answer

C = TypeVar("C", bound=Clock)


@dataclass(frozen=True)
class Sync(Message):
    """Test-only: asked of a fake peer to wait until it has handled earlier messages."""


class Recorder(ManagedActor):
    """A fake peer: records every message and answers from ``replies`` (default 0); a reply
    that is callable is called with the message."""

    def __init__(self, settings: Any, context: ActorContext, received: list[Any],
                 replies: Mapping[str, Any]) -> None:
        super().__init__(settings, context)
        self.received = received
        self.replies = replies

    def statistics(self) -> None:
        return None

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Sync):
            return None
        self.received.append(message)
        reply = self.replies.get(type(message).__name__, 0)
        return reply(message) if callable(reply) else reply


def fake(name: str) -> type[Recorder]:
    """A :class:`Recorder` class whose ``actor_name`` is ``name``."""
    return type(f"Fake_{name}", (Recorder,), {"actor_name": name})


def actor_logs(actor: str) -> Iterator[list[Any]]:
    """Collect the loguru records (DEBUG and up) bound to ``actor`` (``extra["actor"]``)
    while suspended; for a fixture: ``yield from actor_logs("memory")``."""
    records: list[Any] = []
    sink = logger.add(lambda m: records.append(m.record), level="DEBUG",
                      filter=lambda r: r["extra"].get("actor") == actor)
    try:
        yield records
    finally:
        logger.remove(sink)


def make_shared(clock: Clock, shared: Shared | None = None, **fields: Any) -> Shared:
    """``shared`` (a fresh :meth:`Shared.create` for ``clock`` when ``None``) with ``fields``
    swapped in (``metrics=``, ``deliver=``...: :class:`Shared`'s field names).

    Raises:
        TypeError: a name in ``fields`` is not a field of :class:`Shared`.
    """
    base = shared if shared is not None else Shared.create(clock)
    return dataclasses.replace(base, **fields) if fields else base


def make_context(clock: Clock, handles: Mapping[str, ActorHandle],
                 report_failure: Callable[[FailureReport], None] | None = None,
                 shared: Shared | None = None, **fields: Any) -> ActorContext:
    """The context the supervisor would give an actor: its shared hot-path objects are
    :func:`make_shared` of ``shared`` and ``fields``."""
    return ActorContext(clock=clock, handles=handles,
                        report_failure=report_failure or (lambda report: None),
                        shared=make_shared(clock, shared, **fields))


class ActorRig(Generic[C]):
    """One actor under test (started with :meth:`start`), its peers and its context;
    generic in the clock's type (``ActorRig[MockClock]``).

    Args:
        clock: the test's clock (a ``MockClock`` in unit tests).
        name: the actor's name (its handle is :attr:`handle`).
        actor: the actor class :meth:`start` starts, with ``settings``.
        settings: its settings (:attr:`settings`; a test may replace them before a start).
        peers: names of fake peers to start now (each records into ``received[name]``).
        others: names that get a handle but no actor (messages to them are buffered).
        replies: per peer, the fake's answers by message type name.
        shared: the shared objects of the context (see :func:`make_context`).
        fields: fields of ``shared`` to swap (``metrics=``, ``deliver=``...; see
            :func:`make_shared`).

    Attributes:
        handles: every handle by name (the context's ``handles``: the same dict).
        reports: every failure the actors reported, in order.
        received: what each fake peer received, by peer name (empty for any other name).
        peers: the fake peers' handles by name.
    """

    def __init__(self, clock: C, name: str, actor: type[ManagedActor], settings: Any, *,
                 peers: Iterable[str] = (), others: Iterable[str] = (),
                 replies: Mapping[str, Mapping[str, Any]] | None = None,
                 shared: Shared | None = None, **fields: Any) -> None:
        peers = tuple(peers)
        self.clock = clock
        self.name = name
        self.actor = actor
        self.settings = settings
        self.handles: dict[str, ActorHandle] = {
            n: ActorHandle(n) for n in dict.fromkeys((name, *peers, *others))}
        self.handle = self.handles[name]
        self.reports: list[FailureReport] = []
        self.context = make_context(clock, self.handles, self.reports.append, shared,
                                    **fields)
        self.received: defaultdict[str, list[Any]] = defaultdict(list)
        self.peers: dict[str, ActorHandle] = {}
        self._ref: pykka.ActorRef[Any] | None = None
        for peer in peers:
            self.start_peer(peer, (replies or {}).get(peer, {}))

    @property
    def ref(self) -> pykka.ActorRef[Any]:
        """The actor under test's current ref.

        Raises:
            AssertionError: it was not started yet.
        """
        assert self._ref is not None, "start() the actor under test first"
        return self._ref

    @ref.setter
    def ref(self, ref: pykka.ActorRef[Any]) -> None:
        self._ref = ref

    def start_peer(self, name: str, replies: Mapping[str, Any] | None = None) -> ActorHandle:
        """Start a fake peer ``name`` (recording into ``received[name]``) on its handle."""
        handle = self.handles.setdefault(name, ActorHandle(name))
        handle.install(fake(name).start(None, self.context, self.received[name],
                                        dict(replies or {})))
        self.peers[name] = handle
        return handle

    def start(self, takeover: Any = None) -> pykka.ActorRef[Any]:
        """Start (or restart, with ``takeover``) the actor under test and install it."""
        ref = self.actor.start(self.settings, self.context, takeover)
        self.handle.install(ref)
        self.ref = ref
        return ref

    def tell(self, message: Any) -> None:
        self.handle.tell(message)

    def ask(self, message: Any, timeout: float = WAIT_S) -> Any:
        return self.handle.ask(message, timeout=timeout)

    def sync_peers(self) -> None:
        """Wait until every fake peer has handled what was sent to it so far."""
        for handle in self.peers.values():
            handle.ask(Sync(), timeout=WAIT_S)

    def names(self, peer: str) -> list[str]:
        """The type names of what ``peer`` received, in order."""
        return [type(m).__name__ for m in self.received[peer]]

    def sent(self, peer: str, type_name: str) -> list[Any]:
        """What ``peer`` received of the type named ``type_name``."""
        return [m for m in self.received[peer] if type(m).__name__ == type_name]


def packaged(mode: str = "HYBRID") -> ModeSettings:
    """The packaged config's settings of ``mode``."""
    from modcoord.supervisor.daemon.config import default_config_dir, load_config_dir

    return load_config_dir(default_config_dir()).mode(mode)


def edited(settings: ModeSettings, **sections: dict[str, Any]) -> ModeSettings:
    """``settings`` (a ``ModeSettings``) with some keys of some sections replaced, e.g.
    ``edited(s, batch={"enabled": False}, adaptive={"debounce": {"max_ms": 400}})``: a dict
    value merges one level down. Validated again (raises pydantic's ValidationError)."""
    data = settings.model_dump()
    for name, values in sections.items():
        section = dict(data[name])
        for key, value in values.items():
            section[key] = {**section[key], **value} if isinstance(value, dict) else value
        data[name] = section
    return ModeSettings.model_validate(data)
