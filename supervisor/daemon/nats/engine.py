"""The NATS engine: one daemon of a modcoord cluster (``engine: {kind: nats}``).

It implements :class:`~modcoord.supervisor.daemon.engine.Engine`. Inside:

* ``local``: a :class:`~modcoord.supervisor.daemon.coordinator.ModuleCoordinator` for this
  host's modules — their registry, connections, ``on_mode_change`` calls, coordination
  fan-out, memory manager and status — exactly as with the local engine; its debouncer and
  batcher see no updates (they go through NATS).
* the :class:`~modcoord.supervisor.daemon.nats.agent.Agent`: the publish path into the
  JetStream stream (bounded buffer, fold, acknowledged publishes).
* the :class:`~modcoord.supervisor.daemon.nats.owner.Owner`: debouncing and batching of
  the partitions this daemon owns, delivering every batch to every daemon's agent.
* the agent's delivery handler: a batch from any owner goes to the local modules
  subscribed to its sources (their endpoints queue it), and is answered then.
* :class:`~modcoord.supervisor.daemon.nats.ownership.Ownership`: membership and leases.

Threads: a loop thread runs everything NATS (:mod:`.loop`); the data calls only hand work
to it and never block. Two connections: data and control.

On failure: :meth:`NatsEngine.start` raises
:class:`~modcoord.actors.errors.CallTimeoutError` naming the servers when NATS cannot be
reached or the stream cannot be made within ``engine.start_timeout_s``; everything after that
survives a lost connection (publishes are buffered, then refused; see :mod:`.agent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from modcoord.actors.batcher import ALL_SOURCES
from modcoord.actors.errors import CallTimeoutError, ModcoordError
from modcoord.actors.plugins import PluginHost
from modcoord.actors.reply import Reply
from modcoord.actors.shared.cluster import ClusterSnapshot
from modcoord.actors.shared.metrics import MetricsRegistry
from modcoord.actors.update import Batch, Update
from modcoord.supervisor.daemon.config import ConfigSet
from modcoord.supervisor.daemon.coordination import wire_mode
from modcoord.supervisor.daemon.coordinator import ModuleCoordinator
from modcoord.supervisor.daemon.engine import (
    Accepted,
    ModeSwitch,
    OptimizeReport,
    PublishItem,
    Registration,
    StatusBrief,
)
from modcoord.supervisor.daemon.nats.agent import Agent
from modcoord.supervisor.daemon.nats.control import ClusterControl
from modcoord.supervisor.daemon.nats.loop_thread import ConnectionState, LoopThread, connect
from modcoord.supervisor.daemon.nats.names import (
    BUCKET_LEASES,
    BUCKET_MEMBERS,
    STREAM,
    STREAM_SUBJECTS,
    Delivery,
    consumer_name,
    delivery_subject,
)
from modcoord.supervisor.daemon.nats.owner import Owner
from modcoord.supervisor.daemon.nats.ownership import Ownership
from modcoord.supervisor.protocol.calls import CoordinationResult
from modcoord.supervisor.protocol.module import ModuleEndpoint, ModuleInfo

__all__ = ["NatsEngine", "default_instance_id"]

STOP_DRAIN_S = 5.0
DUPLICATE_WINDOW_S = 120.0
"""The stream drops a re-published message (same ``Nats-Msg-Id``) within this window."""
MEMBERS_MAX_AGE_S = 30.0
LEASES_MAX_AGE_S = 60.0
STATUS_TIMEOUT_S = 2.0
UNOWNED_AFTER_S = 3.0
"""A partition counts as unowned (``status.engine.partitions.unowned``, the
``partitions_unowned`` insight) once its lease key was absent this long: a handover leaves
it absent for a moment (a poll, 0.25 s, or two)."""


def default_instance_id() -> str:
    """``<hostname>-<pid>`` made safe for subjects (``engine.instance_id`` overrides it)."""
    host = re.sub(r"[^A-Za-z0-9_\-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}"


class NatsEngine:
    """One daemon of a modcoord cluster on NATS (see the module docstring).

    Args:
        config: the validated config (``daemon.yaml`` ``engine`` says how to reach NATS).
        mode: the initial mode.
        fault_injection, on_escalate: as for the local engine.
        lease_s: the partition lease (tests shorten it).
    """

    def __init__(self, config: ConfigSet, *, mode: str, fault_injection: bool = False,
                 on_escalate: Callable[[str], None] | None = None,
                 lease_s: float | None = None) -> None:
        self.settings = config.daemon.engine
        self.instance_id = self.settings.instance_id or default_instance_id()
        self.local = ModuleCoordinator(config, mode=mode, fault_injection=fault_injection,
                                       on_escalate=on_escalate)
        self._thread = LoopThread()
        self._lease_s = lease_s
        self._data_state = ConnectionState("data")
        self._control_state = ConnectionState("control")
        self._data: Client | None = None
        self._control: Client | None = None
        self._js: JetStreamContext | None = None
        self._cjs: JetStreamContext | None = None
        self._ownership: Ownership | None = None
        self._control_plane: ClusterControl | None = None
        self._running = False
        self._decode_delivery = msgspec.msgpack.Decoder(Delivery).decode
        self.deliveries = {"batches": 0, "updates": 0, "errors": 0}
        self.agent = Agent(instance_id=self.instance_id, partitions=self.settings.partitions,
                           flush_s=self.settings.flush_ms / 1000.0,
                           max_buffered=self.settings.max_buffered, intake=self.local.intake,
                           loop=self._thread.loop, jetstream=self._jetstream)
        self.owner = Owner(config, mode=self.local.mode, instance_id=self.instance_id,
                           loop=self._thread.loop, jetstream=self._jetstream,
                           client=self._client, members=self._live_members,
                           owned=self._may_process, replicas=self.settings.replicas,
                           ack_wait_s=self.settings.ack_wait_s,
                           delivery_timeout_s=self.settings.delivery_timeout_s)
        self._log = logger.bind(actor="nats", instance=self.instance_id)
        self.local.shared.cluster.source = self.cluster_snapshot

    # -- plumbing --

    def _jetstream(self) -> JetStreamContext:
        assert self._js is not None
        return self._js

    def _client(self) -> Client:
        assert self._data is not None
        return self._data

    def _live_members(self) -> tuple[str, ...]:
        return (self._ownership.live_members() if self._ownership is not None
                else (self.instance_id,))

    def _may_process(self, p: int) -> bool:
        return self._ownership is not None and p in self._ownership.owned()

    # -- the Engine properties --

    @property
    def mode(self) -> str:
        return self.local.mode

    @property
    def config(self) -> ConfigSet:
        return self.local.config

    @property
    def metrics(self) -> MetricsRegistry:
        return self.local.metrics

    @property
    def plugins(self) -> PluginHost:
        return self.local.plugins

    @property
    def running(self) -> bool:
        return self._running

    # -- lifecycle --

    def start(self) -> NatsEngine:
        """Start the local actors, the owner's actors, then connect and join the cluster.

        Raises:
            CallTimeoutError: NATS not reachable, or the stream not made, within
                ``engine.start_timeout_s`` (naming the servers).
        """
        self.local.start()
        self.owner.start()
        self._thread.start()
        try:
            self._thread.run(self._astart(), self.settings.start_timeout_s,
                             "joining the NATS cluster")
        except Exception as exc:
            self._log.error("could not join the NATS cluster", servers=self.settings.servers,
                            error=f"{type(exc).__name__}: {exc}")
            self._stop_actors()
            self._thread.stop()
            raise CallTimeoutError(
                f"engine nats: could not join the cluster at "
                f"{', '.join(self.settings.servers)} within "
                f"{self.settings.start_timeout_s} s (engine.start_timeout_s) "
                f"({type(exc).__name__}: {exc}); check engine.servers and that "
                "nats-server runs with JetStream") from None
        self._running = True
        self._log.info("joined the NATS cluster", servers=self.settings.servers,
                       partitions=self.settings.partitions)
        return self

    async def _astart(self) -> None:
        deadline = time.monotonic() + self.settings.start_timeout_s * 0.8
        while True:
            try:
                if self._data is None:
                    self._data = await connect(self.settings, f"{self.instance_id}/data",
                                               self._data_state, data=True)
                if self._control is None:
                    self._control = await connect(self.settings,
                                                  f"{self.instance_id}/control",
                                                  self._control_state, data=False)
                self._js = self._data.jetstream(timeout=5.0)
                self._cjs = self._control.jetstream(timeout=5.0)
                await self._ensure_stream()
                members, leases = await self._ensure_buckets()
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise
                self._log.info("NATS not ready yet: retrying", error=f"{type(exc).__name__}")
                await asyncio.sleep(0.2)
        await self._data.subscribe(delivery_subject(self.instance_id), cb=self._on_delivery)
        kwargs: dict[str, Any] = {}
        if self._lease_s is not None:
            kwargs["lease_s"] = self._lease_s
        self._ownership = Ownership(members, leases, self.instance_id,
                                    self.settings.partitions, self.owner.gained,
                                    self.owner.lost,
                                    agent_subject=delivery_subject(self.instance_id),
                                    **kwargs)
        await self._ownership.start()
        self.owner.start_housekeeping()
        self._control_plane = ClusterControl(
            local=self.local, switch_owner=self._switch_owner,
            instance_id=self.instance_id, loop=self._thread.loop,
            control=self._control_client, jetstream=self._control_js,
            members=self._live_members, replicas=self.settings.replicas)
        await self._control_plane.start()

    def _switch_owner(self, mode: str) -> None:
        if self.owner.core.mode != mode:
            self.owner.core.set_mode(mode)

    def _control_client(self) -> Client:
        assert self._control is not None
        return self._control

    def _control_js(self) -> JetStreamContext:
        assert self._cjs is not None
        return self._cjs

    async def _ensure_stream(self) -> None:
        js = self._jetstream()
        config = StreamConfig(
            name=STREAM, subjects=[STREAM_SUBJECTS], retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE, num_replicas=self.settings.replicas,
            duplicate_window=DUPLICATE_WINDOW_S, discard=DiscardPolicy.NEW)
        try:
            await js.add_stream(config)
        except Exception as exc:
            if "already in use" not in str(exc):
                raise
            await js.update_stream(config)

    async def _ensure_buckets(self) -> tuple[KeyValue, KeyValue]:
        assert self._cjs is not None
        out = []
        for bucket, age in ((BUCKET_MEMBERS, MEMBERS_MAX_AGE_S),
                            (BUCKET_LEASES, LEASES_MAX_AGE_S)):
            out.append(await self._cjs.create_key_value(KeyValueConfig(
                bucket=bucket, history=1, ttl=age, replicas=self.settings.replicas)))
        return out[0], out[1]

    def stop(self, timeout: float = 10.0) -> None:
        """Publish what is buffered, leave the cluster (releasing the leases; what this
        daemon holds unacknowledged is redelivered to the next owners), stop the actors.
        Never raises."""
        if not self._running:
            return
        self._running = False
        drain_s = min(timeout, STOP_DRAIN_S)
        try:
            # Publish what the agent holds, then deliver what this daemon owns and holds,
            # so that a graceful stop leaves nothing for redelivery; what remains after
            # the bounds is still in the stream, unacknowledged: the next owner gets it.
            self._thread.run(self.agent.drain(drain_s), drain_s + 5.0, "draining the agent")
            self.owner.flush(drain_s)
            if not self._thread.run(self.owner.settled(drain_s), drain_s + 5.0,
                                    "delivering the owned partitions' batches"):
                self._log.warning("stopping with owned updates not yet delivered: the "
                                  "next owners get them from the stream")
        except Exception:
            self._log.opt(exception=True).error("draining at stop failed")
        try:
            self._thread.run(self._astop(drain_s), timeout + 5.0,
                             "leaving the NATS cluster")
        except Exception:
            self._log.opt(exception=True).error("leaving the NATS cluster failed")
        self._thread.stop()
        self._stop_actors(timeout)
        self._log.info("left the NATS cluster")

    async def _astop(self, drain_s: float) -> None:
        await self.agent.drain(0.0)  # nothing left; refuses any late publish
        if self._control_plane is not None:
            await self._control_plane.stop()
        await self.owner.close()
        if self._ownership is not None:
            await self._ownership.stop(release=True)
        self._data_state.closing = self._control_state.closing = True
        for client in (self._data, self._control):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.drain()

    def _stop_actors(self, timeout: float = 10.0) -> None:
        for stop in (self.owner.stop_core, lambda: self.local.stop(timeout)):
            try:
                stop()
            except Exception:
                self._log.opt(exception=True).error("stopping actors failed")

    # -- data calls --

    def register(self, info: ModuleInfo, endpoint: ModuleEndpoint) -> Registration:
        return self.local.register(info, endpoint)

    def unregister(self, module_id: str, endpoint: ModuleEndpoint | None = None) -> bool:
        return self.local.unregister(module_id, endpoint)

    def publish_many(self, items: Sequence[PublishItem]
                     ) -> Sequence[int | ModcoordError | Accepted]:
        """Hand the updates to the agent; each is answered once JetStream acknowledged it
        (:class:`Accepted`), or refused now (see :mod:`.agent`)."""
        return self.agent.publish_many(items)

    def publish_backlog(self) -> int:
        """The agent's unacknowledged updates while connected (publishers are paused
        above the server's high-water mark); 0 while disconnected, so that the buffer
        fills and refuses publishes with a clear error instead of stalling them."""
        return self.agent.buffered if self._data_state.connected else 0

    def timers_overdue(self) -> bool:
        return False  # debounce timers run in the owner's actors, not on this path

    def coordinate(self, mode: str, context: dict[str, Any] | None = None,
                   reply: Reply | None = None, caller: Sequence[str] = (),
                   timeout: float = 5.0) -> CoordinationResult | None:
        """Coordinate cluster-wide (:mod:`.control`): the cache in KV, a miss computed
        once by asking every host's modules."""
        if self._control_plane is None:
            return self.local.coordinate(mode, context, reply, caller, timeout)
        return self._control_plane.coordinate(mode, context, reply, caller, timeout)

    def status_brief(self) -> StatusBrief:
        return self.local.status_brief()

    # -- deliveries from owners (loop) --

    async def _on_delivery(self, msg: Msg) -> None:
        try:
            delivery = self._decode_delivery(msg.data)
            now_mono = self.local.clock.monotonic()
            now_wall = time.time()
            updates = tuple(
                Update(u.module_id, u.key, u.payload, u.priority, u.seq,
                       now_mono - max(0.0, now_wall - u.published_unix))
                for u in delivery.updates)
            for module_id, info in self.local.modules().items():
                sources = info.subscribe
                if ALL_SOURCES in sources:
                    part = updates
                else:
                    chosen = frozenset(sources)
                    part = tuple(u for u in updates if u.module_id in chosen)
                if part:
                    self.local.deliver(module_id, Batch(delivery.batch_id, part,
                                                        delivery.reason))
            self.deliveries["batches"] += 1
            self.deliveries["updates"] += len(updates)
            answer = b""
        except Exception as exc:
            self.deliveries["errors"] += 1
            self._log.opt(exception=True).error("a delivered batch could not be handed on")
            answer = f"{type(exc).__name__}: {exc}".encode()
        with contextlib.suppress(Exception):
            await msg.respond(answer)

    # -- control calls --

    def set_mode(self, mode: str, timeout: float | None = None) -> ModeSwitch:
        """Switch every host (:mod:`.control`); the answers of every host's modules.

        Raises:
            InvalidMessageError: unknown mode.
            CallTimeoutError: the switch could not be recorded in time.
        """
        wire_mode(mode)  # an unknown mode is refused before anything changes
        assert self._control_plane is not None
        limit = (timeout if timeout is not None else self.local.callback_timeout_s) + 5.0
        return self._thread.run(self._control_plane.set_mode(mode), limit, "set_mode")

    async def _lag(self) -> dict[str, Any]:
        js = self._jetstream()
        out: dict[str, Any] = {}
        for p in self.owner.owned_partitions():
            try:
                info = await js.consumer_info(STREAM, consumer_name(p))
            except Exception as exc:
                out[str(p)] = {"error": type(exc).__name__}
                continue
            out[str(p)] = {"pending": info.num_pending, "ack_pending": info.num_ack_pending}
        return out

    def _read_lag(self) -> dict[str, Any]:
        """Each owned partition's consumer counts, or ``{"error": ...}`` (never raises)."""
        try:
            lag: dict[str, Any] = self._thread.run(self._lag(), STATUS_TIMEOUT_S,
                                                   "partition lag")
        except Exception as exc:
            lag = {"error": f"{type(exc).__name__}: {exc}"}
        return lag

    def _unowned(self) -> list[int]:
        """The partitions nobody owns as this daemon last saw them: not its own, no live
        member's heartbeat lists them, and their lease key is absent (for
        :data:`UNOWNED_AFTER_S`) or lapsed."""
        ownership = self._ownership
        if ownership is None:
            return []
        claimed = set(ownership.owned())
        for member, info in ownership.membership.members().items():
            if member != self.instance_id:
                claimed.update(info.partitions)
        return sorted(ownership.leases.unheld(UNOWNED_AFTER_S) - claimed)

    def engine_status(self) -> dict[str, Any]:
        """``status.engine`` (every field: docs/REFERENCE.md)."""
        lag = self._read_lag()
        ownership = self._ownership
        return {
            "kind": "nats",
            "instance_id": self.instance_id,
            "servers": list(self.settings.servers),
            "connected": self._data_state.connected and self._control_state.connected,
            "connections": {"data": self._data_state.as_dict(),
                            "control": self._control_state.as_dict()},
            "instances": list(self._live_members()),
            "partitions": {"total": self.settings.partitions,
                           "owned": sorted(ownership.owned()) if ownership else [],
                           "unowned": self._unowned()},
            "lag": lag,
            "leases": ownership.statistics().as_dict() if ownership else {},
            "agent": self.agent.statistics().as_dict(),
            "owner": self.owner.statistics(),
            "deliveries": dict(self.deliveries),
            "coordination": (self._control_plane.statistics()
                             if self._control_plane is not None else {}),
        }

    def cluster_snapshot(self) -> ClusterSnapshot | None:
        """The cluster as the monitor's rules see it (``None`` until the daemon joined
        the cluster). A lag that cannot be read is reported in ``lag_error``."""
        ownership = self._ownership
        if not self._running or ownership is None:
            return None
        lag = self._read_lag()
        counts: list[tuple[int, int]] = []
        failed: list[str] = []
        for p, entry in lag.items():
            if p == "error":
                failed.append(str(entry))
            elif isinstance(entry, dict) and "pending" in entry:
                counts.append((int(p), int(entry["pending"]) + int(entry["ack_pending"])))
            elif isinstance(entry, dict):
                failed.append(f"partition {p}: {entry.get('error')}")
        agent = self.agent.statistics()
        return ClusterSnapshot(
            disconnected=tuple(s.name for s in (self._data_state, self._control_state)
                               if not s.connected),
            instances=len(self._live_members()), partitions=self.settings.partitions,
            owned=len(ownership.owned()), unowned=tuple(self._unowned()),
            buffered=agent.buffered, max_buffered=agent.max_buffered, refused=agent.refused,
            lag=tuple(sorted(counts)), lag_error="; ".join(failed[:3]) or None)

    def status(self) -> dict[str, Any]:
        return self.local.status() | {"engine": self.engine_status()}

    def insights(self) -> dict[str, Any]:
        """The monitor's insights (the local rules and the cluster rules), with the
        cluster as this daemon sees it (``engine``, as in ``status``)."""
        return self.local.insights() | {"engine": self.engine_status()}

    def optimize(self) -> OptimizeReport:
        local = self.local.optimize()
        owner = self.owner.core.optimize()
        return OptimizeReport(
            debounces_flushed=local.debounces_flushed + owner.debounces_flushed,
            updates_delivered=local.updates_delivered + owner.updates_delivered,
            cache_cleared=local.cache_cleared, memory=local.memory)

    def actor_call(self, actor: str, method: str, args: dict[str, Any] | None = None,
                   timeout: float = 5.0, posargs: Sequence[Any] = ()) -> Any:
        return self.local.actor_call(actor, method, args, timeout, posargs)

    def crash(self, actor: str, kind: str = "exception", *, kill: bool = False) -> None:
        self.local.crash(actor, kind, kill=kill)

    def apply_config(self, config: ConfigSet) -> None:
        self.local.apply_config(config)
        self.owner.core.apply_config(config)
