"""The owner side: debouncing and batching of the partitions this daemon owns.

Rules:

* For each owned partition ``p`` one task pulls from the durable consumer ``mc-p<p>``
  (filter ``modcoord.upd.<p>.>``; created idempotently by whoever owns ``p`` first, never
  deleted). The updates of each fetched message go to the owner's own actor system — a
  :class:`~modcoord.supervisor.daemon.coordinator.ModuleCoordinator` whose debouncer and
  batcher are the local engine's, with the same settings, modes and adaptive parameters —
  with ``seq`` set to the message's stream sequence (so a key's updates keep their order
  and a subscriber can drop a duplicate whose ``seq`` is not newer than the last it saw).
* That actor system has one subscriber (all sources): every batch it forms is sent, in
  order, to every live member's agent (``modcoord.dlv.<instance>``) as a request; an agent
  that does not answer is asked again (backoff) while it is a live member.
* A stream message is acknowledged only when each of its updates was delivered to every
  agent, or superseded by a newer update of the same key that was; while it waits longer
  than a third of ``engine.ack_wait_s`` the owner tells JetStream it is in progress. So an
  owner that dies leaves its pending updates unacknowledged and JetStream redelivers them
  to the next owner: delivery is at least once.
* A redelivered update older (by stream sequence) than one already taken in for its key
  is dropped as stale and its message acknowledged (``stale`` counts them).

On failure: a fetch or consumer error is counted (``fetch_errors``) and retried with a
backoff; a malformed stream message is acknowledged (so it does not come back forever),
counted in ``malformed`` and logged; an acknowledgement that fails is counted
(``ack_errors``; the message comes back: a duplicate, never a loss).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from modcoord.actors.batcher import FlushBatches
from modcoord.actors.debouncer import Flush, PublishMany
from modcoord.actors.update import Batch, Update
from modcoord.supervisor.daemon.config import ConfigSet
from modcoord.supervisor.daemon.coordinator import ModuleCoordinator
from modcoord.supervisor.daemon.nats.names import (
    STREAM,
    DeliveredUpdate,
    Delivery,
    UpdateMessage,
    consumer_name,
    delivery_subject,
    partition_filter,
)
from modcoord.supervisor.protocol.module import ModuleInfo, Reply

__all__ = ["OWNER_SUBSCRIBER", "Owner"]

OWNER_SUBSCRIBER = "modcoord.cluster"
"""The one subscriber of the owner's actor system: every batch, sent to every agent."""
FETCH_BATCH = 256
FETCH_TIMEOUT_S = 0.5
MAX_ACK_PENDING = 20_000
MAX_HELD_MESSAGES = 10_000
"""Messages fetched and not yet acknowledged, at most (fetching waits beyond it)."""
RETRY_MIN_S = 0.05
RETRY_MAX_S = 1.0


class _ClusterEndpoint:
    """The owner actor system's endpoint for :data:`OWNER_SUBSCRIBER` (never blocks)."""

    def __init__(self, owner: Owner) -> None:
        self._owner = owner

    def deliver(self, module_id: str, batch: Batch) -> None:
        self._owner.loop.call_soon_threadsafe(self._owner.enqueue, batch)

    def mode_change(self, module_id: str, mode: str, strategy: str,
                    context: dict[str, Any], reply: Reply) -> None:
        reply(None, None)

    def performance_metrics(self, module_id: str, reply: Reply) -> None:
        reply(None, "no metrics")

    def live(self, stall_s: float) -> bool:
        return True  # never swept: it stands for every module of the cluster


@dataclass(eq=False)
class _Held:
    msg: Msg
    partition: int
    seq: int
    keys: set[tuple[str, str]] = field(default_factory=set)
    touched: float = field(default_factory=time.monotonic)


