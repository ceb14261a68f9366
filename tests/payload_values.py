"""Values of every msgpack type for the payload tests, and an equality strict enough for them.

Shared by ``unit/test_wire_payload.py`` and ``integration/test_wire_payload_daemon.py``.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack

__all__ = ["VALUES", "same"]

VALUES: list[Any] = [
    None, True, False, 0, 1, -1, 127, 128, -32, -33, 255, 256, 65535, 65536,
    2**31 - 1, 2**32, 2**63 - 1, 2**64 - 1, -(2**63), 0.0, -0.0, 1.5, 1e300, math.inf,
    -math.inf, "", "a", "é✓\U0001F600", "x" * 40, "y" * 70_000, b"", b"\x00\xff",
    bytes(range(256)) * 300, [], {}, [1, [2, [3, [4, []]]]], {"a": {"b": {"c": [None]}}},
    {1: "int key", -2: [b"bin"], 2.5: "float key", False: "bool key"},
    [{"n": i, "text": "the quick brown fox"} for i in range(30)],
    msgpack.ExtType(5, b"ext"), [msgpack.ExtType(0, b"\x00" * 12),
                                 {"t": msgpack.ExtType(127, b"")}],
    list(range(100)), {str(i): i for i in range(50)},
]
"""Every msgpack type at its edges (64-bit ints, -0.0, infinities, long str and bin, ext
types, non-str map keys) and nested."""


def same(a: Any, b: Any) -> bool:
    """Equal, telling apart what ``==`` does not: types (``True`` is not ``1``) and -0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)
