"""The agent: a daemon's publish path into JetStream.

Rules:

* ``publish_many`` (the server's I/O thread) checks each update exactly as the local
  intake does, admits as many as fit in the bounded buffer (``engine.max_buffered``
  updates, counting every update accepted and not yet acknowledged by JetStream) and
  answers each with an :class:`~modcoord.supervisor.daemon.engine.Accepted` that settles
  with the stream sequence once JetStream acknowledged the message carrying it. It never
  blocks: the updates go to the loop thread.
* On the loop, updates fold per key for ``engine.flush_ms`` (latest wins; every folded
  update's publisher is answered with the survivor's acknowledgement), then each dirty
  partition becomes one stream message (``modcoord.upd.<p>.<instance>``) with a
  ``Nats-Msg-Id`` of ``<instance>:<epoch>:<n>:<p>``. At most one message per partition is
  in flight, so a key's updates reach the stream in order.
* A publish that fails (timeout, no stream leader, the connection down) is retried with the
  same ``Nats-Msg-Id`` (the stream drops a duplicate within its ``duplicate_window``), with
  a backoff from ``RETRY_MIN_S`` to ``RETRY_MAX_S``, for as long as the daemon runs.

On failure: nothing is dropped silently. A full buffer refuses the update with
:class:`~modcoord.actors.errors.QueueFullError` naming ``engine.max_buffered`` (counted in
``refused``, logged once per episode); an update too large for one NATS message is refused
with :class:`~modcoord.actors.errors.InvalidMessageError` naming the server's
``max_payload``; updates still unacknowledged when the daemon stops are answered with
:class:`~modcoord.actors.errors.ActorStoppedError` (counted in ``abandoned``, logged).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from loguru import logger
from nats.js.client import JetStreamContext

from modcoord.actors.errors import (
    ActorStoppedError,
    InvalidMessageError,
    ModcoordError,
    QueueFullError,
)
from modcoord.supervisor.daemon.engine import Accepted, PublishItem
from modcoord.supervisor.daemon.intake import Intake
from modcoord.supervisor.daemon.nats.names import StoredUpdate, UpdateMessage, update_subject
from modcoord.supervisor.daemon.nats.partitions import partition_of
from modcoord.supervisor.daemon.nats.tasks import cancel_and_wait

__all__ = ["Agent", "AgentStatistics"]

RETRY_MIN_S = 0.05
RETRY_MAX_S = 0.5
PUBLISH_TIMEOUT_S = 2.0
MAX_MESSAGE_BYTES = 768 * 1024
"""A stream message is at most this big (nats-server's default ``max_payload`` is 1 MiB):
a flush of a partition that does not fit goes out as several messages, in order."""


@dataclass(frozen=True, slots=True)
class AgentStatistics:
    """The agent's counters (``status.engine.agent``).

    Attributes:
        buffered: updates accepted and not yet acknowledged by JetStream.
        max_buffered: ``engine.max_buffered``.
        accepted: updates admitted to the buffer.
        folded: updates replaced by a newer one of their key before publishing.
        published: stream messages acknowledged.
        acked: updates acknowledged (folded ones included).
        refused: updates refused because the buffer was full.
        retries: publishes retried.
        abandoned: updates answered with an error at stop (never acknowledged).
        in_flight: partitions with a message in flight.
    """

    buffered: int
    max_buffered: int
    accepted: int
    folded: int
    published: int
    acked: int
    refused: int
    retries: int
    abandoned: int
    in_flight: int

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


_Entry = tuple[StoredUpdate, list[Accepted]]


class Agent:
    """The publish path of one daemon (see the module docstring).

    Args:
        instance_id: this daemon in the cluster.
        partitions: ``engine.partitions``.
        flush_s: the fold window.
        max_buffered: the buffer bound (updates).
        intake: the local engine's intake (its checks are applied here unchanged).
        loop: the engine's loop; ``call_soon`` hands work to it from any thread.
        jetstream: returns the JetStream context of the data connection (on the loop).
    """

    def __init__(self, *, instance_id: str, partitions: int, flush_s: float,
                 max_buffered: int, intake: Intake, loop: asyncio.AbstractEventLoop,
                 jetstream: Callable[[], JetStreamContext]) -> None:
        self.instance_id = instance_id
        self.partitions = partitions
        self.flush_s = flush_s
        self.max_buffered = max_buffered
        self._intake = intake
        self._loop = loop
        self._js = jetstream
        self._epoch = f"{int(time.time() * 1000):x}"
        self._numbers = itertools.count(1)
        self._agent_seq = itertools.count(1)
        self._lock = threading.Lock()
        self._buffered = 0
        self._full = False
        self._pending: dict[int, dict[tuple[str, str], _Entry]] = {}
        self._in_flight: set[int] = set()
        self._flush_armed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._encode = msgspec.msgpack.Encoder().encode
        self._counts = dict.fromkeys(("accepted", "folded", "published", "acked", "refused",
                                      "retries", "abandoned"), 0)
        self._log = logger.bind(actor="agent", instance=instance_id)

    # -- the I/O thread --

    @property
    def buffered(self) -> int:
        return self._buffered

    def publish_many(self, items: Sequence[PublishItem]
                     ) -> Sequence[int | ModcoordError | Accepted]:
        """Admit ``items``; per item an :class:`Accepted` or the error refusing it. Never
        blocks and never raises for one bad item."""
        out, valid, listed, encoded = self._intake.check(items)
        if not valid:
            return out
        if self._stopping:
            for i in valid:
                out[i] = ActorStoppedError("agent", "daemon stopping")
            return out
        with self._lock:
            take = min(len(valid), self.max_buffered - self._buffered)
            take = max(take, 0)
            self._buffered += take
            newly_full = take < len(valid) and not self._full
            if take < len(valid):
                self._full = True
        now = time.time()
        handed: list[tuple[int, StoredUpdate, Accepted]] = []
        for n, i in enumerate(valid):
            if n >= take:
                out[i] = QueueFullError(
                    f"agent buffer full ({self.max_buffered} updates not yet acknowledged "
                    "by JetStream, engine.max_buffered): NATS is slow or unreachable; "
                    "publish later, or raise engine.max_buffered")
                continue
            module_id, key, _, priority = listed[i]
            accepted = Accepted()
            # the payload as the intake encoded it: msgpack splices it as it is
            stored = StoredUpdate(module_id, key, encoded[n], priority, next(self._agent_seq),
                                  now)
            handed.append((partition_of(module_id, key, self.partitions), stored, accepted))
            out[i] = accepted
        refused = len(valid) - take
        if refused:
            self._counts["refused"] += refused
            if newly_full:
                self._log.warning("agent buffer full: publishes refused",
                                  max_buffered=self.max_buffered, refused=refused)
        if handed:
            self._counts["accepted"] += len(handed)
            self._loop.call_soon_threadsafe(self._take, handed)
        return out

    # -- the loop --

    def _take(self, handed: list[tuple[int, StoredUpdate, Accepted]]) -> None:
        pending = self._pending
        folded = 0
        for p, stored, accepted in handed:
            table = pending.get(p)
            if table is None:
                table = pending[p] = {}
            k = (stored.module_id, stored.key)
            entry = table.get(k)
            if entry is None:
                table[k] = (stored, [accepted])
            else:
                entry[1].append(accepted)
                table[k] = (stored, entry[1])
                folded += 1
        self._counts["folded"] += folded
        if not self._flush_armed:
            self._flush_armed = True
            if self.flush_s > 0:
                self._loop.call_later(self.flush_s, self._flush)
            else:
                self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_armed = False
        for p in list(self._pending):
            if p not in self._in_flight:
                self._start(p)

    def _start(self, p: int) -> None:
        self._in_flight.add(p)
        task = self._loop.create_task(self._send(p))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _message(self, p: int) -> tuple[bytes, list[_Entry]] | None:
        """Take the next message's updates of partition ``p`` from the fold table."""
        table = self._pending.get(p)
        if not table:
            self._pending.pop(p, None)
            return None
        keys = list(table)
        count = len(keys)
        while True:
            chosen = keys[:count]
            data = self._encode(UpdateMessage(self.instance_id,
                                              tuple(table[k][0] for k in chosen)))
            if len(data) <= MAX_MESSAGE_BYTES or count == 1:
                break
            count = max(1, count // 2)
        entries = [table.pop(k) for k in chosen]
        if not table:
            self._pending.pop(p, None)
        if len(data) > MAX_MESSAGE_BYTES:
            stored, waiters = entries[0]
            self._settle(waiters, InvalidMessageError(
                f"update of {stored.module_id!r} key {stored.key!r} is {len(data)} bytes "
                f"as a NATS message, above the engine's limit of {MAX_MESSAGE_BYTES} "
                "bytes (MAX_MESSAGE_BYTES, under nats-server's max_payload): publish "
                "smaller payloads"))
            return self._message(p)
        return data, entries

    def _settle(self, waiters: list[Accepted], result: int | ModcoordError) -> None:
        with self._lock:
            self._buffered -= len(waiters)
            if self._full and self._buffered < self.max_buffered:
                self._full = False
        for accepted in waiters:
            try:
                accepted.settle(result)
            except Exception:
                self._log.opt(exception=True).error("answering a publisher failed")

    async def _send(self, p: int) -> None:
        try:
            while not self._stopping:
                taken = self._message(p)
                if taken is None:
                    return
                data, entries = taken
                msg_id = f"{self.instance_id}:{self._epoch}:{next(self._numbers)}:{p}"
                try:
                    seq = await self._publish(update_subject(p, self.instance_id), data,
                                              msg_id)
                except asyncio.CancelledError:
                    seq = None
                if seq is None:  # stopping: give the updates back for the final answer
                    table = self._pending.setdefault(p, {})
                    for stored, waiters in entries:
                        k = (stored.module_id, stored.key)
                        if k in table:
                            table[k][1].extend(waiters)
                        else:
                            table[k] = (stored, waiters)
                    return
                self._counts["published"] += 1
                acked = 0
                for _, waiters in entries:
                    acked += len(waiters)
                    self._settle(waiters, seq)
                self._counts["acked"] += acked
        finally:
            self._in_flight.discard(p)

    async def _publish(self, subject: str, data: bytes, msg_id: str) -> int | None:
        """Publish until acknowledged; the stream sequence (None: stopped meanwhile)."""
        delay = RETRY_MIN_S
        headers = {"Nats-Msg-Id": msg_id}
        while True:
            try:
                ack = await self._js().publish(subject, data, timeout=PUBLISH_TIMEOUT_S,
                                               headers=headers)
                return int(ack.seq)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stopping:
                    return None
                self._counts["retries"] += 1
                if self._counts["retries"] % 100 == 1:
                    self._log.warning("publish to JetStream failed: retrying",
                                      error=f"{type(exc).__name__}: {exc}",
                                      retries=self._counts["retries"])
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def drain(self, timeout: float) -> None:
        """Publish what is buffered (up to ``timeout``), then answer the rest with
        ActorStoppedError (counted and logged) and refuse new publishes."""
        self._flush()
        deadline = time.monotonic() + timeout
        while (self._pending or self._in_flight) and time.monotonic() < deadline:
            if not self._in_flight:
                self._flush()
            await asyncio.sleep(0.01)
        self._stopping = True
        await cancel_and_wait(list(self._tasks))
        abandoned = 0
        for table in self._pending.values():
            for _, waiters in table.values():
                abandoned += len(waiters)
                self._settle(waiters, ActorStoppedError(
                    "agent", "daemon stopped before JetStream acknowledged the update: "
                    "publish it again"))
        self._pending.clear()
        if abandoned:
            self._counts["abandoned"] += abandoned
            self._log.warning("updates not acknowledged at stop", updates=abandoned)

    def statistics(self) -> AgentStatistics:
        return AgentStatistics(buffered=self._buffered, max_buffered=self.max_buffered,
                               in_flight=len(self._in_flight), **self._counts)
