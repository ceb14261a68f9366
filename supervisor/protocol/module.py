"""Modules as the coordinator sees them: their description and how to reach them.

A module is any object with ``module_id``, ``name``, ``supported_modes``, ``subscribe``,
``on_mode_change(mode, strategy, context)``, ``on_batch(batch)`` and optionally
``get_performance_metrics()`` (a ``ModeAwareModule``). The coordinator keeps a
:class:`ModuleInfo` (plain data) and a :class:`ModuleEndpoint` for each: a
:class:`LocalEndpoint` calls an in-process object, the server's endpoint sends frames to the
module's process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from modcoord.actors.payload import with_values
from modcoord.actors.update import Batch
from modcoord.supervisor.protocol.describe import module_fields, object_params, wire_params
from modcoord.supervisor.protocol.limits import MAX_MODULE_ID_LENGTH

__all__ = ["MAX_MODULE_ID_LENGTH", "LocalEndpoint", "ModeAwareModule", "ModuleEndpoint",
           "ModuleInfo", "Reply"]

Reply = Callable[[Any, "str | None"], None]
"""``reply(result, error_text)``: called exactly once; ``error_text`` is None on success."""


@runtime_checkable
class ModeAwareModule(Protocol):
    """What a module object provides (``get_performance_metrics`` is optional)."""

    module_id: str
    name: str
    supported_modes: Any
    subscribe: Any

    def on_mode_change(self, mode: str, strategy: str, context: dict[str, Any]) -> Any: ...

    def on_batch(self, batch: Batch) -> None: ...


@dataclass(frozen=True)
class ModuleInfo:
    """A registered module, as plain data.

    Attributes:
        module_id: unique id; also the source id others subscribe to.
        name: human-readable name.
        supported_modes: the modes whose coordination it takes part in.
        subscribe: source module ids whose updates it receives (``"*"`` = all).
        has_metrics: whether it offers ``get_performance_metrics()``.
    """

    module_id: str
    name: str
    supported_modes: frozenset[str]
    subscribe: tuple[str, ...]
    has_metrics: bool = False

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ModuleInfo:
        """Build from wire params, validating every field (:func:`.describe.module_fields`).

        Raises:
            InvalidMessageError: naming the field that is wrong.
        """
        module_id, name, modes, subscribe, has_metrics = module_fields(params)
        return cls(module_id=module_id, name=name, supported_modes=modes,
                   subscribe=subscribe, has_metrics=has_metrics)

    @classmethod
    def of(cls, module: Any) -> ModuleInfo:
        """Describe a module object (validating it like wire params)."""
        return cls.from_params(object_params(module))

    def to_params(self) -> dict[str, Any]:
        return wire_params(self.module_id, self.name, self.supported_modes, self.subscribe,
                           self.has_metrics)


class ModuleEndpoint(Protocol):
    """How the coordinator reaches a module. No method may block the caller.

    An endpoint over a connection may also offer ``live(stall_s) -> bool`` (the connection
    is open and takes what it is sent: a live connection is activity, so its modules are
    not swept) and ``swept(module_id, notice)`` (tell the module its subscriptions were
    removed). The coordinator uses them when present.
    """

    def deliver(self, module_id: str, batch: Batch) -> None:
        """Hand a batch to module ``module_id`` (called from the batcher's thread)."""
        ...

    def mode_change(self, module_id: str, mode: str, strategy: str,
                    context: dict[str, Any], reply: Reply) -> None:
        """Call the module's ``on_mode_change``; ``reply`` gets the result or an error."""
        ...

    def performance_metrics(self, module_id: str, reply: Reply) -> None:
        """Call the module's ``get_performance_metrics``."""
        ...


class LocalEndpoint:
    """Reaches a module object in this process; calls run in the caller's thread."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def deliver(self, module_id: str, batch: Batch) -> None:
        """Run the module's ``on_batch`` with the values decoded, as a module process gets
        them (inside the daemon an update carries its payload encoded).

        Raises:
            whatever ``on_batch`` raises (the batcher counts and logs it).
        """
        self.module.on_batch(Batch(batch.batch_id, with_values(batch.updates), batch.reason))

    def mode_change(self, module_id: str, mode: str, strategy: str,
                    context: dict[str, Any], reply: Reply) -> None:
        try:
            result = self.module.on_mode_change(mode, strategy, context)
        except Exception as exc:
            reply(None, f"{type(exc).__name__}: {exc}")
        else:
            reply(result, None)

    def performance_metrics(self, module_id: str, reply: Reply) -> None:
        fn = getattr(self.module, "get_performance_metrics", None)
        if fn is None:
            reply(None, "module has no get_performance_metrics")
            return
        try:
            reply(fn(), None)
        except Exception as exc:
            reply(None, f"{type(exc).__name__}: {exc}")
