"""A delivered batch's updates kept in wire form until the module looks at them
(``supervisor/client/_rows.py``): the head is decoded, the rows are not, and what the
module finally sees equals what decoding the whole frame gives. Through the real daemon:
``integration/test_wire_payload_daemon.py``."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import msgpack
import pytest

from modcoord.actors.errors import InvalidMessageError
from modcoord.actors.payload import to_wire
from modcoord.actors.update import Update, updates_from_rows
from modcoord.supervisor.client._rows import (
    LAZY_MIN_BYTES,
    LazyUpdates,
    _array_length,
    lazy_batch_event,
)
from modcoord.supervisor.protocol.delivery import encode_batch
from modcoord.supervisor.protocol.framing import EVENT, decode_body

pytestmark = pytest.mark.timeout(30)


def _updates(n: int, payload: Any = None) -> list[Update]:
    return [Update("src" if i % 3 else "other", f"k{i}",
                   to_wire(msgpack.packb({"i": i, "s": "x" * 30} if payload is None
                                         else payload)),
                   ("critical", "medium")[i % 2], i + 1)
            for i in range(n)]


def _body(n: int, payload: Any = None) -> bytes:
    frames = encode_batch("sub-1", 41, "window", _updates(n, payload)).frames
    assert len(frames) == 1
    return frames[0][0][4:]  # the body, without the 4-byte length


def _eager(body: bytes) -> tuple[dict[str, Any], tuple[Update, ...]]:
    msg = decode_body(body)
    params = msg[2]
    return params, updates_from_rows(params["updates"])


@pytest.mark.parametrize("n", [1, 15, 16, 300])  # fixarray, and array 16 from 16 rows on
def test_the_head_is_decoded_and_the_rows_wait_until_looked_at(n: int) -> None:
    body = _body(n)
    msg = lazy_batch_event(body)
    assert msg is not None
    assert msg[:2] == [EVENT, "batch"]
    params, eager = _eager(body)
    lazy = msg[2]["updates"]
    head = {k: v for k, v in msg[2].items() if k != "updates"}
    assert head == {k: v for k, v in params.items() if k != "updates"}
    assert head == {"module_id": "sub-1", "batch_id": 41, "reason": "window"}
    assert isinstance(lazy, LazyUpdates)
    assert len(lazy) == n
    assert not lazy.decoded  # len() did not decode
    assert "not decoded yet" in repr(lazy)
    assert lazy == eager
    assert lazy.decoded
    assert list(lazy) == list(eager)
    assert lazy[0] == eager[0] and lazy[-1] == eager[-1] and lazy[1:3] == eager[1:3]
    assert lazy[0].payload == {"i": 0, "s": "x" * 30}


def test_lazy_updates_compare_and_hash_like_the_tuple_of_their_updates() -> None:
    body = _body(20, payload="same")
    a = lazy_batch_event(body)[2]["updates"]  # type: ignore[index]
    b = lazy_batch_event(body)[2]["updates"]  # type: ignore[index]
    _, eager = _eager(body)
    assert a == b and a == list(eager) and hash(a) == hash(eager)
    assert a != eager[:-1]
    assert (a == "not a sequence of updates") is False
    fresh = lazy_batch_event(body)[2]["updates"]  # type: ignore[index]
    assert pickle.loads(pickle.dumps(fresh)) == eager  # a view pickles as its tuple
    assert copy.copy(fresh) == eager


def test_bodies_of_another_shape_are_left_to_the_whole_decode() -> None:
    rows = [["src", "k", "v", "medium", 1]] * 40
    # not a batch event
    assert lazy_batch_event(msgpack.packb([2, "swept", {"module_id": "m"}])) is None
    assert lazy_batch_event(msgpack.packb([1, 7, None, rows])) is None
    # a batch event whose map does not end with its rows
    body = msgpack.packb([2, "batch", {"updates": rows, "module_id": "m", "batch_id": 1,
                                       "reason": "window"}])
    assert body.startswith(b"\x93\x02\xa5batch") and lazy_batch_event(body) is None
    # rows that are not an array, a map that is not a map, a truncated head
    assert lazy_batch_event(msgpack.packb([2, "batch", {"module_id": "m",
                                                        "updates": "rows"}])) is None
    assert lazy_batch_event(msgpack.packb([2, "batch", ["module_id", "m"]])) is None
    assert lazy_batch_event(b"\x93\x02\xa5batch\x84\xa9module_id") is None
    # a head too long to parse from the first bytes
    body = msgpack.packb([2, "batch", {"module_id": "m" * 5000, "updates": rows}])
    assert lazy_batch_event(body) is None
    assert len(body) >= LAZY_MIN_BYTES


def test_rows_that_cannot_be_decoded_raise_a_clear_error_when_looked_at() -> None:
    head = msgpack.packb([2, "batch", {"module_id": "m", "batch_id": 3, "reason": "size",
                                       "updates": []}])[:-1]  # without the empty array
    short_rows = msgpack.packb([["src", "k"]] * 30)  # rows of two values, not five
    msg = lazy_batch_event(head + short_rows)
    assert msg is not None
    lazy = msg[2]["updates"]
    assert len(lazy) == 30  # the count comes from the header alone
    with pytest.raises(InvalidMessageError, match="cannot be decoded"):
        list(lazy)
    truncated = lazy_batch_event(head + msgpack.packb([["s", "k", 1, "low", 1]] * 30)[:-3])
    assert truncated is not None
    with pytest.raises(InvalidMessageError, match="cannot be decoded"):
        truncated[2]["updates"][0]


def test_array_headers_of_every_width_are_read() -> None:
    for n in (0, 15, 16, 65535, 65536):
        assert _array_length(memoryview(msgpack.packb([None] * n)[:5])) == n
    assert _array_length(memoryview(b"\xa3abc")) is None  # a string, not an array
    assert _array_length(memoryview(b"\xdc\x00")) is None  # a cut header
    assert _array_length(memoryview(b"")) is None
