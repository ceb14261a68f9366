"""Framing: how messages travel as frames, and their envelopes.

Every frame is a 4-byte big-endian unsigned length (:data:`HEADER`) followed by a msgpack
body of that many bytes. The body is never unpickled: msgpack only yields plain data (ext
types stay :class:`msgpack.ExtType`). A frame announcing more than ``max_frame_bytes``
(:data:`~modcoord.supervisor.protocol.limits.DEFAULT_MAX_FRAME_BYTES`, 1 MiB by default) is
broken framing: :class:`FrameDecoder` raises :class:`FramingError` and the server closes
that connection after an error frame.

Messages are msgpack arrays whose first element is the kind:

=======================  ======================================  =========================
kind                     shape                                   direction
=======================  ======================================  =========================
request                  ``[0, id, method, params]``             client → daemon
response                 ``[1, id, error, result]``              daemon → client
event                    ``[2, event, params]``                  daemon → client
callback request         ``[3, id, method, params]``             daemon → client
callback response        ``[4, id, error, result]``              client → daemon
=======================  ======================================  =========================

``error`` is ``None`` or ``[type_name, message]`` (a callback response may also carry a
plain string). The methods, events and callbacks with their params are declared in
:mod:`modcoord.supervisor.protocol.calls`; ``docs/PROTOCOL.md`` describes it all.
"""

from __future__ import annotations

import itertools
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import msgpack

from modcoord.actors.errors import InvalidMessageError
from modcoord.supervisor.protocol.errors import FramingError
from modcoord.supervisor.protocol.limits import DEFAULT_MAX_FRAME_BYTES, MAX_NESTING_DEPTH

__all__ = [
    "CALLBACK",
    "CALLBACK_RESPONSE",
    "EVENT",
    "HEADER",
    "REQUEST",
    "RESPONSE",
    "BadFrame",
    "FrameDecoder",
    "FramingError",
    "decode_body",
    "encode_acks",
    "encode_frame",
    "encode_frames",
    "new_packer",
    "request_id_of",
    "split_inbound",
    "thread_packer",
]

REQUEST = 0
RESPONSE = 1
EVENT = 2
CALLBACK = 3
CALLBACK_RESPONSE = 4

HEADER = struct.Struct(">I")
_pack_header = HEADER.pack
_int_from_bytes = int.from_bytes
# Frame bodies up to this size are decoded in the stream; larger ones on their own.
_STREAM_LIMIT = 1 << 20
_READ_SIZE = 16 << 10  # the decoder's initial buffer (it grows as needed)
# A publish acknowledgement ``[RESPONSE, id, None, seq]`` with both integers as msgpack
# uint 64 (0xcf): a fixed 25-byte frame made by one ``struct`` call.
_ACK = struct.Struct(">IBBBQBBQ")
_ack_fields = (_ACK.size - 4, 0x94, RESPONSE, 0xCF)


class BadFrame:
    """A well-framed frame whose body is not valid msgpack (immutable, compared by value).

    Written out rather than a dataclass: the client imports this module, and
    :mod:`dataclasses` imports :mod:`inspect` (some 20 ms of a client's start).

    Attributes:
        error: what the decoder said.
        size: the body's length in bytes.
    """

    __slots__ = ("error", "size")

    error: str
    size: int

    def __init__(self, error: str, size: int) -> None:
        object.__setattr__(self, "error", error)
        object.__setattr__(self, "size", size)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"BadFrame is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"BadFrame is immutable: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not BadFrame:
            return NotImplemented
        return (self.error, self.size) == (other.error, other.size)

    def __hash__(self) -> int:
        return hash((self.error, self.size))

    def __repr__(self) -> str:
        return f"BadFrame(error={self.error!r}, size={self.size!r})"


# -- encoding ----------------------------------------------------------------------------

_local = threading.local()


def new_packer() -> msgpack.Packer:
    """Return a msgpack packer configured for the wire (bin type, no pickle)."""
    return msgpack.Packer(use_bin_type=True, autoreset=True)


def thread_packer() -> msgpack.Packer:
    """The calling thread's wire packer (made once per thread)."""
    p: msgpack.Packer | None = getattr(_local, "packer", None)
    if p is None:
        p = _local.packer = new_packer()
    return p


def encode_frame(obj: Any) -> bytes:
    """Encode one message as a frame (header + msgpack body). Thread-safe.

    Raises:
        TypeError: ``obj`` holds something msgpack cannot serialize.
        ValueError: a value is out of msgpack's range.
    """
    body: bytes = thread_packer().pack(obj)
    return _pack_header(len(body)) + body


def encode_frames(objs: Iterable[Any]) -> bytes:
    """Encode several messages into one contiguous byte string (for a single send).

    Raises:
        TypeError, ValueError: as :func:`encode_frame`.
    """
    pack = thread_packer().pack
    parts: list[bytes] = []
    append = parts.append
    for obj in objs:
        body = pack(obj)
        append(_pack_header(len(body)))
        append(body)
    return b"".join(parts)


