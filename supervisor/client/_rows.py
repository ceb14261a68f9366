"""A delivered batch's updates kept in wire form until something looks at them.

A batch event carries its updates as one msgpack array of ``[module_id, key, payload,
priority, seq]`` rows, the last value of the event's map. For a frame of at least
:data:`LAZY_MIN_BYTES` the reading thread does not decode that array: it decodes the
event's head (subscriber, batch id, reason), reads the array's length from its header,
and hands the module a :class:`LazyUpdates` over the rows' bytes. ``len(batch)`` and
``len(batch.updates)`` cost nothing; the rows are decoded, all at once and only once,
when the updates are first iterated or indexed. A module that counts, forwards or
filters on the batch alone never pays for decoding updates it does not read.

A frame that does not have exactly that shape is decoded whole, as every smaller frame
is: this module is an optimisation of the reading thread, never another format.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

import msgpack

from modcoord.actors.errors import InvalidMessageError
from modcoord.supervisor.protocol.framing import EVENT, decode_body

if TYPE_CHECKING:
    from modcoord.actors.update import Update

__all__ = ["LAZY_MIN_BYTES", "LazyUpdates", "lazy_batch_event"]

LAZY_MIN_BYTES = 1024
"""Frames shorter than this are decoded whole: decoding a few rows costs less than the
head parsing that would skip them."""

_HEAD_MAX_BYTES = 4096
"""The event's head (up to the rows' array header) is parsed from at most this many of the
frame's first bytes; a head longer than that (a subscriber id near its length limit) makes
the frame be decoded whole."""

_BATCH_PREFIX = b"\x93" + msgpack.packb(EVENT) + msgpack.packb("batch")
"""A batch event body begins with these bytes: a 3-array, ``EVENT``, ``"batch"``."""


class LazyUpdates(Sequence["Update"]):
    """The updates of one batch event, decoded from their wire form on first access.

    A read-only sequence of :class:`~modcoord.actors.update.Update`: its length is known
    without decoding; iterating, indexing, comparing or hashing decodes every row once
    (and drops the wire bytes). It compares equal to any sequence of the same updates.

    Args:
        rows: the msgpack array of the batch's rows (its encoding, header included).
        count: the number of rows its header announces.

    Raises (on first access):
        InvalidMessageError: the rows are not valid msgpack, or a row is not a sequence
            of at least five values; the batch's callback then fails (the client counts
            it in ``callback_errors`` and logs it).
    """

    __slots__ = ("_count", "_rows", "_updates")

    def __init__(self, rows: bytes | memoryview, count: int) -> None:
        self._rows: bytes | memoryview | None = rows
        self._count = count
        self._updates: tuple[Update, ...] | None = None

    @property
    def decoded(self) -> bool:
        """Whether the rows have been decoded (for tests and diagnostics)."""
        return self._updates is not None

    def _decode(self) -> tuple[Update, ...]:
        updates = self._updates
        if updates is not None:
            return updates
        # Imported on the first decode (dataclasses), as for an eagerly decoded batch.
        from modcoord.actors.update import updates_from_rows

        rows = self._rows
        assert rows is not None
        try:
            decoded = decode_body(rows)
            updates = updates_from_rows(decoded)
        except (ValueError, TypeError, IndexError, msgpack.UnpackException) as exc:
            raise InvalidMessageError(
                f"a delivered batch's update rows cannot be decoded ({type(exc).__name__}: "
                f"{exc}); the daemon and this client may speak different protocol versions"
            ) from exc
        if len(updates) != self._count:
            raise InvalidMessageError(
                f"a delivered batch announced {self._count} updates but holds "
                f"{len(updates)}")
        self._updates = updates  # two threads decoding at once make equal tuples
        self._rows = None
        return updates

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> Update: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Update, ...]: ...

    def __getitem__(self, index: int | slice) -> Update | tuple[Update, ...]:
        return self._decode()[index]

    def __iter__(self) -> Iterator[Update]:
        return iter(self._decode())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LazyUpdates):
            return self._decode() == other._decode()
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return self._decode() == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._decode())

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (or copied) as the tuple of its updates: the wire bytes are a view."""
        return (tuple, (self._decode(),))

    def __repr__(self) -> str:
        if self._updates is None:
            return f"<LazyUpdates: {self._count} updates, not decoded yet>"
        return f"LazyUpdates({self._updates!r})"


def _array_length(data: memoryview) -> int | None:
    """The length an msgpack array header at the start of ``data`` announces (``None``:
    not an array header)."""
    if not data:
        return None
    first = data[0]
    if 0x90 <= first <= 0x9F:
        return first & 0x0F
    if first == 0xDC and len(data) >= 3:
        return int.from_bytes(data[1:3], "big")
    if first == 0xDD and len(data) >= 5:
        return int.from_bytes(data[1:5], "big")
    return None


def lazy_batch_event(body: bytes) -> list[Any] | None:
    """``[EVENT, "batch", params]`` for a batch event body, its ``updates`` a
    :class:`LazyUpdates`; ``None`` if ``body`` is not a batch event whose map ends with
    its ``updates`` array (decode it whole then: that path reports what is wrong)."""
    if not body.startswith(_BATCH_PREFIX):
        return None
    view = memoryview(body)
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False,
                                max_buffer_size=_HEAD_MAX_BYTES)
    unpacker.feed(view[:_HEAD_MAX_BYTES])
    try:
        unpacker.read_array_header()  # the prefix matched it, EVENT and "batch"
        unpacker.skip()
        unpacker.skip()
        entries = unpacker.read_map_header()
        params: dict[str, Any] = {}
        for i in range(entries):
            key = unpacker.unpack()
            if key == "updates":
                if i != entries - 1:
                    return None
                start = unpacker.tell()
                count = _array_length(view[start:start + 5])
                if count is None:
                    return None
                params[key] = LazyUpdates(view[start:], count)
                return [EVENT, "batch", params]
            params[key] = unpacker.unpack()
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    return None
