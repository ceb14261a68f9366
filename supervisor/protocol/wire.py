"""The wire protocol between module processes and the daemon (SPEC §7).

Framing: every frame is a 4-byte big-endian unsigned length followed by a msgpack body of
that many bytes. The body is never unpickled: msgpack only yields plain data (ext types
stay :class:`msgpack.ExtType`). A frame announcing more than ``max_frame_bytes`` (1 MiB by
default) is broken framing: :class:`FrameDecoder` raises :class:`FramingError` and the
server closes that connection after an error frame.

Messages are msgpack arrays:

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
plain string). Events are ``"batch"`` with params ``{"module_id": subscriber,
"batch_id", "reason", "updates": [[module_id, key, payload, priority, seq], ...]}``, and
``"swept"`` ``{module_id, reason, idle_s, inactive_after_ms}`` (the memory manager removed
that module's subscriptions; the client registers it again). A client ignores (and logs)
an event it does not know.
No event frame is larger than ``max_frame_bytes``: a batch that would be goes out as several
consecutive frames with the same ``batch_id`` (:func:`encode_batch`), which is why a
publish whose update could not fit one frame is refused (:func:`check_payload`).
Callback methods are ``"on_mode_change"`` ``{module_id, mode, strategy, context}`` and
``"get_performance_metrics"`` ``{module_id}``.

Request methods and their params (validated here, by hand, before anything reaches the
coordinator; unknown fields are refused too):

- ``hello`` ``{client?: str, pid?: int}`` → ``{pid, mode, max_frame_bytes, version}``
- ``register`` ``{module_id, name, supported_modes, subscribe, has_metrics}``
- ``unregister`` ``{module_id}``
- ``publish`` ``{module_id, key (1..1024 chars), payload, priority?}`` → seq
- ``coordinate`` ``{mode, context?: map}`` → ``{mode, strategy, results, errors, cached,
  latency_ms}``
- control: ``set_mode {mode}``, ``status``, ``insights``, ``optimize``, ``reload``,
  ``config``, ``metrics``, ``stop`` (all ``{}``), ``crash {actor, kind?}`` and
  ``actor {actor, method, args?, kwargs?}`` where ``args`` is a list of positional
  arguments (a map is taken as keyword arguments) and ``kwargs`` a map. The validated
  ``actor`` params given to the coordinator are ``{actor, method, args: dict (keyword
  arguments), posargs: list (positional arguments)}``.
"""

from __future__ import annotations

import itertools
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from modcoord.actors.errors import (
    ActorCrashedError,
    ActorError,
    ActorStoppedError,
    CallTimeoutError,
    InvalidMessageError,
    ModcoordError,
    QueueFullError,
    RemoteError,
)
from modcoord.actors.update import PRIORITIES, PRIORITY_RANK, Update
from modcoord.supervisor.daemon.config import MODES
from modcoord.supervisor.protocol.limits import MAX_NESTING_DEPTH
from modcoord.supervisor.protocol.module import MAX_MODULE_ID_LENGTH, ModuleInfo

__all__ = [
    "ACTOR_NAMES",
    "CALLBACK",
    "CALLBACK_RESPONSE",
    "CONTROL_METHODS",
    "CRASH_KINDS",
    "DEFAULT_MAX_FRAME_BYTES",
    "DELIVERY_ENVELOPE_BYTES",
    "EVENT",
    "HEADER",
    "MAX_KEY_LENGTH",
    "MAX_NESTING_DEPTH",
    "METHODS",
    "PROTOCOL_VERSION",
    "REQUEST",
    "RESPONSE",
    "BadFrame",
    "BatchFrames",
    "FrameDecoder",
    "FramingError",
    "check_coordinate",
    "check_payload",
    "check_publish",
    "decode_body",
    "encode_acks",
    "encode_batch",
    "encode_frame",
    "encode_frames",
    "error_from_wire",
    "error_to_wire",
    "new_packer",
    "normalize_mode_param",
    "payload_packer",
    "request_id_of",
    "split_inbound",
    "validate_request",
]

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME_BYTES = 1 << 20
MAX_KEY_LENGTH = 1024

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

