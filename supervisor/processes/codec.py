"""What crosses between the daemon and an actor process: msgpack frames.

One write is a msgpack array of frames (the channel coalesces what is queued). A frame is
an array whose first item is its kind. The data path is plain msgpack arrays — an update is
``[module_id, key, payload, priority, seq, published_at, wire]``, the payload carried as
the daemon holds it: an encoded value (a :data:`~modcoord.actors.payload.WirePayload`)
crosses as its msgpack bytes with ``wire`` 1 and is wrapped again on the other side
without being decoded (opaque to the actor process); a plain value (a batch processor
plugin's output) crosses as itself with ``wire`` 0. Nothing per update is pickled.

A delivery crosses in the subscriber's wire form (:class:`DeliveryFrames`): the batch's
rows exactly as a batch event carries them (one ``bin``), which the daemon splices into
each subscriber's frame without decoding a payload or making an
:class:`~modcoord.actors.update.Update` (:class:`WireRows` makes them only if something
looks). A batch that goes to several subscribers crosses once: the first delivery
carries it, the others name it, so the daemon holds one copy.
Control frames (an ask, its reply, a handover, a failure) carry a pickled body: the channel
is a private pipe between the daemon and its own child, never a socket anyone else can
reach; and the unpickling is restricted to modcoord's own classes and plain data
(:func:`unpickled`), so a corrupted or forged body is refused instead of running code.
"""

from __future__ import annotations

import builtins
import io
import pickle
from collections.abc import Iterator, Sequence
from typing import Any, overload

import msgpack
import msgspec

from modcoord.actors.update import Batch, Update, updates_from_rows
from modcoord.supervisor.protocol.delivery import encode_rows
from modcoord.supervisor.protocol.framing import thread_packer

__all__ = [
    "DeliveryFrames",
    "PayloadNotEncodable",
    "WireRows",
    "decode_batch",
    "decode_updates",
    "encode_batch",
    "encode_updates",
    "pack",
    "pickled",
    "unpack",
    "unpickled",
]


class PayloadNotEncodable:
    """Stands in, on the daemon's side, for a payload its actor process could not encode
    (a batch processor's output that msgpack cannot carry): no encoder takes it, so a
    delivery leaves that update out, counts it and logs it, as for a batcher in the
    daemon. ``why`` is the encoder's error in the actor process."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why

    def __repr__(self) -> str:
        return f"PayloadNotEncodable({self.why!r})"


def encode_updates(updates: Sequence[Update], check: bool = False) -> list[list[Any]]:
    """Updates as msgpack-ready arrays (an encoded payload as a view of its bytes,
    flagged); the rows are for :func:`pack` at once, not to keep. With ``check``, a
    plain payload is encoded here, and one that cannot be crosses as the error
    (:class:`PayloadNotEncodable` on the other side) instead of failing the write."""
    rows = []
    pack = thread_packer().pack
    for u in updates:
        p = u.payload
        if type(p) is msgspec.Raw:
            # A view, not a copy: msgpack writes it as bin straight from the Raw's buffer.
            rows.append([u.module_id, u.key, memoryview(p), u.priority, u.seq,
                         u.published_at, 1])
        elif not check:
            rows.append([u.module_id, u.key, p, u.priority, u.seq, u.published_at, 0])
        else:
            try:
                rows.append([u.module_id, u.key, pack(p),
                             u.priority, u.seq, u.published_at, 1])
            except (TypeError, ValueError, OverflowError) as exc:
                rows.append([u.module_id, u.key, f"{type(exc).__name__}: {exc}", u.priority,
                             u.seq, u.published_at, 2])
    return rows


def decode_updates(rows: Sequence[Sequence[Any]]) -> tuple[Update, ...]:
    """The inverse of :func:`encode_updates` (an encoded payload wrapped again, not
    decoded)."""
    return tuple(Update(r[0], r[1], msgspec.Raw(r[2]) if r[6] == 1 else
                        PayloadNotEncodable(r[2]) if r[6] else r[2], r[3], r[4], r[5])
                 for r in rows)


def encode_batch(batch: Batch, check: bool = False) -> list[Any]:
    return [batch.batch_id, batch.reason, encode_updates(batch.updates, check)]


def decode_batch(row: Sequence[Any]) -> Batch:
    return Batch(row[0], decode_updates(row[2]), row[1])


_decode_rows = msgspec.msgpack.Decoder(list[tuple[str, str, msgspec.Raw, str, int]]).decode
"""A batch event's rows, checked (each payload a view of its bytes, not decoded)."""


