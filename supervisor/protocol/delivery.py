"""Deliverability: what a subscriber receives, and checking at publish that it can.

A batch event is ``[2, "batch", {module_id: subscriber, batch_id, reason, updates:
[[module_id, key, payload, priority, seq], ...]}]``. No event frame is larger than
``max_frame_bytes``: a batch that would be goes out as several consecutive frames with the
same ``batch_id`` (:func:`encode_batch`), which is why a publish whose update could not fit
one frame is refused (:func:`check_payload`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from modcoord.actors.errors import InvalidMessageError
from modcoord.actors.payload import WirePayload, to_wire
from modcoord.actors.update import Update
from modcoord.supervisor.protocol.framing import EVENT, HEADER, thread_packer
from modcoord.supervisor.protocol.limits import (
    DEFAULT_MAX_FRAME_BYTES,
    MAX_KEY_LENGTH,
    MAX_MODULE_ID_LENGTH,
    MAX_NESTING_DEPTH,
)

__all__ = ["DELIVERY_ENVELOPE_BYTES", "BatchFrames", "check_payload", "encode_batch",
           "encode_payload", "encode_rows", "payload_packer", "spliced_frame"]

_pack_header = HEADER.pack
# Delivery frames are encoded by msgspec, which writes a WirePayload (msgspec.Raw) verbatim:
# the rows' values are spliced, not re-encoded. For everything else in a frame (str, int,
# lists, maps) its output is byte for byte msgpack's (use_bin_type); a payload that is not
# encoded yet (a batch processor's output) is packed by the wire packer first, so that
# its encoding follows the wire's rules (ext types, bin).
_frame_encoder = msgspec.msgpack.Encoder()

# -- deliverability ----------------------------------------------------------------------

_UINT64_MAX = (1 << 64) - 1
_INT64_MIN = -(1 << 63)
# Per update row beside its payload, module id and key: the 5-element array header, the
# priority (at most "critical", 9 bytes) and the seq (uint 64, 9 bytes).
_ROW_FIXED_BYTES = 1 + 9 + 9


def _delivery_head(subscriber_id: str, batch_id: int, reason: str) -> bytes:
    """The bytes of a batch event body up to its ``updates`` array header."""
    pack = thread_packer().pack
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
    pack: Callable[[Any], bytes] = thread_packer().pack
    return pack


def check_payload(module_id: str, key: str, payload: Any,
                  max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                  pack: Callable[[Any], bytes] | None = None) -> None:
    """Check, at publish, that an update can be delivered (see :func:`encode_payload`,
    which this is, without keeping the encoding).

    Raises:
        InvalidMessageError: naming the limit that is exceeded and what to do.
    """
    encode_payload(module_id, key, payload, max_frame_bytes, pack)


def encode_payload(module_id: str, key: str, payload: Any,
                   max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                   pack: Callable[[Any], bytes] | None = None) -> WirePayload:
    """Encode an update's payload at publish, checking that the update can be delivered:
    the payload nests at most :data:`MAX_NESTING_DEPTH` levels, is msgpack-encodable, and
    the update fits one delivery frame of ``max_frame_bytes`` (beside
    :data:`DELIVERY_ENVELOPE_BYTES`). Returns the encoding, which the update carries from
    then on (:mod:`modcoord.actors.payload`): delivery splices it without re-encoding.

    The one pack is the measure: the encoding's length is the payload's exact size; a
    container longer than :data:`MAX_NESTING_DEPTH` bytes is walked for depth (each level
    takes at least a byte). A payload that is already a :data:`WirePayload` is taken as
    it is (its size checked). ``pack`` is the calling thread's packer
    (:func:`payload_packer`), to save looking it up per call.

    Raises:
        InvalidMessageError: naming the limit that is exceeded and what to do.
    """
    t = type(payload)
    if t is WirePayload:
        encoded: Any = payload
    else:
        if t is int and not _INT64_MIN <= payload <= _UINT64_MAX:
            raise _unencodable(OverflowError(f"integer {payload} is outside 64 bits"))
        try:
            encoded = (pack or thread_packer().pack)(payload)
        except (TypeError, ValueError, OverflowError) as exc:  # incl. lone surrogates
            raise _unencodable(exc) from None
        if ((t is dict or t is list or t is tuple) and len(encoded) > MAX_NESTING_DEPTH
                and not _nesting_ok(payload, 1)):
            raise _too_deep()
    size = len(encoded)
    if size > max_frame_bytes - _WORST_OVERHEAD:
        room = (max_frame_bytes - DELIVERY_ENVELOPE_BYTES - _ROW_FIXED_BYTES - 10
                - 4 * (len(module_id) + len(key)))
        if size > room:
            raise InvalidMessageError(
                f"publish: payload of {size} bytes (encoded) does not fit one delivery "
                f"frame: at most {room} bytes with this module id and key "
                f"(daemon.max_frame_bytes {max_frame_bytes} minus the delivery envelope); "
                "split it into several updates or raise daemon.max_frame_bytes")
    return encoded if t is WirePayload else to_wire(encoded)


def _rows(updates: Sequence[Update], pack: Callable[[Any], bytes]) -> list[tuple[Any, ...]]:
    """The rows of a batch event, each payload as its encoding (packed by the wire packer
    if it is not encoded yet).

    Raises:
        TypeError, ValueError, OverflowError: a payload cannot be encoded.
    """
    return [(u.module_id, u.key, p if type(p) is WirePayload else to_wire(pack(p)),
             u.priority, u.seq) for u in updates for p in (u.payload,)]


def encode_rows(updates: Sequence[Update]) -> bytes:
    """The ``updates`` array of a batch event for ``updates``, as bytes: what
    :func:`spliced_frame` turns into a subscriber's frame without looking inside (an
    actor process sends a batch this way, so that the daemon does not decode it).

    Raises:
        TypeError, ValueError, OverflowError: a payload cannot be encoded.
    """
    return _frame_encoder.encode(_rows(updates, thread_packer().pack))


def spliced_frame(subscriber_id: str, batch_id: int, reason: str, rows: bytes,
                  max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes | None:
    """The batch event frame that carries ``rows`` (:func:`encode_rows`) to
    ``subscriber_id``, byte for byte what :func:`encode_batch` makes of the same updates;
    ``None`` when its body would be larger than ``max_frame_bytes`` (then the batch must
    be split: decode it and use :func:`encode_batch`)."""
    head = _delivery_head(subscriber_id, batch_id, reason)
    size = len(head) + len(rows)
    if size > max_frame_bytes:
        return None
    return b"".join((_pack_header(size), head, rows))


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
    pack = thread_packer().pack
    encode = _frame_encoder.encode
    if whole:
        try:
            rows = _rows(updates, pack)
            body = encode((EVENT, "batch", {"module_id": subscriber_id, "batch_id": batch_id,
                                            "reason": reason, "updates": rows}))
        except Exception:
            oversized = False
        else:
            if len(body) <= max_frame_bytes:
                return BatchFrames([(_pack_header(len(body)) + body, len(rows))], [],
                                   len(rows))
            oversized = True
            del body
        rows = []
    else:
        oversized = True
    head = _delivery_head(subscriber_id, batch_id, reason)
    limit = max_frame_bytes - len(head) - 5  # 5: the largest array header
    frames: list[tuple[bytes, int]] = []
    failed: list[tuple[Update, str]] = []
    group: list[bytes] = []
    size = 0
    total = 0
    array_header = thread_packer().pack_array_header

    def close_group() -> int:
        body = b"".join((head, array_header(len(group)), *group))
        frames.append((_pack_header(len(body)) + body, len(group)))
        return len(body) + HEADER.size

    for i, u in enumerate(updates):
        try:
            p = u.payload
            packed: bytes = encode((u.module_id, u.key,
                                    p if type(p) is WirePayload else to_wire(pack(p)),
                                    u.priority, u.seq))
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
