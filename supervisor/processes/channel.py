"""One end of the pipe between the daemon and an actor process: coalesced frame writes,
a reader loop.

:meth:`Channel.send` queues a frame and returns at once (any thread); a writer thread
sends everything queued as one write (one msgpack array), so a burst of frames costs one
system call. :meth:`Channel.read_forever` hands each frame read to a handler until the
other end closes. Failure: a write to a closed pipe ends the writer (the reader then sees
the end and reports it); a frame that cannot be encoded is logged and dropped with a count
(``unencodable``) — the frames built here hold only msgpack types, so it means a bug.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from loguru import logger

from modcoord.supervisor.processes.codec import pack, unpack

__all__ = ["Channel"]


class Channel:
    """Coalesced writes and a reader loop over a ``multiprocessing`` connection."""

    def __init__(self, conn: Connection, name: str) -> None:
        self.conn = conn
        self.name = name
        self._out: deque[Any] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self.unencodable = 0
        self.writes = 0
        self.frames = 0
        self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                        name=f"modcoord-{name}-writer")
        self._writer.start()

    def send(self, frame: Any) -> None:
        """Queue ``frame`` for the next write (dropped once the channel is closed)."""
        with self._cond:
            if self._closed:
                return
            self._out.append(frame)
            if len(self._out) == 1:
                self._cond.notify()

    def _write_loop(self) -> None:
        out = self._out
        cond = self._cond
        while True:
            with cond:
                while not out and not self._closed:
                    cond.wait()
                if not out and self._closed:
                    return
                frames = list(out)
                out.clear()
            try:
                data = pack(frames)
            except (TypeError, ValueError, OverflowError):
                self.unencodable += len(frames)
                logger.bind(channel=self.name).opt(exception=True).error(
                    "actor-process frames not encodable: dropped", frames=len(frames))
                continue
            try:
                self.conn.send_bytes(data)
            except (OSError, EOFError, ValueError):
                return  # the other end is gone: the reader reports it
            self.writes += 1
            self.frames += len(frames)

    def read_forever(self, handle: Callable[[list[Any]], None]) -> None:
        """Call ``handle(frame)`` for each frame until the other end closes (returns then)."""
        conn = self.conn
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError, ValueError):
                return
            for frame in unpack(data):
                handle(frame)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the writer (the connection stays open)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is not self._writer:
            self._writer.join(timeout)
