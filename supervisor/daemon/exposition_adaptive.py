"""The ``adaptive`` part of the status document as Prometheus samples (the families are
declared in :data:`~modcoord.supervisor.daemon.exposition.METRICS`, like every other).

Each parameter of ``adaptive.parameters`` (``{"configured", "effective", "reason",
"pinned"}``) becomes samples by its kind: a ``*_ms`` one in seconds in
``modcoord_adaptive_{effective,configured}_seconds`` (label ``parameter`` without
``_ms``), another number in ``modcoord_adaptive_{effective,configured}``, either one's
bound in ``modcoord_adaptive_pinned`` (same label), and ``memory.strategy`` (a name) as
the state set ``modcoord_adaptive_memory_strategy``.
``adaptive.resources`` (present while the resource awareness is on) gives the
``modcoord_resources_*`` families. Labels are bounded: parameter names are the actors'
own (six), strategies the three of ``memory.strategy``. Missing or malformed values are
left out, never guessed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from modcoord.actors.resources import STRATEGIES

__all__ = ["adaptive_families"]

_MS_SUFFIX = "_ms"
_STRATEGY = "memory.strategy"

Add = Callable[..., None]
"""``add(family, value, *label_values)``: a non-numeric value is left out."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def adaptive_families(add: Add, adaptive: Mapping[str, Any]) -> None:
    """Add the adaptive parameters and the resource state of ``adaptive`` (the status
    document's field) through ``add``."""
    if "enabled" in adaptive:
        add("modcoord_adaptive_enabled", bool(adaptive.get("enabled")))
    params = adaptive.get("parameters")
    if not isinstance(params, Mapping):
        params = {}
    for name in sorted(params):
        p = params[name]
        if not isinstance(p, Mapping):
            continue
        if name == _STRATEGY:
            effective = p.get("effective")
            if isinstance(effective, str):
                for strategy in STRATEGIES if effective in STRATEGIES else (
                        *STRATEGIES, effective):
                    add("modcoord_adaptive_memory_strategy", strategy == effective, strategy)
            continue
        label = name[:-len(_MS_SUFFIX)] if name.endswith(_MS_SUFFIX) else str(name)
        add("modcoord_adaptive_pinned", p.get("pinned") is not None, label)
        if name.endswith(_MS_SUFFIX):
            for which in ("effective", "configured"):
                ms = _number(p.get(which))
                if ms is not None:
                    add(f"modcoord_adaptive_{which}_seconds", ms / 1000.0, label)
        else:
            for which in ("effective", "configured"):
                add(f"modcoord_adaptive_{which}", _number(p.get(which)), label)
    resources = adaptive.get("resources")
    if not isinstance(resources, Mapping):
        return
    add("modcoord_resources_memory_level", _number(resources.get("memory_level")))
    widening = resources.get("widening")
    if isinstance(widening, bool):
        add("modcoord_resources_delays_widened", widening)
    add("modcoord_resources_cpu_ratio", _number(resources.get("cpu_fraction")))
    add("modcoord_resources_available_memory_bytes", _number(resources.get("available_bytes")))
    add("modcoord_resources_cache_evicted_total", _number(resources.get("cache_evicted")))
    add("modcoord_resources_escalations_total", _number(resources.get("escalations")))
    add("modcoord_resources_relaxations_total", _number(resources.get("relaxations")))
