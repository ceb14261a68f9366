"""The modules a client hosts: which the daemon knows, and which callbacks may concern."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modcoord.supervisor.client._log import log
from modcoord.supervisor.protocol.describe import register_params

if TYPE_CHECKING:
    from modcoord.supervisor.client.future import Future

__all__ = ["ModuleRegistry", "log_reregistration"]



class ModuleRegistry:
    """The module objects of one client.

    *Registered* modules (the daemon answered their registration) are registered again
    after a reconnection. *Hosted* modules are every object a callback or batch may
    concern, including those whose registration is in flight (the daemon may deliver to a
    module before its answer arrives). Plain dict operations: safe from any thread.
    """

    __slots__ = ("_hosted", "_registered")

    def __init__(self) -> None:
        self._registered: dict[str, Any] = {}
        self._hosted: dict[str, Any] = {}

    def __len__(self) -> int:
        """How many modules are registered."""
        return len(self._registered)

    def host(self, module_id: str, module: Any) -> bool:
        """Host ``module`` (its registration is being sent); returns whether this id was
        not hosted before."""
        previous = self._hosted.get(module_id)
        self._hosted[module_id] = module
        return previous is None

    def registered(self, module_id: str, module: Any) -> None:
        """The daemon accepted ``module``'s registration."""
        self._registered[module_id] = module

    def refused(self, module_id: str, module: Any) -> None:
        """The daemon refused ``module``'s registration: stop hosting it unless an earlier
        registration of the same object stands."""
        if self._registered.get(module_id) is not module:
            self._hosted.pop(module_id, None)

    def forget(self, module_id: str) -> None:
        """Neither registered nor hosted any more (unregistered)."""
        self._registered.pop(module_id, None)
        self._hosted.pop(module_id, None)

    def hosted(self, module_id: Any) -> Any:
        """The object a callback for ``module_id`` goes to, or None."""
        return self._hosted.get(module_id)

    def registered_object(self, module_id: str) -> Any:
        """The registered object of ``module_id``, or None."""
        return self._registered.get(module_id)

    def registrations(self) -> list[tuple[str, dict[str, Any]]]:
        """``(module_id, register params)`` of every registered module (to re-register).

        Raises:
            InvalidMessageError: a module object no longer describes a valid module.
        """
        return [(module_id, register_params(module))
                for module_id, module in list(self._registered.items())]


def log_reregistration(module_id: str, future: Future[Any]) -> None:
    """Done-callback of a re-registration (after a reconnection or a sweep): log a
    failure as a warning naming the module (nothing else can be done about it here)."""
    error = future.exception(0)
    if error is not None:
        log.warning("re-registering %s failed: %s", module_id, error,
                     extra={"module_id": module_id})