ACTOR_NAMES: tuple[str, ...] = ("debouncer", "cache", "batcher", "memory", "monitor")
CRASH_KINDS: tuple[str, ...] = ("exception", "base_exception")
CONTROL_METHODS: frozenset[str] = frozenset(
    {"set_mode", "status", "insights", "optimize", "actor", "reload", "config", "metrics",
     "crash", "stop"}
)
METHODS: frozenset[str] = frozenset({"hello", "register", "unregister", "publish",
                                     "coordinate"}) | CONTROL_METHODS
_METHOD_LIST = ", ".join(sorted(METHODS))


class FramingError(InvalidMessageError):
    """The byte stream is not valid framing (a frame larger than allowed).

    The stream cannot be resynchronised: the connection is closed.
    """


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A well-framed frame whose body is not valid msgpack.

    Attributes:
        error: what the decoder said.
        size: the body's length in bytes.
    """

    error: str
    size: int


# -- encoding ----------------------------------------------------------------------------

_local = threading.local()


def new_packer() -> msgpack.Packer:
    """Return a msgpack packer configured for the wire (bin type, no pickle)."""
    return msgpack.Packer(use_bin_type=True, autoreset=True)


def _packer() -> msgpack.Packer:
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = new_packer()
    return packer


def encode_frame(obj: Any) -> bytes:
    """Encode one message as a frame (header + msgpack body). Thread-safe.

    Raises:
        TypeError: ``obj`` holds something msgpack cannot serialize.
        ValueError: a value is out of msgpack's range.
    """
    body: bytes = _packer().pack(obj)
    return _pack_header(len(body)) + body


def encode_frames(objs: Iterable[Any]) -> bytes:
    """Encode several messages into one contiguous byte string (for a single send).

    Raises:
        TypeError, ValueError: as :func:`encode_frame`.
    """
    pack = _packer().pack
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


# -- deliverability ----------------------------------------------------------------------

_UINT64_MAX = (1 << 64) - 1
_INT64_MIN = -(1 << 63)
# Per update row beside its payload, module id and key: the 5-element array header, the
# priority (at most "critical", 9 bytes) and the seq (uint 64, 9 bytes).
_ROW_FIXED_BYTES = 1 + 9 + 9


def _delivery_head(subscriber_id: str, batch_id: int, reason: str) -> bytes:
    """The bytes of a batch event body up to its ``updates`` array header."""
    pack = _packer().pack
    return b"".join((b"\x93", pack(EVENT), pack("batch"), b"\x84", pack("module_id"),
                     pack(subscriber_id), pack("batch_id"), pack(batch_id), pack("reason"),
                     pack(reason), pack("updates")))


DELIVERY_ENVELOPE_BYTES = len(_delivery_head(
    "\U0010ffff" * MAX_MODULE_ID_LENGTH, _UINT64_MAX, "x" * 32)) + 5
"""Most bytes of a batch event body that are not its update rows (the longest subscriber
id, the largest batch id, a reason of up to 32 bytes and the rows' array header)."""


_CONTAINERS = frozenset({dict, list, tuple})


def _nesting_ok(obj: Any, level: int) -> bool:
    """Whether the container ``obj``, at nesting ``level``, nests at most
    :data:`MAX_NESTING_DEPTH` levels (map keys are not containers on the wire)."""
    if level > MAX_NESTING_DEPTH:
        return False
    values = obj.values() if type(obj) is dict else obj
    if _CONTAINERS.isdisjoint(map(type, values)):  # a flat container: a C-speed scan
        return True
    inner = level + 1
    containers = _CONTAINERS
    for v in values:  # noqa: SIM110 - a loop, not all(): no generator frame per level
        if type(v) in containers and not _nesting_ok(v, inner):
            return False
    return True


def _too_deep() -> InvalidMessageError:
    return InvalidMessageError(
        f"publish: payload nested deeper than {MAX_NESTING_DEPTH} levels (the maximum "
        "nesting depth of lists and maps); flatten it")


def _unencodable(exc: Exception) -> InvalidMessageError:
    if "recursion limit" in str(exc):
        return _too_deep()
    return InvalidMessageError(
        f"publish: payload cannot be encoded for delivery ({exc}); use only msgpack types "
        "(None, bool, int within 64 bits, float, str, bytes, list, map)")


# Beside the payload, the most an update's delivery frame can need (longest names).
_WORST_OVERHEAD = (DELIVERY_ENVELOPE_BYTES + _ROW_FIXED_BYTES + 10
                   + 4 * (MAX_MODULE_ID_LENGTH + MAX_KEY_LENGTH))


def payload_packer() -> Callable[[Any], bytes]:
    """The calling thread's ``pack`` function, for :func:`check_payload` in a loop."""
    pack: Callable[[Any], bytes] = _packer().pack
    return pack


def check_payload(module_id: str, key: str, payload: Any,
                  max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                  pack: Callable[[Any], bytes] | None = None) -> None:
    """Check, at publish, that an update can be delivered: its payload nests at most
    :data:`MAX_NESTING_DEPTH` levels, is msgpack-encodable, and the update fits one
    delivery frame of ``max_frame_bytes`` (beside :data:`DELIVERY_ENVELOPE_BYTES`).

    Cheap: scalars, strings and bytes are judged by type and length; containers are
    packed once (C speed) for their exact size, and walked for depth only when they are
    longer than :data:`MAX_NESTING_DEPTH` bytes (each level takes at least a byte).
    ``pack`` is the calling thread's packer (:func:`payload_packer`), to save looking it
    up per call.

    Raises:
        InvalidMessageError: naming the limit that is exceeded and what to do.
    """
    t = type(payload)
    if t is dict or t is list or t is tuple:
        try:
            size = len((pack or _packer().pack)(payload))
        except (TypeError, ValueError, OverflowError) as exc:
            raise _unencodable(exc) from None
        if size > MAX_NESTING_DEPTH and not _nesting_ok(payload, 1):
            raise _too_deep()
    elif t is str:
        size = 5 + 4 * len(payload)  # a bound; made exact below if it matters
    elif t is bytes or t is bytearray:
        size = 5 + len(payload)
    elif t is float or t is bool or payload is None:
        return
    elif t is int:
        if _INT64_MIN <= payload <= _UINT64_MAX:
            return
        raise _unencodable(OverflowError(f"integer {payload} is outside 64 bits"))
    else:  # an extension type, or something only the packer can judge
        try:
            size = len((pack or _packer().pack)(payload))
        except (TypeError, ValueError, OverflowError) as exc:
            raise _unencodable(exc) from None
    if size <= max_frame_bytes - _WORST_OVERHEAD:
        return
    room = (max_frame_bytes - DELIVERY_ENVELOPE_BYTES - _ROW_FIXED_BYTES - 10
            - 4 * (len(module_id) + len(key)))
    if t is str and size > room:
        try:
            size = len((pack or _packer().pack)(payload))
        except (TypeError, ValueError, OverflowError) as exc:  # lone surrogates
            raise _unencodable(exc) from None
    if size > room:
        raise InvalidMessageError(
            f"publish: payload of {size} bytes (encoded) does not fit one delivery frame: "
            f"at most {room} bytes with this module id and key (daemon.max_frame_bytes "
            f"{max_frame_bytes} minus the delivery envelope); split it into several "
            "updates or raise daemon.max_frame_bytes")


@dataclass(frozen=True, slots=True)
class BatchFrames:
    """A batch (or the first part of one) encoded for one subscriber by
    :func:`encode_batch`.

    Attributes:
        frames: ``(frame, updates in it)`` in batch order; each body at most the limit.
        failed: ``(update, why)`` for each update that cannot be delivered (it cannot be
            encoded, or alone it does not fit a frame); the others are in ``frames``.
        rest: the index of the first update not encoded yet (``len(updates)`` when all
            were): with ``max_bytes``, what is left for later.
        oversized: whether the batch did not fit one frame (it was split).
    """

    frames: list[tuple[bytes, int]]
    failed: list[tuple[Update, str]]
    rest: int
    oversized: bool = False


def encode_batch(subscriber_id: str, batch_id: int, reason: str, updates: Sequence[Update],
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, *,
                 max_bytes: int | None = None, whole: bool = True) -> BatchFrames:
    """Encode a batch event for ``subscriber_id`` in frames of at most
    ``max_frame_bytes`` (body). Never raises for a bad update: what cannot go is returned
    in :attr:`BatchFrames.failed`, everything else is delivered.

    The common case is one frame. A batch too large for a frame is split, in order, into
    consecutive frames with the same ``batch_id``; a batch with an update that cannot be
    encoded is encoded update by update, leaving that one out.

    Args:
        max_bytes: stop after the frame that reaches this many bytes (at least one frame
            is made); the updates from :attr:`BatchFrames.rest` on are left for later.
        whole: try the whole batch as one frame first (pass False when it is known not
            to fit, to save encoding it in vain).
    """
    if whole:
        rows = [[u.module_id, u.key, u.payload, u.priority, u.seq] for u in updates]
        try:
            frame = encode_frame([EVENT, "batch", {"module_id": subscriber_id,
                                                   "batch_id": batch_id, "reason": reason,
                                                   "updates": rows}])
        except Exception:
            oversized = False
        else:
            if len(frame) - HEADER.size <= max_frame_bytes:
                return BatchFrames([(frame, len(rows))], [], len(rows))
            oversized = True
            del frame
        del rows
    else:
        oversized = True
    packer = _packer()
    head = _delivery_head(subscriber_id, batch_id, reason)
    limit = max_frame_bytes - len(head) - 5  # 5: the largest array header
    frames: list[tuple[bytes, int]] = []
    failed: list[tuple[Update, str]] = []
    group: list[bytes] = []
    size = 0
    total = 0

    def close_group() -> int:
        body = b"".join((head, packer.pack_array_header(len(group)), *group))
        frames.append((_pack_header(len(body)) + body, len(group)))
        return len(body) + HEADER.size

    for i, u in enumerate(updates):
        try:
            packed: bytes = packer.pack([u.module_id, u.key, u.payload, u.priority, u.seq])
        except Exception as exc:
            failed.append((u, f"cannot be encoded: {type(exc).__name__}: {exc}"))
            continue
        n = len(packed)
        if n > limit:
            failed.append((u, f"an update of {n} bytes does not fit a frame of "
                              f"{max_frame_bytes} bytes"))
            continue
        if group and size + n > limit:
            total += close_group()
            group, size = [], 0
            if max_bytes is not None and total >= max_bytes:
                return BatchFrames(frames, failed, i, oversized)
        group.append(packed)
        size += n
    if group:
        close_group()
    return BatchFrames(frames, failed, len(updates), oversized)


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


# -- errors ------------------------------------------------------------------------------

_SIMPLE_ERRORS: dict[str, Callable[[str], ModcoordError]] = {
    "InvalidMessageError": InvalidMessageError,
    "FramingError": FramingError,
    "QueueFullError": QueueFullError,
    "CallTimeoutError": CallTimeoutError,
}
_ACTOR_ERRORS: dict[str, type[ActorError]] = {
    "ActorError": ActorError,
    "ActorCrashedError": ActorCrashedError,
    "ActorStoppedError": ActorStoppedError,
}


def error_to_wire(exc: BaseException) -> list[str]:
    """Return the wire form ``[type_name, message]`` of an exception.

    A :class:`ModcoordError` keeps its type name; anything else is an ``InternalError``
    whose message names the original type.
    """
    if isinstance(exc, ModcoordError):
        return [type(exc).__name__, str(exc)]
    return ["InternalError", f"{type(exc).__name__}: {exc}"]


def error_from_wire(error: Any) -> ModcoordError:
    """Rebuild an error received as ``[type_name, message]`` (or a plain string).

    Known modcoord types whose constructor allows it come back as that type
    (``InvalidMessageError``, ``QueueFullError``, ``CallTimeoutError``, ``FramingError``,
    the actor errors); anything else is a :class:`RemoteError` carrying the remote type
    and message.
    """
    if isinstance(error, (list, tuple)) and len(error) == 2:
        type_name, message = str(error[0]), str(error[1])
    else:
        type_name, message = "RemoteError", str(error)
    simple = _SIMPLE_ERRORS.get(type_name)
    if simple is not None:
        return simple(message)
    actor_cls = _ACTOR_ERRORS.get(type_name)
    if actor_cls is not None:
        actor, sep, rest = message.partition(": ")
        if sep:
            return actor_cls(actor, rest)
    return RemoteError(type_name, message)


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


# -- params validation -------------------------------------------------------------------

_MODE_LOOKUP: dict[str, str] = {}
for _m in MODES:
    _MODE_LOOKUP[_m] = _m
    _MODE_LOOKUP[_m.lower()] = _m


def normalize_mode_param(method: str, value: Any, field: str = "mode") -> str:
    """Return the canonical mode name for a ``mode`` param.

    Raises:
        InvalidMessageError: not a string, or not MANUAL, HYBRID or FULLY_AUTO
            (case-insensitive, ``-`` or ``_``).
    """
    if type(value) is not str:
        raise InvalidMessageError(
            f"{method}: '{field}' must be a string, got {type(value).__name__}"
        )
    mode = _MODE_LOOKUP.get(value)
    if mode is None:
        mode = value.strip().upper().replace("-", "_")
        if mode not in MODES:
            raise InvalidMessageError(
                f"{method}: '{field}' must be one of {', '.join(MODES)}, got {value!r}"
            )
    return mode


def _unknown_fields(method: str, params: dict[Any, Any], known: Iterable[str]) -> None:
    extra = [k for k in params if k not in known]
    if extra:
        raise InvalidMessageError(
            f"{method}: unknown field(s) {', '.join(repr(k) for k in extra)}"
        )


def _missing(method: str, field: str) -> InvalidMessageError:
    return InvalidMessageError(f"{method}: missing field '{field}'")


_PUBLISH_FIELDS = ("module_id", "key", "payload", "priority")


def check_publish(params: dict[Any, Any]) -> tuple[str, str, Any, str]:
    """Validate ``publish`` params (the hot path: plain type checks only).

    Returns:
        ``(module_id, key, payload, priority)``; priority defaults to ``medium``.

    Raises:
        InvalidMessageError: a field is missing, of the wrong type, an empty or too long
            key, an unknown priority, or an unknown field.
    """
    try:
        module_id = params["module_id"]
        key = params["key"]
        payload = params["payload"]
    except KeyError as exc:
        raise _missing("publish", str(exc.args[0])) from None
    priority = params.get("priority", "medium")
    if type(module_id) is not str or not module_id:
        raise InvalidMessageError("publish: 'module_id' must be a non-empty string")
    if type(key) is not str or not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidMessageError(
            f"publish: 'key' must be a non-empty string of at most {MAX_KEY_LENGTH} chars"
        )
    if type(priority) is not str or priority not in PRIORITY_RANK:
        raise InvalidMessageError(
            f"publish: 'priority' must be one of {', '.join(PRIORITIES)}, got {priority!r}"
        )
    if len(params) != (4 if "priority" in params else 3):
        _unknown_fields("publish", params, _PUBLISH_FIELDS)
    return module_id, key, payload, priority


def check_coordinate(params: dict[Any, Any]) -> tuple[str, dict[Any, Any]]:
    """Validate ``coordinate`` params.

    Returns:
        ``(mode, context)`` with the canonical mode name; context defaults to ``{}``.

    Raises:
        InvalidMessageError: missing or unknown mode, a context that is not a map, or an
            unknown field.
    """
    if "mode" not in params:
        raise _missing("coordinate", "mode")
    mode = normalize_mode_param("coordinate", params["mode"])
    context = params.get("context")
    if context is None:
        context = {}
    elif type(context) is not dict:
        raise InvalidMessageError(
            f"coordinate: 'context' must be a map, got {type(context).__name__}"
        )
    if len(params) > 2 or (len(params) == 2 and "context" not in params):
        _unknown_fields("coordinate", params, ("mode", "context"))
    return mode, context


def _check_hello(params: dict[Any, Any]) -> dict[str, Any]:
    _unknown_fields("hello", params, ("client", "pid"))
    client = params.get("client", "")
    if type(client) is not str:
        raise InvalidMessageError("hello: 'client' must be a string")
    pid = params.get("pid", 0)
    if type(pid) is not int:
        raise InvalidMessageError("hello: 'pid' must be an integer")
    return {"client": client, "pid": pid}


_REGISTER_FIELDS = ("module_id", "name", "supported_modes", "subscribe", "has_metrics")


def _check_register(params: dict[Any, Any]) -> ModuleInfo:
    _unknown_fields("register", params, _REGISTER_FIELDS)
    if "module_id" not in params:
        raise _missing("register", "module_id")
    if type(params.get("has_metrics", False)) is not bool:
        raise InvalidMessageError("register: 'has_metrics' must be a boolean")
    try:
        return ModuleInfo.from_params(params)
    except InvalidMessageError as exc:
        raise InvalidMessageError(f"register: {exc}") from None


def _check_module_id(method: str, params: dict[Any, Any]) -> str:
    _unknown_fields(method, params, ("module_id",))
    if "module_id" not in params:
        raise _missing(method, "module_id")
    module_id = params["module_id"]
    if type(module_id) is not str or not module_id:
        raise InvalidMessageError(f"{method}: 'module_id' must be a non-empty string")
    return module_id


def _check_empty(method: str) -> Callable[[dict[Any, Any]], dict[str, Any]]:
    def check(params: dict[Any, Any]) -> dict[str, Any]:
        _unknown_fields(method, params, ())
        return {}

    return check


def _check_set_mode(params: dict[Any, Any]) -> dict[str, Any]:
    _unknown_fields("set_mode", params, ("mode",))
    if "mode" not in params:
        raise _missing("set_mode", "mode")
    return {"mode": normalize_mode_param("set_mode", params["mode"])}


def _check_actor_name(method: str, params: dict[Any, Any]) -> str:
    if "actor" not in params:
        raise _missing(method, "actor")
    actor = params["actor"]
    if type(actor) is not str or actor not in ACTOR_NAMES:
        raise InvalidMessageError(
            f"{method}: 'actor' must be one of {', '.join(ACTOR_NAMES)}, got {actor!r}"
        )
    return actor


def _check_actor(params: dict[Any, Any]) -> dict[str, Any]:
    _unknown_fields("actor", params, ("actor", "method", "args", "kwargs"))
    actor = _check_actor_name("actor", params)
    if "method" not in params:
        raise _missing("actor", "method")
    method = params["method"]
    if type(method) is not str or not method.isidentifier() or method.startswith("_"):
        raise InvalidMessageError(
            f"actor: 'method' must be a public method name, got {method!r}"
        )
    args = params.get("args")
    kwargs = params.get("kwargs")
    posargs: list[Any] = []
    keywords: dict[str, Any] = {}
    if type(args) is list:
        posargs = args
    elif type(args) is dict:
        keywords.update(args)
    elif args is not None:
        raise InvalidMessageError(
            f"actor: 'args' must be a list (or a map of keyword arguments), "
            f"got {type(args).__name__}"
        )
    if type(kwargs) is dict:
        keywords.update(kwargs)
    elif kwargs is not None:
        raise InvalidMessageError(f"actor: 'kwargs' must be a map, got {type(kwargs).__name__}")
    for name in keywords:
        if type(name) is not str or not name.isidentifier():
            raise InvalidMessageError(f"actor: keyword argument names must be identifiers, "
                                      f"got {name!r}")
    return {"actor": actor, "method": method, "args": keywords, "posargs": posargs}


def _check_crash(params: dict[Any, Any]) -> dict[str, Any]:
    _unknown_fields("crash", params, ("actor", "kind"))
    actor = _check_actor_name("crash", params)
    kind = params.get("kind", "exception")
    if type(kind) is not str or kind not in CRASH_KINDS:
        raise InvalidMessageError(
            f"crash: 'kind' must be one of {', '.join(CRASH_KINDS)}, got {kind!r}"
        )
    return {"actor": actor, "kind": kind}


_VALIDATORS: dict[str, Callable[[dict[Any, Any]], Any]] = {
    "hello": _check_hello,
    "register": _check_register,
    "unregister": lambda p: _check_module_id("unregister", p),
    "publish": check_publish,
    "coordinate": check_coordinate,
    "set_mode": _check_set_mode,
    "actor": _check_actor,
    "crash": _check_crash,
}
for _name in ("status", "insights", "optimize", "reload", "config", "metrics", "stop"):
    _VALIDATORS[_name] = _check_empty(_name)
assert set(_VALIDATORS) == METHODS


def validate_request(method: str, params: dict[Any, Any]) -> Any:
    """Validate a request's params and return their normalized form.

    Returns:
        per method: ``hello`` → dict; ``register`` → :class:`ModuleInfo`; ``unregister``
        → module id; ``publish`` → ``(module_id, key, payload, priority)``;
        ``coordinate`` → ``(mode, context)``; control methods → the params dict for
        ``coordinator.call`` (modes canonical, defaults filled in).

    Raises:
        InvalidMessageError: unknown method, or params naming the wrong field.
    """
    validator = _VALIDATORS.get(method)
    if validator is None:
        raise InvalidMessageError(f"unknown method {method!r}; expected one of {_METHOD_LIST}")
    if type(params) is not dict:
        raise InvalidMessageError(f"{method}: params must be a map, got {type(params).__name__}")
    return validator(params)
