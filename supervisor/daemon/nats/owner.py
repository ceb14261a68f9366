"""The owner side: debouncing and batching of the partitions this daemon owns.

Rules:

* For each owned partition ``p`` one task pulls from the durable consumer ``mc-p<p>``
  (filter ``modcoord.upd.<p>.>``; created idempotently by whoever owns ``p`` first, never
  deleted): one message, waiting, then what else is there at once (:meth:`Owner._pull`).
  The updates of each fetched message go to the owner's own actor system — a
  :class:`~modcoord.supervisor.daemon.coordinator.ModuleCoordinator` whose debouncer and
  batcher are the local engine's, with the same settings, modes and adaptive parameters —
  with ``seq`` set to the message's stream sequence (so a key's updates keep their order
  and a subscriber can drop a duplicate whose ``seq`` is not newer than the last it saw).
* That actor system has one subscriber (all sources): every batch it forms is sent, in
  order, to every live member's agent (``modcoord.dlv.<instance>``) as a request. Each
  member has a lane of its own (a task and a place in the outbox): an agent that does not
  answer is asked again (backoff) while it is a live member, and only its own lane waits
  meanwhile; the other members' deliveries go on. A member that joins starts at the
  oldest batch not yet settled; one that leaves (no heartbeat for the membership timeout)
  loses its lane. A batch settles (its updates count as delivered) once every live
  member's lane has passed it, in the outbox's order.
* A stream message is acknowledged only when each of its updates was delivered to every
  agent, or superseded by a newer update of the same key that was; while it waits longer
  than a third of ``engine.ack_wait_s`` the owner tells JetStream it is in progress. So an
  owner that dies leaves its pending updates unacknowledged and JetStream redelivers them
  to the next owner: delivery is at least once.
* A redelivered update older (by stream sequence) than one already taken in for its key
  is dropped as stale and its message acknowledged (``stale`` counts them). The table of
  the newest sequence per key (:class:`LastSeen`) is bounded: every
  :data:`LAST_SEEN_TRIM_S` the owner reads each partition's consumer **ack floor** (every
  message of the partition at or below it is acknowledged, and a WorkQueue stream removes
  acknowledged messages, so none of them can be delivered again) and forgets the keys
  whose newest sequence is at or below it: what it remembers is the keys of messages that
  are still in the stream or just above the floor. Beyond
  :data:`~modcoord.supervisor.daemon.nats.last_seen.MAX_LAST_SEEN` keys the
  oldest are forgotten anyway (``seen_evicted``, logged): a late redelivery of one of
  those is delivered again (a duplicate with an older ``seq``), never lost.
* Updates a batch processor (``plugins.batch_processors``) leaves out of a batch are an
  explicit decision not to deliver them: once the batches before them were delivered,
  they settle as if delivered (their messages are acknowledged when nothing else in them
  waits), counted in ``processor_removed`` and logged. The owner's actors run in the
  daemon's process (never ``supervisor.out_of_process``: the stream is their ledger), so
  the batcher's ``settled`` hook tells the owner which updates left the batcher.

On failure: a fetch or consumer error is counted (``fetch_errors``) and retried with a
backoff; a malformed stream message is acknowledged (so it does not come back forever),
counted in ``malformed`` and logged (so is one with an update of an unknown priority,
which the debouncer would refuse); an acknowledgement that fails is counted
(``ack_errors``; the message comes back: a duplicate, never a loss).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
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
from modcoord.actors.update import PRIORITY_RANK, Batch, Update
from modcoord.supervisor.daemon.config import ConfigSet
from modcoord.supervisor.daemon.coordinator import ModuleCoordinator, default_child_specs
from modcoord.supervisor.daemon.nats.last_seen import LastSeen
from modcoord.supervisor.daemon.nats.names import (
    STREAM,
    DeliveredUpdate,
    Delivery,
    UpdateMessage,
    consumer_name,
    delivery_subject,
    partition_filter,
)
from modcoord.supervisor.daemon.nats.tasks import cancel_and_wait
from modcoord.supervisor.protocol.module import ModuleInfo, Reply

__all__ = ["OWNER_SUBSCRIBER", "Owner"]

OWNER_SUBSCRIBER = "modcoord.cluster"
"""The one subscriber of the owner's actor system: every batch, sent to every agent."""
FETCH_BATCH = 256
FETCH_TIMEOUT_S = 0.5
"""How long one pull waits for a partition's first message (then it pulls again)."""
DRAIN_TIMEOUT_S = 0.005
"""How long the pull after it may wait for what is already in the stream (a round trip:
what is there comes at once; a lingering rest is cut at this)."""
MAX_ACK_PENDING = 20_000
MAX_HELD_MESSAGES = 10_000
"""Messages fetched and not yet acknowledged, at most (fetching waits beyond it)."""
RETRY_MIN_S = 0.05
RETRY_MAX_S = 1.0
LAST_SEEN_TRIM_S = 5.0
"""How often the owner reads its partitions' ack floors and forgets the keys below them."""
@dataclass(frozen=True)
class _Removed:
    """Updates a batch processor left out: they settle in the outbox's order."""

    updates: tuple[tuple[str, str, int], ...]


