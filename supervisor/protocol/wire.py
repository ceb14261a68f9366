"""The wire protocol in one import (compatibility: its parts live in their own modules).

- :mod:`~modcoord.supervisor.protocol.framing` — frames, message kinds, the decoder,
  envelopes.
- :mod:`~modcoord.supervisor.protocol.calls` — THE call table: every method's params,
  result and errors, the actor methods, events, callbacks, the protocol version.
- :mod:`~modcoord.supervisor.protocol.delivery` — batch events and the publish-time
  deliverability check.
- :mod:`~modcoord.supervisor.protocol.errors` — errors on the wire.
- :mod:`~modcoord.supervisor.protocol.limits` — the limits.

``docs/PROTOCOL.md`` describes the protocol for someone writing a client.
"""

from __future__ import annotations

from modcoord.supervisor.protocol.calls import (
    ACTOR_NAMES,
    CONTROL_METHODS,
    CRASH_KINDS,
    METHODS,
    PROTOCOL_VERSION,
    decode_params,
)
from modcoord.supervisor.protocol.delivery import (
    DELIVERY_ENVELOPE_BYTES,
    BatchFrames,
    check_payload,
    encode_batch,
    encode_payload,
    payload_packer,
)
from modcoord.supervisor.protocol.errors import FramingError, error_from_wire, error_to_wire
from modcoord.supervisor.protocol.framing import (
    CALLBACK,
    CALLBACK_RESPONSE,
    EVENT,
    HEADER,
    REQUEST,
    RESPONSE,
    BadFrame,
    FrameDecoder,
    decode_body,
    encode_acks,
    encode_frame,
    encode_frames,
    new_packer,
    request_id_of,
    split_inbound,
)
from modcoord.supervisor.protocol.limits import (
    DEFAULT_MAX_FRAME_BYTES,
    MAX_KEY_LENGTH,
    MAX_NESTING_DEPTH,
)

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
    "check_payload",
    "decode_body",
    "decode_params",
    "encode_acks",
    "encode_batch",
    "encode_frame",
    "encode_frames",
    "encode_payload",
    "error_from_wire",
    "error_to_wire",
    "new_packer",
    "payload_packer",
    "request_id_of",
    "split_inbound",
]
