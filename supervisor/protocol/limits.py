"""The daemon's limits on what it delivers, in one place.

Every limit here is either fixed (a constant) or the default of a ``daemon.yaml`` key an
operator may tune (named beside it). What happens at each limit:

- :data:`MAX_NESTING_DEPTH`: a published payload nested deeper is refused at ``publish``
  with ``InvalidMessageError`` (msgpack itself stops at 1024 levels, and a delivery frame
  wraps the payload in four more).
- ``daemon.max_frame_bytes`` (:data:`DEFAULT_MAX_FRAME_BYTES`):
  no frame either way is larger. A payload whose update would not fit one delivery frame
  (the frame limit minus :data:`~modcoord.supervisor.protocol.wire.DELIVERY_ENVELOPE_BYTES` and its
  module id and key) is refused at ``publish``; a batch larger than a frame goes out as
  several consecutive frames with the same ``batch_id``; a callback result larger than a
  frame is answered by the module's client with an error instead.
- ``daemon.output.max_connection_bytes`` (:data:`DEFAULT_OUTPUT_CONNECTION_BYTES`): a
  connection's unsent output above this is *output pressure*: the server stops reading
  from publishing connections until it is down to half (publishers are slowed, nothing is
  refused or dropped). It is a high-water mark, not a hard cap: deliveries of updates
  already accepted still queue behind it.
- ``daemon.output.max_total_bytes`` (:data:`DEFAULT_OUTPUT_BUDGET_BYTES`): the same for the
  unsent output of all connections together (resumed below half).
- ``daemon.output.stall_timeout_s`` (:data:`DEFAULT_OUTPUT_STALL_S`): under output
  pressure, a connection that has output queued and has taken none of it for this long is
  not reading: it is disconnected (logged with the reason), and the updates it had not
  received are counted (``undelivered_updates`` in ``status``'s ``server`` section).
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_OUTPUT_BUDGET_BYTES",
    "DEFAULT_OUTPUT_CONNECTION_BYTES",
    "DEFAULT_OUTPUT_STALL_S",
    "MAX_KEY_LENGTH",
    "MAX_MODULE_ID_LENGTH",
    "MAX_NESTING_DEPTH",
]

DEFAULT_MAX_FRAME_BYTES = 1 << 20
"""Default ``daemon.max_frame_bytes``: the largest frame body, either way."""

MAX_KEY_LENGTH = 1024
"""Longest update key, in characters (a longer one is refused at ``publish``)."""

MAX_MODULE_ID_LENGTH = 200
"""Longest module id, in characters (a longer one is refused at ``register``)."""

MAX_NESTING_DEPTH = 100
"""Deepest nesting of lists and maps in a published payload (the payload itself is 1)."""

DEFAULT_OUTPUT_CONNECTION_BYTES = 16 << 20
"""Default ``daemon.output.max_connection_bytes``: per-connection output high-water mark."""

DEFAULT_OUTPUT_BUDGET_BYTES = 64 << 20
"""Default ``daemon.output.max_total_bytes``: the output budget across all connections."""

DEFAULT_OUTPUT_STALL_S = 10.0
"""Default ``daemon.output.stall_timeout_s``: how long a connection may take none of its
output under output pressure before it is disconnected as not reading."""
