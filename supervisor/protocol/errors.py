"""Errors on the wire: how an exception travels as ``[type_name, message]`` and comes back.

- :func:`error_to_wire` — an exception to its wire form.
- :func:`error_from_wire` — a wire error back to a :class:`ModcoordError` (a known type
  comes back as that type, anything else as :class:`RemoteError`).
- :class:`FramingError` — the byte stream is broken (a frame over the limit).
- :class:`ProtocolVersionError` — client and daemon speak different protocol versions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modcoord.actors.errors import (
    ActorCrashedError,
    ActorError,
    ActorStoppedError,
    CallTimeoutError,
    InvalidMessageError,
    ModcoordError,
    QueueFullError,
    RemoteError,
)

__all__ = ["FramingError", "ProtocolVersionError", "error_from_wire", "error_to_wire"]


class FramingError(InvalidMessageError):
    """The byte stream is not valid framing (a frame larger than allowed).

    The stream cannot be resynchronised: the connection is closed.
    """


class ProtocolVersionError(ModcoordError):
    """The client and the daemon speak different versions of the wire protocol.

    The message names both versions; install the same modcoord version on both sides
    (or restart the daemon after an upgrade).
    """


_SIMPLE_ERRORS: dict[str, Callable[[str], ModcoordError]] = {
    "InvalidMessageError": InvalidMessageError,
    "FramingError": FramingError,
    "QueueFullError": QueueFullError,
    "CallTimeoutError": CallTimeoutError,
    "ProtocolVersionError": ProtocolVersionError,
}
_ACTOR_ERRORS: dict[str, type[ActorError]] = {
    "ActorError": ActorError,
    "ActorCrashedError": ActorCrashedError,
    "ActorStoppedError": ActorStoppedError,
}


def error_to_wire(exc: BaseException) -> list[str]:
    """Return the wire form ``[type_name, message]`` of an exception.

    A :class:`ModcoordError` keeps its type name; anything else is an ``InternalError``
    whose message names the original type.
    """
    if isinstance(exc, ModcoordError):
        return [type(exc).__name__, str(exc)]
    return ["InternalError", f"{type(exc).__name__}: {exc}"]


def error_from_wire(error: Any) -> ModcoordError:
    """Rebuild an error received as ``[type_name, message]`` (or a plain string).

    Known modcoord types whose constructor allows it come back as that type
    (``InvalidMessageError``, ``QueueFullError``, ``CallTimeoutError``, ``FramingError``,
    ``ProtocolVersionError``, the actor errors); anything else is a :class:`RemoteError`
    carrying the remote type and message.
    """
    if isinstance(error, (list, tuple)) and len(error) == 2:
        type_name, message = str(error[0]), str(error[1])
    else:
        type_name, message = "RemoteError", str(error)
    simple = _SIMPLE_ERRORS.get(type_name)
    if simple is not None:
        return simple(message)
    actor_cls = _ACTOR_ERRORS.get(type_name)
    if actor_cls is not None:
        actor, sep, rest = message.partition(": ")
        if sep:
            return actor_cls(actor, rest)
    return RemoteError(type_name, message)