class Owner:
    """The owned partitions' consumers, debouncing, batching and deliveries.

    Args:
        config, mode: as the engine's.
        instance_id: this daemon.
        loop: the engine's loop (everything here runs on it but the actors).
        jetstream, client: the data connection's JetStream context and client.
        members: the live members now (the delivery targets).
        owned: whether this instance may process a partition now (its lease).
        replicas, ack_wait_s, delivery_timeout_s: ``engine`` settings.
    """

    def __init__(self, config: ConfigSet, *, mode: str, instance_id: str,
                 loop: asyncio.AbstractEventLoop, jetstream: Callable[[], JetStreamContext],
                 client: Callable[[], Client], members: Callable[[], tuple[str, ...]],
                 owned: Callable[[int], bool], replicas: int, ack_wait_s: float,
                 delivery_timeout_s: float) -> None:
        self.core = ModuleCoordinator(config, mode=mode)
        self.instance_id = instance_id
        self.loop = loop
        self._js = jetstream
        self._nc = client
        self._members = members
        self._owned = owned
        self._replicas = replicas
        self._ack_wait_s = ack_wait_s
        self._delivery_timeout_s = delivery_timeout_s
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._held: dict[int, _Held] = {}  # stream seq -> held message
        self._waiting: dict[tuple[str, str], list[_Held]] = {}
        self._last: dict[tuple[str, str], int] = {}  # key -> newest stream seq taken in
        self._outbox: deque[Batch] = deque()
        self._delivering: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(UpdateMessage).decode
        self.counts = dict.fromkeys((
            "fetched_messages", "fetched_updates", "redelivered", "stale", "malformed",
            "batches_delivered", "updates_delivered", "delivery_retries", "acked",
            "ack_errors", "fetch_errors", "in_progress"), 0)
        self._log = logger.bind(actor="owner", instance=instance_id)

    # -- lifecycle (loop) --

    def start(self) -> None:
        """Start the owner's actor system (any thread but the loop's: it blocks briefly)."""
        self.core.start()
        self.core.register(ModuleInfo(module_id=OWNER_SUBSCRIBER, name="cluster delivery",
                                      supported_modes=frozenset(), subscribe=("*",)),
                           _ClusterEndpoint(self))

    def start_housekeeping(self) -> None:
        """On the loop: start the in-progress task."""
        self._housekeeping = self.loop.create_task(self._keep_in_progress())

    async def close(self) -> None:
        """On the loop: stop consuming (held messages stay unacknowledged: redelivered)."""
        for p in list(self._tasks):
            self.lost(p)
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        if self._delivering is not None:
            self._delivering.cancel()
            with contextlib.suppress(BaseException):
                await self._delivering

    def flush(self, timeout: float) -> int:
        """Hand everything pending in the owner's debouncer and batcher on now (a control
        thread; blocks up to ``timeout``); how many updates were flushed."""
        flushed = int(self.core.handles["debouncer"].ask(Flush(), timeout=timeout))
        self.core.handles["batcher"].ask(FlushBatches(), timeout=timeout)
        return flushed

    async def settled(self, timeout: float) -> bool:
        """On the loop: wait until every batch formed so far was delivered and every held
        message acknowledged (up to ``timeout``); whether that happened."""
        deadline = time.monotonic() + timeout
        while (self._outbox or self._held) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return not (self._outbox or self._held)

    def stop_core(self) -> None:
        self.core.stop()

    # -- ownership (loop) --

    def gained(self, p: int) -> None:
        old = self._tasks.pop(p, None)
        if old is not None:
            old.cancel()
        self._tasks[p] = self.loop.create_task(self._consume(p))

    def lost(self, p: int) -> None:
        task = self._tasks.pop(p, None)
        if task is not None:
            task.cancel()

    def owned_partitions(self) -> list[int]:
        return sorted(self._tasks)

    # -- consuming --

    async def _consume(self, p: int) -> None:
        delay = RETRY_MIN_S
        sub = None
        try:
            while True:
                try:
                    if sub is None:
                        sub = await self._bind(p)
                    if not self._owned(p):
                        await asyncio.sleep(FETCH_TIMEOUT_S)  # fenced: wait for the lease
                        continue
                    if self._full():
                        await asyncio.sleep(0.005)
                        continue
                    try:
                        msgs = await sub.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT_S)
                    except TimeoutError:
                        continue
                    for msg in msgs:
                        self._take(p, msg)
                    delay = RETRY_MIN_S
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.counts["fetch_errors"] += 1
                    if self.counts["fetch_errors"] % 20 == 1:
                        self._log.warning("fetching a partition failed: retrying",
                                          partition=p, error=f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
        finally:
            if sub is not None:
                with contextlib.suppress(BaseException):
                    await sub.unsubscribe()

    async def _bind(self, p: int) -> Any:
        js = self._js()
        config = ConsumerConfig(
            durable_name=consumer_name(p), filter_subject=partition_filter(p),
            ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._ack_wait_s, max_ack_pending=MAX_ACK_PENDING, max_deliver=-1,
            mem_storage=True, num_replicas=self._replicas)
        try:
            await js.add_consumer(STREAM, config)
        except Exception as exc:  # it exists (maybe with other settings): bind anyway
            if "already" not in str(exc).lower():
                raise
        return await js.pull_subscribe_bind(consumer_name(p), stream=STREAM)

    def _full(self) -> bool:
        core = self.core
        return (len(self._held) >= MAX_HELD_MESSAGES
                or core.queue_gauge.depth + core.backlog.value >= core.queue_gauge.max_queue)

    def _take(self, p: int, msg: Msg) -> None:
        self.counts["fetched_messages"] += 1
        meta = msg.metadata
        seq = int(meta.sequence.stream)
        if meta.num_delivered > 1:
            self.counts["redelivered"] += 1
        try:
            message = self._decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.counts["malformed"] += 1
            self._log.error("malformed stream message acknowledged and skipped",
                            partition=p, seq=seq, error=str(exc))
            self.loop.create_task(self._ack(msg))
            return
        held = self._held.get(seq)
        if held is not None:  # fetched again while held: the newer handle acks it
            held.msg = msg
            return
        held = _Held(msg, p, seq)
        now_mono = self.core.clock.monotonic()
        now_wall = time.time()
        updates: list[Update] = []
        for su in message.updates:
            k = (su.module_id, su.key)
            last = self._last.get(k)
            if last is not None and last > seq:
                self.counts["stale"] += 1
                continue
            self._last[k] = seq
            held.keys.add(k)
            self._waiting.setdefault(k, []).append(held)
            updates.append(Update(su.module_id, su.key, su.payload, su.priority, seq,
                                  now_mono - max(0.0, now_wall - su.published_unix)))
        self.counts["fetched_updates"] += len(updates)
        if not held.keys:
            self.loop.create_task(self._ack(msg))
            return
        self._held[seq] = held
        self.core.backlog.add(len(updates))
        self.core.handles["debouncer"].tell(PublishMany(tuple(updates)))

    async def _ack(self, msg: Msg) -> None:
        try:
            await msg.ack()
            self.counts["acked"] += 1
        except Exception as exc:
            self.counts["ack_errors"] += 1
            self._log.warning("acknowledging a stream message failed (it comes back)",
                              error=f"{type(exc).__name__}: {exc}")

    async def _keep_in_progress(self) -> None:
        every = self._ack_wait_s / 3.0
        while True:
            await asyncio.sleep(every / 2.0)
            now = time.monotonic()
            for held in list(self._held.values()):
                if now - held.touched >= every:
                    held.touched = now
                    with contextlib.suppress(Exception):
                        await held.msg.in_progress()
                        self.counts["in_progress"] += 1

    # -- delivering --

    def enqueue(self, batch: Batch) -> None:
        """On the loop: a batch the owner's batcher formed; delivered in order."""
        self._outbox.append(batch)
        if self._delivering is None or self._delivering.done():
            self._delivering = self.loop.create_task(self._deliver_all())

    async def _deliver_all(self) -> None:
        while self._outbox:
            batch = self._outbox[0]
            await self._deliver(batch)
            self._outbox.popleft()
            self._settle(batch)

    async def _deliver(self, batch: Batch) -> None:
        data = self._encode(Delivery(self.instance_id, batch.batch_id, batch.reason, tuple(
            DeliveredUpdate(u.module_id, u.key, u.payload, u.priority, u.seq,
                            time.time() - max(0.0, self.core.clock.monotonic()
                                              - u.published_at))
            for u in batch.updates)))
        done: set[str] = set()
        delay = RETRY_MIN_S
        nc = self._nc()
        while True:
            targets = [m for m in self._members() if m not in done]
            if not targets:
                break
            answers = await asyncio.gather(*(
                nc.request(delivery_subject(m), data, timeout=self._delivery_timeout_s)
                for m in targets), return_exceptions=True)
            failed: list[str] = []
            for member, answer in zip(targets, answers, strict=True):
                if isinstance(answer, BaseException) or answer.data:
                    failed.append(member)
                else:
                    done.add(member)
            if not failed:
                break
            self.counts["delivery_retries"] += 1
            if self.counts["delivery_retries"] % 20 == 1:
                self._log.warning("an agent did not take a batch: retrying",
                                  members=failed, batch=batch.batch_id)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
        self.counts["batches_delivered"] += 1
        self.counts["updates_delivered"] += len(batch.updates)

    def _settle(self, batch: Batch) -> None:
        for u in batch.updates:
            k = (u.module_id, u.key)
            waiting = self._waiting.get(k)
            if not waiting:
                continue
            keep: list[_Held] = []
            for held in waiting:
                if held.seq <= u.seq:
                    held.keys.discard(k)
                    if not held.keys:
                        self._held.pop(held.seq, None)
                        self.loop.create_task(self._ack(held.msg))
                else:
                    keep.append(held)
            if keep:
                self._waiting[k] = keep
            else:
                del self._waiting[k]

    def statistics(self) -> dict[str, Any]:
        return {**self.counts, "held_messages": len(self._held),
                "outbox_batches": len(self._outbox), "owned": self.owned_partitions()}