def encode_acks(ids: Sequence[int], values: Sequence[int]) -> bytes:
    """Encode the responses ``[RESPONSE, id, None, value]`` (publish acknowledgements) in
    one contiguous byte string, one fixed-size frame each.

    Raises:
        ValueError: ``ids`` and ``values`` differ in length.
        struct.error: an id or value is not an integer in ``[0, 2**64)`` (an error
            object, say): encode those responses with :func:`encode_frames` instead.
    """
    pack = _ACK.pack
    size, array4, response, uint64 = _ack_fields
    return b"".join([pack(size, array4, response, uint64, rid, 0xC0, uint64, value)
                     for rid, value in zip(ids, values, strict=True)])


def decode_body(body: bytes | bytearray | memoryview) -> Any:
    """Decode one frame body.

    Raises:
        ValueError, TypeError, msgpack.UnpackException: the body is not valid msgpack.
    """
    return msgpack.unpackb(body, raw=False, strict_map_key=False, use_list=True)


class FrameDecoder:
    """Incremental frame decoder: feed bytes as they arrive, get whole messages out.

    Frames may be split across reads or several may arrive in one read. A frame whose
    body is not msgpack (or holds more or less than one msgpack object) comes out as a
    :class:`BadFrame` and the stream stays in sync.

    Decoding streams: one :class:`msgpack.Unpacker` per decoder takes every byte fed, the
    4-byte prefixes are read from it with ``read_bytes`` and each body is unpacked in
    place (no per-frame slicing or copying). After every body the unpacker's offset is
    checked against the frame's end; on any mismatch or decoding error the unpacker is
    replaced by a fresh one fed from a copy of the bytes after that frame. The unpacker's
    length limits (items, bytes) are ``min(max_frame_bytes, 1 MiB)``, so that a length
    field in a frame can never make it allocate more than that many slots; a body larger
    than 1 MiB is read out whole and decoded on its own (msgpack then bounds every length
    by the body's size).

    Attributes:
        max_frame_bytes: the largest body length accepted.
        frames: frames completed so far (a change tells a new frame began).
    """

    __slots__ = ("_broken", "_fed", "_need", "_start", "_stream_limit", "_tail", "_unpacker",
                 "frames", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be positive")
        self.max_frame_bytes = max_frame_bytes
        self._stream_limit = min(max_frame_bytes, _STREAM_LIMIT)
        self._broken: FramingError | None = None
        self.frames = 0  # frames completed so far (whole messages and bad frames)
        self._reset()

    def _reset(self) -> None:
        limit = self._stream_limit
        self._unpacker = msgpack.Unpacker(
            raw=False, strict_map_key=False, use_list=True, max_buffer_size=0,
            read_size=_READ_SIZE, max_str_len=limit, max_bin_len=limit,
            max_array_len=limit, max_map_len=limit, max_ext_len=limit,
        )
        # Offsets are in the unpacker's stream (``Unpacker.tell()``).
        self._start = 0  # where the current (incomplete) frame begins
        self._fed = 0  # the end of the bytes fed
        self._need = -1  # the current frame's body length once its prefix is read
        self._tail = bytearray()  # a copy of the bytes from _start to _fed

    def release_buffer(self) -> bool:
        """Between frames, give back the decoder's buffer (it stays as large as the
        largest read it was fed) by starting a fresh one; returns whether it did.
        Mid-frame (bytes buffered) or broken it does nothing."""
        if self._tail or self._broken is not None:
            return False
        self._reset()
        return True

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._tail)

    @property
    def pending_size(self) -> int:
        """The size of the incomplete frame, prefix included, as its prefix announces it
        (``buffered`` while the prefix itself is incomplete; 0 when nothing is pending).

        A server can hold back the rest of a large frame without reading it (an input
        budget); the value never exceeds ``max_frame_bytes + 4``.
        """
        if not self._tail:
            return 0
        need = self._need
        return need + 4 if need >= 0 else len(self._tail)

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[Any]:
        """Add ``data`` and return an iterator over the messages now complete.

        The data is consumed (copied) at once: the caller may reuse its buffer as soon as
        this returns.

        Raises:
            FramingError: (while iterating) a frame announces more than
                ``max_frame_bytes``; the messages before it are yielded first. The decoder
                is unusable afterwards (every later ``feed`` raises it again).
        """
        out: list[Any] = []
        broken = self._broken
        if broken is None:
            try:
                self._decode(data, out)
            except FramingError as exc:
                broken = self._broken = exc
            self.frames += len(out)
        if broken is not None:
            return itertools.chain(out, _raising(broken))
        return iter(out)

    def _decode(self, data: bytes | bytearray | memoryview, out: list[Any]) -> None:
        while True:
            rest = self._decode_some(data, out)
            if rest is None:
                return
            self._reset()
            data = rest

    def _decode_some(self, data: bytes | bytearray | memoryview, out: list[Any]
                     ) -> bytes | None:
        """Decode what ``data`` completes; returns the bytes to resynchronise with
        (after a bad frame) or None when everything was taken."""
        unpacker = self._unpacker
        unpacker.feed(data)
        old_start = self._start
        old_fed = self._fed
        fed = old_fed + len(data)
        start = old_start
        need = self._need
        pos = start + 4 if need >= 0 else start
        read_bytes = unpacker.read_bytes
        unpack = unpacker.unpack
        tell = unpacker.tell
        append = out.append
        stream_limit = self._stream_limit
        resync = False
        try:
            while True:
                if need < 0:
                    if fed - pos < 4:
                        break
                    need = _int_from_bytes(read_bytes(4), "big")
                    if need > self.max_frame_bytes:
                        raise FramingError(f"frame of {need} bytes exceeds the maximum of "
                                           f"{self.max_frame_bytes} bytes")
                    pos += 4
                end = pos + need
                if end > fed:
                    break
                if need > stream_limit or need == 0:
                    body = read_bytes(need)
                    try:
                        msg = msgpack.unpackb(body, raw=False, strict_map_key=False,
                                              use_list=True)
                    except Exception as exc:
                        msg = BadFrame(f"{type(exc).__name__}: {exc}", need)
                else:
                    try:
                        msg = unpack()
                    except Exception as exc:
                        msg = BadFrame(f"{type(exc).__name__}: {exc}", need)
                        resync = True
                    else:
                        at = tell()
                        if at != end:
                            if at < end:
                                msg = BadFrame(f"ExtraData: {end - at} bytes after the "
                                               "message in the frame", need)
                                read_bytes(end - at)
                            else:
                                msg = BadFrame("OutOfData: the message runs past the end "
                                               "of its frame", need)
                                resync = True
                append(msg)
                start = pos = end
                need = -1
                if resync:
                    break
        finally:
            self._need = need
            self._fed = fed
            self._start = start
            # Keep a copy of the bytes of the incomplete frame (for resynchronising).
            tail = self._tail
            if start != old_start or resync:
                cut = start - old_fed  # >= 0: a frame completed, so it ended in data
                if cut >= 0:
                    self._tail = bytearray(data[cut:])
                else:
                    del tail[:start - old_start]
                    tail += data
            elif fed != old_fed:
                tail += data
        if resync:
            return bytes(self._tail)
        return None