@dataclass(eq=False)
class _Entry:
    """One outbox item: its place in the order, and a batch's delivery encoded once."""

    n: int
    item: Batch | _Removed
    data: bytes | None = None


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
        # In this process always: the batcher's ``settled`` hook (below) must reach the
        # owner, and the stream already keeps what an actor process's ledger would.
        self.core = ModuleCoordinator(config, mode=mode, specs=default_child_specs())
        release = self.core.shared.settled

        def settled(updates: Sequence[Update]) -> None:
            release(updates)
            self._settled_hook(updates)

        self.core.shared = dataclasses.replace(self.core.shared, settled=settled)
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
        self._seen = LastSeen()
        self._outbox: deque[_Entry] = deque()  # not yet settled, in order
        self._next_n = 0  # the number the next outbox entry gets
        self._cursor: dict[str, int] = {}  # member -> the first entry it has not taken
        self._lanes: dict[str, asyncio.Task[None]] = {}
        self._sent: set[tuple[str, str, int]] = set()  # enqueued since the last settled
        self._evicted_logged = 0
        self._housekeeping: asyncio.Task[None] | None = None
        self._trimming: asyncio.Task[None] | None = None
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(UpdateMessage).decode
        self.counts = dict.fromkeys((
            "fetched_messages", "fetched_updates", "redelivered", "stale", "malformed",
            "batches_delivered", "updates_delivered", "delivery_retries", "acked",
            "ack_errors", "fetch_errors", "in_progress", "processor_removed",
            "seen_trim_errors"), 0)
        self._log = logger.bind(actor="owner", instance=instance_id)

    # -- lifecycle (loop) --

    def start(self) -> None:
        """Start the owner's actor system (any thread but the loop's: it blocks briefly)."""
        self.core.start()
        self.core.register(ModuleInfo(module_id=OWNER_SUBSCRIBER, name="cluster delivery",
                                      supported_modes=frozenset(), subscribe=("*",)),
                           _ClusterEndpoint(self))

    def start_housekeeping(self) -> None:
        """On the loop: start the in-progress and ack-floor tasks."""
        self._housekeeping = self.loop.create_task(self._keep_in_progress())
        self._trimming = self.loop.create_task(self._trim_seen())

    async def close(self) -> None:
        """On the loop: stop consuming (held messages stay unacknowledged: redelivered)."""
        for p in list(self._tasks):
            self.lost(p)
        for task in (self._housekeeping, self._trimming):
            if task is not None:
                task.cancel()
        await cancel_and_wait(list(self._lanes.values()))
        self._lanes.clear()

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
                    msgs = await self._pull(sub)
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

    async def _pull(self, sub: Any) -> list[Msg]:
        """The partition's next messages, as soon as there is one: a pull for *one*
        message waits (up to :data:`FETCH_TIMEOUT_S`) and returns when it arrives, then
        whatever else is there now is taken without waiting (up to :data:`FETCH_BATCH`).

        (nats-py's ``fetch(n)`` with nothing available at once holds its request open
        until ``n`` messages came or the timeout passed: a trickle of updates would wait up
        to the whole timeout for a batch of :data:`FETCH_BATCH`.) An empty list when
        nothing came within the timeout.
        """
        try:
            msgs: list[Msg] = await sub.fetch(1, timeout=FETCH_TIMEOUT_S)
        except TimeoutError:
            return []
        with contextlib.suppress(TimeoutError):  # nothing more right now
            msgs += await sub.fetch(FETCH_BATCH - 1, timeout=DRAIN_TIMEOUT_S)
        return msgs

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
            for su in message.updates:  # the debouncer would refuse the whole message
                if su.priority not in PRIORITY_RANK:
                    raise msgspec.ValidationError(
                        f"unknown priority {su.priority!r} of key {su.key!r} (one of "
                        f"{', '.join(PRIORITY_RANK)})")
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
            if not self._seen.take(p, k, seq):
                self.counts["stale"] += 1
                continue
            held.keys.add(k)
            self._waiting.setdefault(k, []).append(held)
            updates.append(Update(su.module_id, su.key, su.payload, su.priority, seq,
                                  now_mono - max(0.0, now_wall - su.published_unix)))
        self.counts["fetched_updates"] += len(updates)
        self._log_evictions()
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

    def _log_evictions(self) -> None:
        evicted = self._seen.evicted
        if evicted and evicted - self._evicted_logged >= min(1000, max(1, self._evicted_logged)):
            self._evicted_logged = evicted
            self._log.warning("the last-seen table is full: the oldest keys are forgotten "
                              "(a late redelivery of one is delivered again)",
                              limit=self._seen.limit, evicted=evicted)

    async def trim_seen_once(self) -> int:
        """On the loop: forget the keys at or below each partition's ack floor (see the
        module docstring); how many went. A partition whose consumer cannot be read is
        counted (``seen_trim_errors``) and left as it is until the next round."""
        js = self._js()
        gone = 0
        for p in self._seen.partitions():
            try:
                info = await js.consumer_info(STREAM, consumer_name(p))
            except Exception as exc:
                self.counts["seen_trim_errors"] += 1
                if self.counts["seen_trim_errors"] % 20 == 1:
                    self._log.warning("reading a partition's ack floor failed: retrying",
                                      partition=p, error=f"{type(exc).__name__}: {exc}")
                continue
            gone += self._seen.forget_through(p, int(info.ack_floor.stream_seq))
        return gone

    async def _trim_seen(self) -> None:
        while True:
            await asyncio.sleep(LAST_SEEN_TRIM_S)
            await self.trim_seen_once()

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
        self._sent.update((u.module_id, u.key, u.seq) for u in batch.updates)
        self._push(batch)

    def _push(self, item: Batch | _Removed) -> None:
        self._outbox.append(_Entry(self._next_n, item))
        self._next_n += 1
        self._advance()

    def _settled_hook(self, updates: Sequence[Update]) -> None:
        """The batcher's ``settled`` (its thread): ``updates`` left it, in the batches it
        just handed on (their ``enqueue`` comes first on the loop) or removed by a batch
        processor."""
        triples = tuple((u.module_id, u.key, u.seq) for u in updates)
        self.loop.call_soon_threadsafe(self.removed_check, triples)

    def removed_check(self, settled: tuple[tuple[str, str, int], ...]) -> None:
        """On the loop: of the updates that left the batcher, those in no batch since the
        last call were removed by a batch processor: they settle after the batches queued
        before them (so an older update of their key in one of those is delivered first),
        counted and logged."""
        sent, self._sent = self._sent, set()
        removed = tuple(t for t in settled if t not in sent)
        if not removed:
            return
        self.counts["processor_removed"] += len(removed)
        self._log.info("updates a batch processor removed are acknowledged without "
                       "delivery", updates=len(removed), total=self.counts["processor_removed"])
        self._push(_Removed(removed))

    # -- delivery lanes (loop) --

    def _advance(self) -> None:
        """Settle the outbox's head entries that every live member has taken (a batch
        processor's removals as soon as they are at the head), forget the members that
        are gone, and start a lane for each live member with an entry still to take."""
        live = self._members()
        for m in [m for m in self._cursor if m not in live and m not in self._lanes]:
            del self._cursor[m]
        head = self._outbox[0].n if self._outbox else self._next_n
        while self._outbox:
            entry = self._outbox[0]
            if isinstance(entry.item, Batch) and any(
                    self._cursor.get(m, head) <= entry.n for m in live):
                break
            self._outbox.popleft()
            head = entry.n + 1
            if isinstance(entry.item, Batch):
                self._settle(entry.item)
                self.counts["batches_delivered"] += 1
                self.counts["updates_delivered"] += len(entry.item.updates)
            else:
                self._settle_keys(entry.item.updates)
        for m in live:
            cursor = self._cursor.setdefault(m, head)
            if cursor < head:  # behind what has settled (it was not live meanwhile)
                self._cursor[m] = cursor = head
            if cursor < self._next_n and m not in self._lanes:
                self._lanes[m] = self.loop.create_task(self._lane(m))

    def _entry(self, n: int) -> _Entry | None:
        """The outbox entry numbered ``n`` (None once it has settled or before it exists)."""
        if not self._outbox or not self._outbox[0].n <= n < self._next_n:
            return None
        return self._outbox[n - self._outbox[0].n]

    async def _lane(self, member: str) -> None:
        """Deliver the outbox to one member, in order, while it is live; asking again with
        a backoff when its agent does not take a batch."""
        delay = RETRY_MIN_S
        try:
            while member in self._members():
                n = self._cursor.get(member, self._next_n)
                entry = self._entry(n)
                if entry is None:
                    break
                if isinstance(entry.item, Batch) and not await self._deliver(member, entry):
                    self.counts["delivery_retries"] += 1
                    if self.counts["delivery_retries"] % 20 == 1:
                        self._log.warning("an agent did not take a batch: retrying",
                                          member=member, batch=entry.item.batch_id)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                delay = RETRY_MIN_S
                if self._cursor.get(member) == n:
                    self._cursor[member] = n + 1
                self._advance()
        finally:
            if self._lanes.get(member) is asyncio.current_task():
                del self._lanes[member]
        self._advance()

    async def _deliver(self, member: str, entry: _Entry) -> bool:
        """Send one batch to one member's agent; whether it took it."""
        batch = entry.item
        assert isinstance(batch, Batch)
        if entry.data is None:
            entry.data = self._encode(Delivery(self.instance_id, batch.batch_id,
                                               batch.reason, tuple(
                DeliveredUpdate(u.module_id, u.key, u.payload, u.priority, u.seq,
                                time.time() - max(0.0, self.core.clock.monotonic()
                                                  - u.published_at))
                for u in batch.updates)))
        try:
            answer = await self._nc().request(delivery_subject(member), entry.data,
                                              timeout=self._delivery_timeout_s)
        except Exception:
            return False
        return not answer.data

    def _settle(self, batch: Batch) -> None:
        self._settle_keys((u.module_id, u.key, u.seq) for u in batch.updates)

    def _settle_keys(self, updates: Iterable[tuple[str, str, int]]) -> None:
        """Each ``(module_id, key, seq)`` was delivered (or removed): the held messages
        waiting for that key at or below ``seq`` no longer wait for it; a message that
        waits for nothing more is acknowledged."""
        for module_id, key, seq in updates:
            k = (module_id, key)
            waiting = self._waiting.get(k)
            if not waiting:
                continue
            keep: list[_Held] = []
            for held in waiting:
                if held.seq <= seq:
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
                "seen_keys": len(self._seen), "seen_forgotten": self._seen.forgotten,
                "seen_evicted": self._seen.evicted,
                "outbox_batches": len(self._outbox), "lanes": len(self._lanes),
                "owned": self.owned_partitions()}
