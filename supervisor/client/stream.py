"""One socket to the daemon and its inbound decoding state (:class:`Stream`), with the
read limits: a frame body above :data:`INBOUND_MAX_FRAME` is broken framing, and a
caller's blocking read returns at least every :data:`RECV_TIMEOUT` seconds (where the
socket cannot be given that timeout, ``timed_reads`` is false and callers poll first).
The connection (:mod:`modcoord.supervisor.client.connection`) holds the current stream.
"""

from __future__ import annotations

import select
import socket
import struct

import msgpack

__all__ = ["INBOUND_MAX_FRAME", "POLLIN", "RECV_SIZE", "RECV_TIMEOUT", "Stream"]

RECV_SIZE = 64 * 1024
INBOUND_MAX_FRAME = 128 << 20
RECV_TIMEOUT = 0.02  # a caller's blocking read returns at least this often
POLLIN = select.POLLIN


class Stream:
    """One socket to the daemon and its inbound decoding state.

    Everything but ``lost`` is used only by the holder of the reading token (so no frame
    is ever split between two readers). ``lost`` is set once, under the send lock.
    """

    __slots__ = ("body_end", "fed", "generation", "lead_poll", "lost", "rbuf", "rview",
                 "sock", "timed_reads", "unpacker")

    def __init__(self, sock: socket.socket, generation: int) -> None:
        self.sock = sock
        self.generation = generation
        self.lost: str | None = None
        # Frames are a 4-byte length and a msgpack body: the unpacker is fed every read,
        # hands out the header with read_bytes and the body with unpack.
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, use_list=True,
                                         max_buffer_size=2 * INBOUND_MAX_FRAME)
        self.fed = 0         # bytes fed so far (compared with unpacker.tell())
        self.body_end = -1   # stream offset where the current body ends (-1: at a header)
        self.rbuf = bytearray(RECV_SIZE)
        self.rview = memoryview(self.rbuf)
        self.lead_poll = select.poll()  # for token holders only (poll objects are per thread)
        self.lead_poll.register(sock.fileno(), POLLIN)
        # A blocking read by a caller gives up (EAGAIN) after RECV_TIMEOUT; the socket
        # stays in blocking mode otherwise (the reader thread reads with MSG_DONTWAIT).
        # Where that cannot be set, callers poll before every read instead.
        self.timed_reads = True
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                            struct.pack("@ll", 0, int(RECV_TIMEOUT * 1_000_000)))
        except (OSError, struct.error):
            self.timed_reads = False
