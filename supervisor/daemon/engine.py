"""The seam between the socket server and the coordination core.

The server (:mod:`modcoord.supervisor.daemon.server`) talks to the engine only through
:class:`Engine`: register, unregister, publish many, coordinate, the control calls (their
params decoded by the call table, :mod:`modcoord.supervisor.protocol.calls`) and a brief
status. Today's in-process core (the controller over the actor system) is the only
implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from modcoord.supervisor.protocol.calls import Params
from modcoord.supervisor.protocol.module import ModuleEndpoint, ModuleInfo

__all__ = ["Engine"]


class Engine(Protocol):
    """What the server needs from the coordination core: the one seam between the socket
    server and the engine behind it (the in-process ``Controller`` over the
    ``ModuleCoordinator`` provides it; a distributed engine would be another).

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
