"""A module object's description, checked: what ``register`` sends, without dataclasses.

:func:`module_fields` validates a module's ``register`` params (the rules of
:meth:`.module.ModuleInfo.from_params`, which builds on it); :func:`register_params`
describes a module object as the params a client sends. The client uses these instead of
:class:`~.module.ModuleInfo`, whose module imports :mod:`dataclasses` and with it
:mod:`inspect` (some 20 ms, more than half a bare interpreter start).
"""

from __future__ import annotations

from typing import Any

from modcoord.actors.errors import InvalidMessageError
from modcoord.actors.modes import MODES
from modcoord.supervisor.protocol.limits import MAX_MODULE_ID_LENGTH

__all__ = ["module_fields", "object_params", "register_params", "wire_params"]

_COLLECTIONS = (list, tuple, set, frozenset)


def module_fields(params: dict[str, Any]
                  ) -> tuple[str, str, frozenset[str], tuple[str, ...], bool]:
    """``(module_id, name, supported_modes, subscribe, has_metrics)`` of register params
    (``name`` defaults to the id, ``supported_modes`` to every mode, a single
    ``subscribe`` string is a one-element list).

    Raises:
        InvalidMessageError: naming the field that is wrong.
    """
    module_id = params.get("module_id")
    if (not isinstance(module_id, str) or not module_id
            or len(module_id) > MAX_MODULE_ID_LENGTH):
        raise InvalidMessageError(
            f"module_id must be a non-empty string (≤ {MAX_MODULE_ID_LENGTH} chars)")
    name = params.get("name", module_id)
    if not isinstance(name, str):
        raise InvalidMessageError("name must be a string")
    modes = params.get("supported_modes", list(MODES))
    if not isinstance(modes, _COLLECTIONS) or not all(isinstance(m, str) for m in modes):
        raise InvalidMessageError("supported_modes must be a list of mode names")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise InvalidMessageError(f"supported_modes: unknown mode(s) {unknown}")
    subscribe = params.get("subscribe", [])
    if isinstance(subscribe, str):
        subscribe = [subscribe]
    if not isinstance(subscribe, _COLLECTIONS) or not all(
            isinstance(s, str) for s in subscribe):
        raise InvalidMessageError("subscribe must be a list of module ids")
    return (module_id, name, frozenset(modes), tuple(subscribe),
            bool(params.get("has_metrics", False)))


def object_params(module: Any) -> dict[str, Any]:
    """A module object's attributes as (unchecked) register params."""
    return {
        "module_id": getattr(module, "module_id", None),
        "name": getattr(module, "name", getattr(module, "module_id", "")),
        "supported_modes": list(getattr(module, "supported_modes", MODES)),
        "subscribe": list(getattr(module, "subscribe", [])),
        "has_metrics": callable(getattr(module, "get_performance_metrics", None)),
    }


def wire_params(module_id: str, name: str, supported_modes: frozenset[str],
                subscribe: tuple[str, ...], has_metrics: bool) -> dict[str, Any]:
    """The register params of checked fields (modes sorted)."""
    return {
        "module_id": module_id,
        "name": name,
        "supported_modes": sorted(supported_modes),
        "subscribe": list(subscribe),
        "has_metrics": has_metrics,
    }


def register_params(module: Any) -> dict[str, Any]:
    """The ``register`` params describing a module object, checked (the same map as
    ``ModuleInfo.of(module).to_params()``).

    Raises:
        InvalidMessageError: the object does not describe a valid module (naming the field).
    """
    return wire_params(*module_fields(object_params(module)))
