"""The actor methods callable through the ``actor`` call, declared once, and the call's
params (private: the public names are those of :mod:`modcoord.supervisor.protocol.calls`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from modcoord.actors.errors import InvalidMessageError
from modcoord.supervisor.protocol._params import Empty, Params, convert_params

__all__ = ["ACTOR_CALLS", "ACTOR_NAMES", "ActorMethod", "ActorParams", "bind_actor_args",
           "check_actor"]


class FlushDebounceParams(Params):
    """``debouncer.flush``: flush pending debounces now (all, one module's, or one key)."""

    module_id: str | None = None
    key: str | None = None


class CancelDebounceParams(Params):
    """``debouncer.cancel``: drop the pending debounce of one module's key."""

    module_id: str
    key: str


class ShrinkParams(Params):
    """``cache.shrink``: evict this fraction of the cache's entries (0 to 1)."""

    fraction: Annotated[float, msgspec.Meta(ge=0, le=1)]


@dataclass(frozen=True)
class ActorMethod:
    """One actor method callable over the ``actor`` call.

    Attributes:
        actor: the actor's name.
        name: the method's name.
        params: its argument struct (positional arguments bind to its fields in order).
        doc: what it does and returns.
    """

    actor: str
    name: str
    params: type[Params]
    doc: str


def _actor_methods(actor: str, *methods: tuple[str, type[Params], str]
                   ) -> dict[str, ActorMethod]:
    table = {"statistics": ActorMethod(actor, "statistics", Empty,
                                       "the actor's statistics snapshot (a map)")}
    for name, params, doc in methods:
        table[name] = ActorMethod(actor, name, params, doc)
    return table


ACTOR_CALLS: Mapping[str, Mapping[str, ActorMethod]] = {
    "debouncer": _actor_methods(
        "debouncer",
        ("flush", FlushDebounceParams, "flush pending debounces now; returns how many"),
        ("cancel", CancelDebounceParams, "drop one pending debounce; returns whether "
                                         "there was one"),
        ("pending", Empty, "the number of pending debounces"),
    ),
    "cache": _actor_methods(
        "cache",
        ("clear", Empty, "drop every entry; returns how many"),
        ("purge", Empty, "drop the expired entries; returns how many"),
        ("shrink", ShrinkParams, "evict a fraction of the entries; returns how many"),
    ),
    "batcher": _actor_methods(
        "batcher",
        ("flush", Empty, "deliver every queued batch now; returns how many updates"),
        ("queue_depth", Empty, "the number of queued updates"),
    ),
    "memory": _actor_methods(
        "memory",
        ("force_cleanup", Empty, "run the memory cleanup now; returns what it freed"),
    ),
    "monitor": _actor_methods(
        "monitor",
        ("latencies", Empty, "the coordination latency histogram snapshot"),
        ("trim", Empty, "drop the monitor's old samples"),
    ),
}
"""Actor name → method name → :class:`ActorMethod`."""

ACTOR_NAMES: tuple[str, ...] = tuple(ACTOR_CALLS)
"""The actors of the daemon, by name (the order in which ``status`` lists them)."""


def check_actor(actor: str) -> None:
    """Raises:
        ValueError: ``actor`` is not one of :data:`ACTOR_NAMES`.
    """
    if actor not in ACTOR_CALLS:
        raise ValueError(f"'actor' must be one of {', '.join(ACTOR_NAMES)}, got {actor!r}")


def bind_actor_args(actor: str, method: str, args: Sequence[Any],
                    kwargs: Mapping[str, Any]) -> Params:
    """Bind an actor call's positional and keyword arguments to the method's declared
    params and validate them.

    Raises:
        InvalidMessageError: unknown actor or method (naming the valid ones), too many
            positional arguments, an argument given twice, or an argument of the wrong
            type or range (``at `$.name```).
    """
    methods = ACTOR_CALLS.get(actor)
    if methods is None:
        raise InvalidMessageError(
            f"unknown actor {actor!r}; choose one of {', '.join(ACTOR_NAMES)}")
    decl = methods.get(method)
    if decl is None:
        raise InvalidMessageError(
            f"{actor} has no method {method!r}; choose one of {', '.join(methods)}")
    fields = decl.params.__struct_fields__
    where = f"{actor}.{method}"
    if len(args) > len(fields):
        raise InvalidMessageError(
            f"{where}: takes {len(fields)} argument(s) ({', '.join(fields) or 'none'}), "
            f"got {len(args)} positional")
    bound: dict[Any, Any] = dict(zip(fields, args, strict=False))
    for name, value in kwargs.items():
        if name in bound:
            raise InvalidMessageError(f"{where}: argument {name!r} given twice")
        bound[name] = value
    return convert_params(where, bound, decl.params)


class ActorParams(Params, dict=True):
    """``actor``: call ``method`` of actor ``actor``. ``args`` is a list of positional
    arguments (a map is taken as keyword arguments), ``kwargs`` a map of keyword
    arguments. Decoding binds and validates them against the method's declaration
    (:data:`ACTOR_CALLS`, :func:`bind_actor_args`): :attr:`arguments` holds the result."""

    actor: str
    method: str
    # Typed ``Any`` and checked below by exact type: msgspec would take any sequence (an
    # ``ExtType``, a named tuple) as a list.
    args: Any = None
    """A list of positional arguments, a map of keyword arguments, or null."""
    kwargs: Any = None
    """A map of keyword arguments, or null."""

    def __post_init__(self) -> None:
        check_actor(self.actor)
        if not self.method.isidentifier() or self.method.startswith("_"):
            raise ValueError(f"'method' must be a public method name, got {self.method!r}")
        args = self.args
        if args is not None and type(args) is not list and type(args) is not dict:
            raise ValueError("'args' must be a list (or a map of keyword arguments), "
                             f"got {type(args).__name__}")
        if self.kwargs is not None and type(self.kwargs) is not dict:
            raise ValueError(f"'kwargs' must be a map, got {type(self.kwargs).__name__}")
        kwargs = dict(self.kwargs or {})
        for name in (*kwargs, *(args if isinstance(args, dict) else ())):
            if type(name) is not str or not name.isidentifier():
                raise ValueError(
                    f"keyword argument names must be identifiers, got {name!r}")
        if isinstance(args, dict):
            kwargs = {**args, **kwargs}
            args = None
        try:
            self.arguments: Params = bind_actor_args(self.actor, self.method, args or [],
                                                     kwargs)
        except InvalidMessageError as exc:
            raise ValueError(str(exc)) from None

    def keywords(self) -> dict[str, Any]:
        """The bound arguments as keyword arguments of the actor method."""
        return self.arguments.to_wire()
