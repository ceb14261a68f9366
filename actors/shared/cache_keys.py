"""Canonical cache keys: one string per coordination request, equal for equal requests.

Rules: the key is the mode, ``":"`` and the context as compact JSON with sorted keys at
every depth, so equal mappings give equal keys whatever their key order, and tuples and
lists are the same; values compare as JSON sees them (``1`` and ``1.0`` differ). Only plain
data can be in a key: string keys; ``None``, bool, int, finite float, str, lists/tuples and
dicts.

On failure: :func:`cache_key` raises :class:`~modcoord.actors.errors.InvalidMessageError`
naming the offending path (``context.a.b[2]``) and computes nothing; :func:`split_key`
raises it for a string :func:`cache_key` did not make.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from modcoord.actors.errors import InvalidMessageError

__all__ = ["cache_key", "split_key"]

_dumps = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
    check_circular=True,
).encode


def cache_key(mode: str, context: Mapping[str, Any]) -> str:
    """Return the canonical cache key of a coordination request.

    The key is ``mode`` and ``":"``, then the context as compact JSON with sorted keys, at
    every depth. Equal mappings give equal keys whatever their key order; tuples and lists
    are the same. Values are compared as JSON sees them: ``1`` and ``1.0`` or ``True`` and
    ``1`` give different keys.

    Args:
        mode: the system mode (``MANUAL``, ``HYBRID``, ``FULLY_AUTO``).
        context: the request context (any mapping at the top, dicts inside): string
            keys; values ``None``, bool, int, finite float, str, lists/tuples and dicts.

    Raises:
        InvalidMessageError: if ``mode`` is not a string, ``context`` is not a mapping, or
            the context holds a non-string key, a non-finite float or a value JSON cannot
            carry; the message names the offending path (``context.a.b[2]``).
    """
    if type(mode) is not str:
        raise InvalidMessageError(f"mode must be a string, not {type(mode).__name__}")
    if type(context) is not dict:
        if not isinstance(context, Mapping):
            raise InvalidMessageError(
                f"context must be a mapping, not {type(context).__name__}"
            )
        context = dict(context)
    try:
        bad_key = _has_bad_key(context)
        if not bad_key:
            return mode + ":" + _dumps(context)
    except RecursionError as exc:
        raise InvalidMessageError("context: circular or too deeply nested") from exc
    except (TypeError, ValueError) as exc:
        raise InvalidMessageError(_find_problem(context, "context") or f"context: {exc}") from exc
    raise InvalidMessageError(_find_problem(context, "context") or "context: non-string key")


def split_key(key: str) -> tuple[str, dict[str, Any]]:
    """The ``(mode, context)`` a :func:`cache_key` was made of (the context as JSON gives
    it back: lists for tuples), so a result can be recomputed from its key alone.

    Raises:
        InvalidMessageError: ``key`` was not made by :func:`cache_key`.
    """
    mode, sep, text = key.partition(":")
    try:
        context = json.loads(text) if sep else None
    except ValueError:
        context = None
    if not isinstance(context, dict):
        raise InvalidMessageError(f"not a cache key: {key!r:.80}")
    return mode, context


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _has_bad_key(value: dict[Any, Any] | list[Any] | tuple[Any, ...]) -> bool:
    """Return whether any dict inside ``value`` has a non-string key.

    JSON silently turns ``1`` into ``"1"``, which would make ``{1: x}`` and ``{"1": x}``
    share a key; this walk forbids that. Scalars cost one ``type()`` check each.
    """
    scalars = _SCALARS
    if isinstance(value, dict):
        for k, v in value.items():
            if type(k) is not str:
                return True
            if type(v) not in scalars and isinstance(v, dict | list | tuple) and _has_bad_key(v):
                return True
    else:
        for v in value:
            if type(v) not in scalars and isinstance(v, dict | list | tuple) and _has_bad_key(v):
                return True
    return False


def _find_problem(value: Any, path: str) -> str | None:
    """Describe the first item under ``value`` that cannot be in a key, or return None.

    Containers are ``dict`` (string keys), ``list`` and ``tuple``, as for :mod:`json`.
    """
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path}: {value!r} is not a finite number"
    if isinstance(value, dict):
        for k, v in value.items():
            if type(k) is not str:
                return f"{path}: key {k!r} is a {type(k).__name__}, not a string"
            found = _find_problem(v, f"{path}.{k}")
            if found:
                return found
        return None
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found = _find_problem(v, f"{path}[{i}]")
            if found:
                return found
        return None
    return f"{path}: a {type(value).__name__} cannot be part of a cache key"
