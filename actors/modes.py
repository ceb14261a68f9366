"""The three coordination modes: their names, in ONE place.

This module imports nothing, so that the protocol, the client, the config loader and the
actors can all take the mode names from here without pulling in anything heavy.

- :data:`MODES` — the canonical names, in order of increasing automation.
- :func:`canonical_mode` — a user's spelling (any case, ``-`` or ``_``, surrounding
  blanks) to the canonical name.
"""

from __future__ import annotations

__all__ = ["MODES", "canonical_mode", "mode_or_none"]

MODES: tuple[str, ...] = ("MANUAL", "HYBRID", "FULLY_AUTO")

# The spellings met on the hot path (canonical and lower case), looked up without work.
_LOOKUP: dict[str, str] = {m: m for m in MODES} | {m.lower(): m for m in MODES}


def mode_or_none(value: object) -> str | None:
    """The canonical mode name for ``value``, or ``None`` when it names no mode (or is not
    a string). Never raises."""
    if type(value) is not str:
        return None
    mode = _LOOKUP.get(value)
    if mode is None:
        mode = value.strip().upper().replace("-", "_")
        if mode not in _LOOKUP:
            return None
    return mode


def canonical_mode(value: object) -> str:
    """Return the canonical mode name for ``value`` (case-insensitive, ``-`` or ``_``).

    Raises:
        ValueError: ``value`` is not a string naming one of :data:`MANUAL, HYBRID,
            FULLY_AUTO <MODES>`; the message lists the valid names. Callers re-raise it
            as their own error type (``InvalidMessageError`` on the wire, ``ConfigError``
            in a config file).
    """
    mode = mode_or_none(value)
    if mode is None:
        raise ValueError(f"must be one of {', '.join(MODES)}, got {value!r}")
    return mode