class WireRows(Sequence[Update]):
    """A batch's updates as they crossed in wire form: the rows (checked when they
    arrived) and each update's ``published_at``; the :class:`Update` objects are made on
    first use, once (delivering to a module connection never needs them: it splices
    :attr:`Batch.wire <modcoord.actors.update.Batch.wire>`). Compares, hashes and
    pickles as the tuple of its updates."""

    __slots__ = ("_published", "_rows", "_updates")

    def __init__(self, rows: list[tuple[str, str, msgspec.Raw, str, int]],
                 published: Sequence[float]) -> None:
        self._rows = rows
        self._published = published
        self._updates: tuple[Update, ...] | None = None

    def _made(self) -> tuple[Update, ...]:
        updates = self._updates
        if updates is None:
            updates = self._updates = updates_from_rows(self._rows, self._published)
        return updates

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> Update: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[Update, ...]: ...

    def __getitem__(self, index: int | slice) -> Update | tuple[Update, ...]:
        return self._made()[index]

    def __iter__(self) -> Iterator[Update]:
        return iter(self._made())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, WireRows):
            other = other._made()
        return isinstance(other, tuple) and self._made() == other

    def __hash__(self) -> int:
        return hash(self._made())

    def __reduce__(self) -> tuple[Any, ...]:
        return (tuple, (self._made(),))

    def __repr__(self) -> str:
        return f"WireRows({len(self._rows)} updates)"


class DeliveryFrames:
    """Delivery frames in both directions: one batch crosses once for all its subscribers,
    in the form its subscribers receive it.

    The child's batcher hands the same :class:`Batch` to each subscriber in turn
    (:meth:`frame`): the first delivery of a batch is ``["dw", subscriber, batch_id,
    reason, rows, published_at]``, ``rows`` the bytes of the batch event's ``updates``
    array (:func:`~modcoord.supervisor.protocol.delivery.encode_rows`), ``published_at``
    each update's time; each further one is ``["dr", subscriber, batch_id]`` (the batch
    just sent). A batch with a payload that cannot be encoded (a batch processor's
    output) goes as ``["d", subscriber, batch]`` instead, that payload as its error
    (:class:`PayloadNotEncodable`): the daemon's encoder leaves that update out and counts
    it, and delivers the others. The channel keeps frames in order, so the
    daemon's reader (:meth:`batch`) resolves ``"dr"`` to the batch it read last, and
    refuses one that names another. One instance per direction per process; not
    thread-safe (one batcher thread sends, one reader thread reads).
    """

    def __init__(self) -> None:
        self._last: Batch | None = None

    def frame(self, subscriber_id: str, batch: Batch) -> list[Any]:
        """The frame that delivers ``batch`` to ``subscriber_id`` (sending side)."""
        if batch is self._last:
            return ["dr", subscriber_id, batch.batch_id]
        self._last = batch
        updates = batch.updates
        try:
            rows = encode_rows(updates)
        except (TypeError, ValueError, OverflowError):
            return ["d", subscriber_id, encode_batch(batch, check=True)]
        return ["dw", subscriber_id, batch.batch_id, batch.reason, rows,
                [u.published_at for u in updates]]

    def batch(self, frame: Sequence[Any]) -> Batch:
        """The batch a ``"dw"``, ``"d"`` or ``"dr"`` frame delivers (receiving side).

        Raises:
            ValueError: a malformed stream: ``"dw"`` rows that are not a batch event's
                rows, or not one time per row; a ``"dr"`` frame whose batch did not come
                just before it.
        """
        kind = frame[0]
        if kind == "dw":
            wire = frame[4]
            try:
                rows = _decode_rows(wire)
            except (msgspec.DecodeError, TypeError) as exc:
                raise ValueError(f"the rows of batch {frame[2]} are malformed: {exc}") from None
            published = frame[5]
            if len(published) != len(rows):
                raise ValueError(f"batch {frame[2]} has {len(rows)} rows and "
                                 f"{len(published)} publish times")
            self._last = Batch(frame[2], WireRows(rows, published), frame[3], wire=wire)
        elif kind == "d":
            self._last = decode_batch(frame[2])
        elif self._last is None or self._last.batch_id != frame[2]:
            # The batch it names never arrived (a write lost): refusing it makes the
            # daemon replace the process, whose updates the ledger replays.
            raise ValueError(f"a repeated delivery of batch {frame[2]}, which did not "
                             "come before it")
        return self._last


