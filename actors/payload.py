"""An update's value inside the daemon: its msgpack encoding (:data:`WirePayload`).

The rule: the daemon's intake encodes each accepted payload once (the same pack that
measures it against the frame limit), and from then on the update carries those bytes —
pending in the debouncer, queued in the batcher, spliced as they are into every delivery
frame — until a module process decodes them. Nothing on that path looks inside a value, so
nothing decodes or re-encodes it; the few places that must see the value decode on demand
with :func:`payload_value` / :func:`with_values`:

- a batch processor plugin (``plugins.batch_processors``) gets the updates with their
  values (decoded once per batch, only when a plugin other than the built-in ``priority``
  runs); what it returns is encoded at delivery like any value;
- a module hosted in the daemon's own process
  (:class:`~modcoord.supervisor.protocol.module.LocalEndpoint`) gets decoded values, as a
  module process does.

One encoded value is one ``bytes`` object (wrapped, without copying, in a
:class:`msgspec.Raw`): a pending payload is one allocation rather than a tree of small
objects, which is what lets its memory go back to the operating system once it is freed.

Decoding gives what the wire's decoder gives (``msgpack.unpackb(raw=False,
strict_map_key=False)``): maps with any keys, arrays as lists, ext types as
:class:`msgpack.ExtType`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import msgpack
import msgspec

from modcoord.actors.update import Update

__all__ = ["WirePayload", "encode_value", "is_wire", "payload_value", "to_wire",
           "with_values"]

def _ext(code: int, data: memoryview) -> msgpack.ExtType:
    return msgpack.ExtType(code, bytes(data))


# msgspec decodes what msgpack's unpackb does here (maps with any keys, arrays as lists,
# ext types as msgpack.ExtType through the hook), at twice its speed; thread-safe.
_decode = msgspec.msgpack.Decoder(ext_hook=_ext).decode

WirePayload = msgspec.Raw
"""The type of an encoded value: a :class:`msgspec.Raw` over the value's msgpack bytes.
The msgspec encoder writes it into a frame verbatim; ``bytes(raw)`` gives the bytes."""


def to_wire(encoded: bytes) -> WirePayload:
    """Wrap ``encoded`` (one value's msgpack encoding) as a :data:`WirePayload` (no copy)."""
    return msgspec.Raw(encoded)


def encode_value(value: Any) -> Any:
    """``value`` as one :data:`WirePayload` blob if msgpack can encode it, else ``value``
    itself (an in-process module's result may be any object): what the cache keeps.

    Never raises.
    """
    if type(value) is msgspec.Raw:
        return value
    try:
        encoded: bytes = msgpack.packb(value, use_bin_type=True)
    except Exception:  # not plain data: kept as the object it is
        return value
    return msgspec.Raw(encoded)


def is_wire(payload: Any) -> bool:
    """Whether ``payload`` is an encoded value (a :data:`WirePayload`)."""
    return type(payload) is msgspec.Raw


def payload_value(payload: Any) -> Any:
    """The value of ``payload``: decoded when it is a :data:`WirePayload`, else as it is.

    Raises:
        ValueError: the bytes are not one msgpack value (cannot happen for a payload the
            intake encoded).
    """
    if type(payload) is msgspec.Raw:
        try:
            return _decode(payload)
        except Exception:  # what msgspec will not take (nesting past its recursion limit)
            return msgpack.unpackb(payload, raw=False, strict_map_key=False, use_list=True)
    return payload


def with_values(updates: Iterable[Update]) -> tuple[Update, ...]:
    """``updates`` with every encoded payload decoded (the others as they are).

    Raises:
        ValueError: as :func:`payload_value`.
    """
    raw = msgspec.Raw
    return tuple(dataclasses.replace(u, payload=payload_value(u.payload))
                 if type(u.payload) is raw else u for u in updates)
