"""Canonical cache keys: one string per coordination request, equal for equal requests.

Rules: the key is the mode, ``":"`` and the context as compact JSON with sorted keys at
every depth, so equal mappings give equal keys whatever their key order, and tuples and
lists are the same; values compare as JSON sees them (``1`` and ``1.0`` differ). Only plain
data can be in a key: string keys; ``None``, bool, int, finite float, str, lists/tuples and
dicts.

Two encoders write the JSON: msgspec's, key-sorted, for a context a walk has found plain
(the common case, about five times faster than the stdlib's), and the stdlib's for the
rest (an int beyond 64 bits, a subclass of a plain type, more than 32 levels), which
also names what a key cannot hold. Both give the same JSON value; only the text of some
floats differs (``1e16`` against ``1e+16``), and a context always takes the same path.

On failure: :func:`cache_key` raises :class:`~modcoord.actors.errors.InvalidMessageError`
naming the offending path (``context.a.b[2]``) and computes nothing; :func:`split_key`
raises it for a string :func:`cache_key` did not make.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from modcoord.actors.errors import InvalidMessageError

__all__ = ["cache_key", "split_key"]

_dumps = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
    check_circular=True,
).encode
# The fast path: msgspec writes the same compact, key-sorted JSON about ten times faster
# than the stdlib encoder (whose Python-level set-up costs more than a small context's
# encoding). It accepts more than a key may hold (sets, bytes, datetimes) and writes NaN
# as null, so it runs only on a context :func:`_plain` has walked and found plain.
_fast_dumps = msgspec.json.Encoder(order="sorted").encode


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
        if _plain(context, 0):
            try:
                return mode + ":" + _fast_dumps(context).decode()
            except (TypeError, ValueError, OverflowError):
                pass  # an int beyond 64 bits: the stdlib path below keys it
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
_EXACT = frozenset({str, int, bool, type(None)})
_CONTAINERS = frozenset({dict, list, tuple})
_MAX_FAST_DEPTH = 32  # deeper contexts take the stdlib path (which reports recursion)


def _plain(value: dict[Any, Any] | list[Any] | tuple[Any, ...], depth: int) -> bool:
    """Whether ``value`` holds only what a key may (string keys; ``None``, bool, int,
    finite float, str of exactly those types; dicts, lists and tuples), at most
    :data:`_MAX_FAST_DEPTH` levels deep. Subclasses (enums, ``OrderedDict``) answer
    False: the stdlib path keys them as JSON sees them."""
    if depth > _MAX_FAST_DEPTH:
        return False
    items: Iterable[Any] = value
    if type(value) is dict:
        for k in value:
            if type(k) is not str:
                return False
        items = value.values()
    for v in items:
        t = type(v)
        if t in _EXACT:
            continue
        if t is float:
            if v - v != 0.0:  # inf or NaN
                return False
        elif t in _CONTAINERS:
            if not _plain(v, depth + 1):
                return False
        else:
            return False
    return True


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