def pack(frames: list[Any]) -> bytes:
    """One write's frames as bytes.

    Raises:
        TypeError: a frame holds a value msgpack cannot carry.
    """
    return msgpack.packb(frames, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(data: bytes) -> list[Any]:
    """The frames of one write (strict: a malformed write raises ``ValueError``)."""
    frames = msgpack.unpackb(data, raw=False, strict_map_key=False)
    if not isinstance(frames, list):
        raise ValueError("an actor-process write is an array of frames")
    return frames


_BUILTIN_TYPES = frozenset({
    "bool", "bytearray", "bytes", "complex", "dict", "float", "frozenset", "int", "list",
    "range", "set", "slice", "str", "tuple",
})
"""The builtins a control body may name besides exception types. Never ``eval``,
``exec``, ``getattr``, ``__import__``, ``open``, ``type`` or ``object``: functions are
never allowed, and these types build nothing but data."""

_OTHER_TYPES = frozenset({
    ("collections", "OrderedDict"), ("collections", "deque"), ("msgspec", "Raw"),
    ("datetime", "datetime"), ("datetime", "timedelta"), ("datetime", "timezone"),
    ("pathlib", "PosixPath"),
})
"""Types outside modcoord that actor messages and replies carry."""


class _TrustedUnpickler(pickle.Unpickler):
    """Unpickles only what the daemon and its actors build: classes of modcoord's own
    modules (never a function), data builtins, exception types and :data:`_OTHER_TYPES`.

    A body naming anything else — ``os.system``, ``builtins.eval``, a plugin's function —
    is refused with :class:`pickle.UnpicklingError` before anything is called, so even a
    corrupted or forged control frame cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        found = None
        if module == "builtins":
            value = getattr(builtins, name, None)
            if name in _BUILTIN_TYPES or (isinstance(value, type)
                                          and issubclass(value, BaseException)):
                found = value
        elif module.startswith("modcoord.") or (module, name) in _OTHER_TYPES:
            value = super().find_class(module, name)
            if isinstance(value, type):
                found = value
        if found is None:
            raise pickle.UnpicklingError(
                f"a control frame names {module}.{name}, which actor processes never send "
                "(only modcoord's classes and plain data cross): frame refused")
        return found


def pickled(value: Any) -> bytes:
    """A control body (an ask, a reply, a handover, a failure, settings)."""
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def unpickled(data: bytes) -> Any:
    """The inverse of :func:`pickled`, restricted to the types actor messages are made of.

    Raises:
        pickle.UnpicklingError: the body names a function or a type outside that set
            (see :class:`_TrustedUnpickler`); nothing it names has been called.
    """
    return _TrustedUnpickler(io.BytesIO(data)).load()


def encode_error(exc: BaseException) -> list[Any]:
    """An actor's refusal or failure as ``[type name, actor or None, message]``."""
    from modcoord.actors.errors import ActorError

    if isinstance(exc, ActorError):
        text = str(exc)
        prefix = f"{exc.actor}: "
        return [type(exc).__name__, exc.actor,
                text[len(prefix):] if text.startswith(prefix) else text]
    return [type(exc).__name__, None, str(exc)]


def decode_error(row: Sequence[Any], actor: str) -> BaseException:
    """The inverse of :func:`encode_error`: the same :mod:`modcoord.actors.errors` type
    where there is one, else :class:`ActorCrashedError` naming the original type."""
    from modcoord.actors import errors

    name, who, message = row[0], row[1], row[2]
    cls = getattr(errors, str(name), None)
    if isinstance(cls, type) and issubclass(cls, errors.ModcoordError):
        if issubclass(cls, errors.ActorError):
            return cls(who or actor, message)
        try:
            return cls(message)
        except TypeError:
            pass
    return errors.ActorCrashedError(actor, f"{name}: {message}")