def _raising(exc: BaseException) -> Iterator[Any]:
    raise exc
    yield  # pragma: no cover - makes this a generator


# -- envelopes ---------------------------------------------------------------------------


def request_id_of(msg: Any) -> int | None:
    """Best effort: the id of a (possibly malformed) inbound message, else None."""
    if isinstance(msg, list) and len(msg) >= 2 and type(msg[1]) is int:
        return int(msg[1])
    return None


def split_inbound(msg: Any) -> tuple[int, int, Any, Any]:
    """Check the envelope of a message from a client.

    Returns:
        ``(kind, id, method, params)`` for a request, ``(kind, id, error, result)`` for a
        callback response.

    Raises:
        InvalidMessageError: naming what is wrong with the envelope.
    """
    if isinstance(msg, BadFrame):
        if msg.error.startswith("StackError"):
            raise InvalidMessageError(
                f"undecodable frame ({msg.size} bytes): nested deeper than msgpack's 1024 "
                f"levels (a payload may nest at most {MAX_NESTING_DEPTH} levels); flatten it")
        raise InvalidMessageError(f"undecodable frame ({msg.size} bytes): {msg.error}")
    if type(msg) is not list:
        raise InvalidMessageError(
            f"message must be an array [kind, id, ...], got {type(msg).__name__}"
        )
    if len(msg) != 4:
        raise InvalidMessageError(f"message must have 4 elements, got {len(msg)}")
    kind, rid, third, fourth = msg
    if type(kind) is not int:
        raise InvalidMessageError(
            f"message kind must be {REQUEST} (request) or {CALLBACK_RESPONSE} "
            f"(callback response), got {type(kind).__name__} {kind!r}")
    if type(rid) is not int:
        raise InvalidMessageError(f"message id must be an integer, got {type(rid).__name__}")
    if kind == REQUEST:
        if type(third) is not str:
            raise InvalidMessageError(
                f"request method must be a string, got {type(third).__name__}"
            )
        if type(fourth) is not dict:
            raise InvalidMessageError(
                f"{third}: params must be a map, got {type(fourth).__name__}"
            )
        return REQUEST, rid, third, fourth
    if kind == CALLBACK_RESPONSE:
        if third is not None and not isinstance(third, (str, list)):
            raise InvalidMessageError("callback response error must be null, a string or "
                                      "[type, message]")
        return CALLBACK_RESPONSE, rid, third, fourth
    raise InvalidMessageError(
        f"message kind must be {REQUEST} (request) or {CALLBACK_RESPONSE} "
        f"(callback response), got {kind!r}"
    )
