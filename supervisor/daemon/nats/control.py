"""Mode switches and coordination across every host of a NATS cluster.

Rules:

* ``set_mode`` (any daemon): the new mode goes to the KV key ``mode`` of
  ``MODCOORD_STATE`` with the next **mode epoch** (compare-and-set on the key's revision,
  so concurrent switches are ordered; a daemon that starts or reconnects later applies it
  too: every daemon reads the key at start and every ``MODE_CHECK_S``), then a request on
  ``modcoord.ctl.mode`` carrying that epoch is answered by every daemon once it has
  switched its own actors and called its modules' ``on_mode_change``; the answers (results
  and errors of every host's modules) make one
  :class:`~modcoord.supervisor.daemon.engine.ModeSwitch`. A live member that does not
  answer within the modules' timeout appears in ``errors`` as ``instance <id>``.
* A daemon applies each epoch **once**, whichever comes first, the broadcast or its
  periodic read of the key (one lock orders them): the other one finds the epoch applied
  (the broadcast is then answered with that application's results), so modules are never
  told twice of one switch. An epoch older than the applied one is not applied.
* ``coordinate``: the cache is a KV bucket per mode (``MODCOORD_CACHE_<MODE>``) whose
  ``max_age`` is the mode's ``cache.ttl_ms``, keyed by the SHA-256 of the canonical cache
  key. A reload that changes ``cache.ttl_ms`` sets the bucket's ``max_age`` anew (on the
  next ``coordinate`` of that mode, and at start when the bucket exists with another age);
  and every value carries its writer's wall-clock time, so a reader also treats an entry
  older than *its own* current TTL as a miss (``expired``): a stale TTL never outlives the
  reload, even before the bucket is updated or on a daemon not yet reloaded.
  A hit answers from it: from this daemon's **near cache** of the bucket when it has the
  entry (a KV watch keeps it, see :mod:`~modcoord.supervisor.daemon.nats.near_cache`),
  else from the bucket. A miss is computed once cluster-wide: whoever creates the
  lock key ``c.<hash>`` in ``MODCOORD_LOCKS`` (create-if-absent) asks every daemon
  (``modcoord.coord.<mode>``), each of which asks its own modules with the per-module
  timeout; the merged result is stored (only without errors, as locally) and the lock
  deleted. The other callers poll the cache key until the result is there; if the lock
  vanishes without a result (its holder died: the lock's bucket ``max_age`` ends it) they
  try to take the lock themselves.

On failure: an unknown mode or a context that is not plain data is answered with
:class:`~modcoord.actors.errors.InvalidMessageError`; no result within the deadline is a
:class:`~modcoord.actors.errors.CallTimeoutError`; a KV error on a cache read counts as a
miss (``cache_errors``), on the store it is counted and the result still answered; a
failed ``max_age`` update is counted (``cache_errors``), logged and retried on the next
``coordinate`` (entries are still judged by the current TTL). A ``set_mode`` that cannot
record its epoch after :data:`MODE_CAS_ATTEMPTS` compare-and-set conflicts raises
:class:`~modcoord.actors.errors.CallTimeoutError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from modcoord.actors.errors import CallTimeoutError, InvalidMessageError, ModcoordError
from modcoord.actors.modes import MODES
from modcoord.actors.reply import Reply, ReplyBox
from modcoord.actors.shared.cache_keys import cache_key
from modcoord.supervisor.daemon.coordination import wire_mode
from modcoord.supervisor.daemon.coordinator import ModuleCoordinator
from modcoord.supervisor.daemon.engine import ModeSwitch
from modcoord.supervisor.daemon.nats.names import (
    BUCKET_CACHE_PREFIX,
    BUCKET_LOCKS,
    BUCKET_STATE,
    CONTROL_MODE,
    coord_subject,
)
from modcoord.supervisor.daemon.nats.near_cache import NearCache
from modcoord.supervisor.daemon.nats.tasks import cancel_and_wait
from modcoord.supervisor.protocol.calls import CoordinationResult

__all__ = ["ClusterControl"]

MODE_CHECK_S = 2.0
"""How often a daemon checks the cluster's mode key (it missed a switch while away)."""
LOCK_SLACK_S = 2.0
"""A coordination lock lives the per-module timeout plus this (bucket ``max_age``)."""
POLL_S = 0.01
"""How often a caller waiting for another daemon's computation looks for the result."""
MARGIN_S = 1.0
"""Added to the per-module timeout when gathering every daemon's answers."""
MODE_KEY = "mode"
"""The cluster's mode and its epoch, in ``MODCOORD_STATE``."""
MODE_CAS_ATTEMPTS = 20
"""``set_mode`` retries the compare-and-set of the mode key this often (concurrent
switches), then gives up with a clear error."""
KV_STREAM_PREFIX = "KV_"
"""A KV bucket's stream is ``KV_<bucket>`` (JetStream's naming)."""


def _key_hash(mode: str, context: dict[str, Any]) -> str:
    return hashlib.sha256(cache_key(mode, context).encode()).hexdigest()


class ClusterControl:
    """The cluster-wide mode and coordinate of one daemon (runs on the engine's loop).

    Args:
        local: this host's actor system (its modules are asked).
        switch_owner: switches the owner's actor system to a mode (blocking).
        instance_id: this daemon.
        loop: the engine's loop.
        control: the control connection and its JetStream context.
        members: the live members now.
        replicas: ``engine.replicas``.
    """

    def __init__(self, *, local: ModuleCoordinator, switch_owner: Callable[[str], None],
                 instance_id: str, loop: asyncio.AbstractEventLoop,
                 control: Callable[[], Client], jetstream: Callable[[], JetStreamContext],
                 members: Callable[[], tuple[str, ...]], replicas: int) -> None:
        self._local = local
        self._switch_owner = switch_owner
        self.instance_id = instance_id
        self._loop = loop
        self._nc = control
        self._js = jetstream
        self._members = members
        self._replicas = replicas
        self._state: KeyValue | None = None
        self._locks: KeyValue | None = None
        self._caches: dict[str, KeyValue] = {}
        self._near: dict[str, NearCache] = {}  # mode -> this daemon's copy of its bucket
        self._ttl_s: dict[str, float] = {}  # mode -> the max_age this daemon last set
        self._check: asyncio.Task[None] | None = None
        self._mode_lock = asyncio.Lock()  # orders the broadcast and the periodic check
        self._epoch = -1  # the mode epoch applied here (-1: none yet)
        self._epoch_answer: dict[str, Any] | None = None  # that application's answer
        self._encode = msgspec.msgpack.encode
        self._decode = msgspec.msgpack.decode
        self.counts = dict.fromkeys(("hits", "misses", "computed", "waited", "cache_errors",
                                     "mode_switches", "mode_applied", "expired",
                                     "ttl_updates"), 0)
        self._log = logger.bind(actor="nats", instance=instance_id)

    def _timeout_s(self) -> float:
        return float(self._local.callback_timeout_s)

    # -- setup (loop) --

    async def start(self) -> None:
        js = self._js()
        self._state = await js.create_key_value(KeyValueConfig(
            bucket=BUCKET_STATE, history=1, replicas=self._replicas))
        self._locks = await js.create_key_value(KeyValueConfig(
            bucket=BUCKET_LOCKS, history=1, replicas=self._replicas,
            ttl=self._timeout_s() + LOCK_SLACK_S))
        for mode in MODES:
            await self._open_cache(mode)
        nc = self._nc()
        await nc.subscribe(CONTROL_MODE, cb=self._on_mode)
        for mode in MODES:
            await nc.subscribe(coord_subject(mode), cb=self._on_coord)
        await self._apply_cluster_mode(initial=True)
        self._check = self._loop.create_task(self._check_mode())

    def _mode_ttl_s(self, mode: str) -> float:
        """The mode's ``cache.ttl_ms`` now (the current config: a reload changes it)."""
        return float(self._local.config.mode(mode).cache.ttl_ms) / 1000.0

    async def _open_cache(self, mode: str) -> None:
        """Create (or bind to) the mode's cache bucket, with this daemon's TTL as its
        ``max_age`` (an existing bucket made with another age is updated)."""
        js = self._js()
        bucket = f"{BUCKET_CACHE_PREFIX}{mode}"
        ttl = self._mode_ttl_s(mode)
        try:
            self._caches[mode] = await js.create_key_value(KeyValueConfig(
                bucket=bucket, history=1, replicas=self._replicas, ttl=ttl))
            self._ttl_s[mode] = ttl
        except Exception as exc:  # it exists with another configuration (another age)
            if "already in use" not in str(exc):
                raise
            self._caches[mode] = await js.key_value(bucket)
            await self._follow_ttl(mode)  # a failure is counted; the next coordinate retries
        near = NearCache(self._caches[mode], lambda: self._mode_ttl_s(mode), mode)
        near.start()
        self._near[mode] = near

    async def _set_max_age(self, mode: str, ttl: float) -> None:
        """Give the mode's cache bucket ``max_age = ttl`` (JetStream then also expires the
        entries already older than that). Raises what the update raises."""
        js = self._js()
        stream = f"{KV_STREAM_PREFIX}{BUCKET_CACHE_PREFIX}{mode}"
        config: StreamConfig = (await js.stream_info(stream)).config
        if config.max_age != ttl:
            config.max_age = ttl
            if config.duplicate_window is not None and config.duplicate_window > ttl:
                config.duplicate_window = ttl  # JetStream: the window may not exceed the age
            await js.update_stream(config)
            self.counts["ttl_updates"] += 1
            self._log.info("cache bucket age set to the mode's cache.ttl_ms", mode=mode,
                           ttl_s=ttl)
        self._ttl_s[mode] = ttl

    async def _follow_ttl(self, mode: str) -> None:
        """After a reload changed the mode's ``cache.ttl_ms``: set the bucket's age."""
        ttl = self._mode_ttl_s(mode)
        previous = self._ttl_s.get(mode)
        if previous == ttl:
            return
        self._ttl_s[mode] = ttl  # one update at a time; restored below if it fails
        try:
            await self._set_max_age(mode, ttl)
        except Exception as exc:
            if previous is None:
                self._ttl_s.pop(mode, None)
            else:
                self._ttl_s[mode] = previous
            self.counts["cache_errors"] += 1
            self._log.warning("setting the cache bucket's age failed: retried on the next "
                              "coordinate", mode=mode, ttl_s=ttl,
                              error=f"{type(exc).__name__}: {exc}")

    async def stop(self) -> None:
        await cancel_and_wait([self._check])
        for near in self._near.values():
            await near.stop()

    # -- mode --

    async def _cluster_mode(self) -> tuple[str, int, int] | None:
        """The cluster's mode key: (mode, epoch, revision); None if there is none (or it
        names no mode). A value written without an epoch counts as epoch 0."""
        assert self._state is not None
        try:
            entry = await self._state.get(MODE_KEY)
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        doc = self._decode(entry.value)
        mode = doc.get("mode")
        if mode not in MODES:
            return None
        return str(mode), int(doc.get("epoch", 0)), int(entry.revision or 0)

    async def _apply_cluster_mode(self, initial: bool = False) -> None:
        """Apply the mode key's epoch if it is newer than the applied one. At start
        (``initial``) an epoch whose mode is this daemon's already is only recorded."""
        found = await self._cluster_mode()
        if found is None:
            return
        mode, epoch, _ = found
        if initial and mode == self._local.mode:
            async with self._mode_lock:
                self._epoch = max(self._epoch, epoch)
            return
        await self._apply_epoch(mode, epoch, from_key=True)

    async def _apply_epoch(self, mode: str, epoch: int, from_key: bool = False
                           ) -> dict[str, Any]:
        """Switch this host to ``mode`` for ``epoch`` once: the answer of the application
        (or, for an epoch applied already, of that earlier application; for an older
        epoch, an answer without results). Raises what the switch raises (the epoch stays
        unapplied: the periodic check tries again)."""
        async with self._mode_lock:
            if epoch == self._epoch and self._epoch_answer is not None:
                return self._epoch_answer
            if epoch <= self._epoch:
                return {"instance": self.instance_id, "previous": self._local.mode,
                        "strategy": "", "results": {}, "errors": {}}
            if from_key:  # not (yet) told by the broadcast: missed, or it comes next
                self.counts["mode_applied"] += 1
                self._log.info("applying the cluster's mode", mode=mode, epoch=epoch,
                               previous=self._local.mode)
            answer = await self._loop.run_in_executor(None, self._switch_here, mode)
            self._epoch, self._epoch_answer = epoch, answer
            return answer

    async def _check_mode(self) -> None:
        while True:
            await asyncio.sleep(MODE_CHECK_S)
            try:
                await self._apply_cluster_mode()
            except Exception as exc:
                self._log.warning("reading the cluster's mode failed",
                                  error=f"{type(exc).__name__}: {exc}")

    def _switch_here(self, mode: str) -> dict[str, Any]:
        """Switch this host (blocking: a worker thread)."""
        switch = self._local.set_mode(mode)
        self._switch_owner(switch.mode)
        return {"instance": self.instance_id, "previous": switch.previous,
                "strategy": switch.strategy, "results": dict(switch.results),
                "errors": dict(switch.errors)}

    async def _on_mode(self, msg: Msg) -> None:
        try:
            request = self._decode(msg.data)
            answer = await self._apply_epoch(str(request["mode"]), int(request["epoch"]))
        except Exception as exc:
            answer = {"instance": self.instance_id, "previous": self._local.mode,
                      "strategy": "", "results": {},
                      "errors": {f"instance {self.instance_id}": f"{type(exc).__name__}: "
                                 f"{exc}"}}
        with contextlib.suppress(Exception):
            await msg.respond(self._encode(answer))

    async def _record_mode(self, mode: str) -> int:
        """Write ``mode`` with the next epoch to the mode key (compare-and-set); the epoch.

        Raises:
            CallTimeoutError: :data:`MODE_CAS_ATTEMPTS` conflicts in a row.
        """
        assert self._state is not None
        for _ in range(MODE_CAS_ATTEMPTS):
            found = await self._cluster_mode_entry()
            epoch = (found[0] if found is not None else 0) + 1
            value = self._encode({"mode": mode, "epoch": epoch, "by": self.instance_id,
                                  "at": time.time()})
            try:
                if found is None:
                    await self._state.create(MODE_KEY, value)
                else:
                    await self._state.update(MODE_KEY, value, last=found[1])
            except KeyWrongLastSequenceError:
                continue  # another switch came first: take the next epoch
            return epoch
        raise CallTimeoutError(
            f"set_mode: the cluster's mode key changed under {MODE_CAS_ATTEMPTS} attempts "
            "in a row (MODE_CAS_ATTEMPTS: concurrent switches); try again")

    async def _cluster_mode_entry(self) -> tuple[int, int] | None:
        """The mode key's (epoch, revision), whatever its mode; None if absent."""
        assert self._state is not None
        try:
            entry = await self._state.get(MODE_KEY)
        except KeyNotFoundError:
            return None
        epoch = 0
        if entry.value is not None:
            with contextlib.suppress(Exception):
                epoch = int(self._decode(entry.value).get("epoch", 0))
        return epoch, int(entry.revision or 0)

    async def set_mode(self, mode: str) -> ModeSwitch:
        """Switch every host (see the module docstring).

        Raises:
            InvalidMessageError: unknown mode.
            CallTimeoutError: the epoch could not be recorded (see :meth:`_record_mode`).
        """
        canonical = wire_mode(mode)
        previous = self._local.mode
        assert self._state is not None
        epoch = await self._record_mode(canonical)
        self.counts["mode_switches"] += 1
        answers = await self._gather(CONTROL_MODE, self._encode({"mode": canonical,
                                                                 "epoch": epoch}),
                                     self._timeout_s() + MARGIN_S)
        results: dict[str, Any] = {}
        errors: dict[str, str] = {}
        strategy = str(self._local.config.mode(canonical).memory.strategy)
        for member, answer in answers.items():
            if answer is None:
                errors[f"instance {member}"] = (
                    f"no answer within {self._timeout_s() + MARGIN_S} s (the daemon applies "
                    "the mode when it is back)")
                continue
            results.update(answer.get("results", {}))
            errors.update(answer.get("errors", {}))
        return ModeSwitch(mode=canonical, previous=previous, strategy=strategy,
                          results=results, errors=errors)

    async def _gather(self, subject: str, data: bytes, timeout: float
                      ) -> dict[str, dict[str, Any] | None]:
        """Ask every daemon; each live member's answer (None: none in time)."""
        nc = self._nc()
        expected = set(self._members())
        answers: dict[str, dict[str, Any] | None] = dict.fromkeys(expected)
        got: set[str] = set()
        complete = asyncio.Event()

        async def collect(msg: Msg) -> None:
            try:
                answer = self._decode(msg.data)
                member = str(answer["instance"])
            except Exception:
                return
            answers[member] = answer
            got.add(member)
            if expected <= got:
                complete.set()

        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=collect)
        try:
            await nc.publish(subject, data, reply=inbox)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(complete.wait(), timeout)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return answers

    # -- coordinate --

    def coordinate(self, mode: str, context: dict[str, Any] | None, reply: Reply | None,
                   caller: Sequence[str], timeout: float) -> CoordinationResult | None:
        """The engine's ``coordinate`` (I/O thread: never blocks with ``reply``)."""
        if reply is None:
            box = ReplyBox()
            self.coordinate(mode, context, box, caller, timeout)
            return CoordinationResult(**box.wait(timeout, "coordinate"))
        started = time.perf_counter()
        try:
            canonical = wire_mode(mode)
            context = context if context is not None else {}
            digest = _key_hash(canonical, context)
        except InvalidMessageError as exc:
            reply(None, exc)
            return None
        except ModcoordError as exc:
            reply(None, exc)
            return None
        for module_id in caller:
            self._local.activity.touch(module_id)
        self._loop.call_soon_threadsafe(
            lambda: self._loop.create_task(
                self._coordinate(canonical, context, digest, reply, started)))
        return None

    async def _coordinate(self, mode: str, context: dict[str, Any], digest: str,
                          reply: Reply, started: float) -> None:
        try:
            value, cached = await self._lookup_or_compute(mode, context, digest)
        except Exception as exc:
            reply(None, exc if isinstance(exc, ModcoordError) else CallTimeoutError(
                f"coordinate: {type(exc).__name__}: {exc}"))
            return
        elapsed = time.perf_counter() - started
        self._local.metrics.record("coordination", elapsed)
        reply({**value, "cached": cached, "latency_ms": elapsed * 1000.0}, None)

    async def _cached(self, mode: str, digest: str) -> dict[str, Any] | None:
        """The cached result: from the near cache when it has it, else from the bucket
        (then kept in the near cache); None for a miss, an expired entry or a failed
        read."""
        near = self._near.get(mode)
        if near is not None and (hit := near.get(digest)) is not None:
            return hit
        try:
            entry = await self._caches[mode].get(digest)
        except KeyNotFoundError:
            return None
        except Exception:
            self.counts["cache_errors"] += 1
            return None
        if entry.value is None:
            return None
        value: dict[str, Any] = self._decode(entry.value)
        stored = value.pop("stored_unix", None)
        if isinstance(stored, (int, float)) and time.time() - stored > self._mode_ttl_s(mode):
            self.counts["expired"] += 1  # older than the TTL now (a reload shortened it)
            return None
        if near is not None and isinstance(stored, (int, float)):
            near.put(digest, dict(value), float(stored))
        return value

    async def _lookup_or_compute(self, mode: str, context: dict[str, Any], digest: str
                                 ) -> tuple[dict[str, Any], bool]:
        await self._follow_ttl(mode)
        value = await self._cached(mode, digest)
        if value is not None:
            self.counts["hits"] += 1
            return value, True
        self.counts["misses"] += 1
        assert self._locks is not None
        deadline = time.monotonic() + 2 * (self._timeout_s() + MARGIN_S) + LOCK_SLACK_S
        lock = f"c.{digest}"
        while time.monotonic() < deadline:
            try:
                await self._locks.create(lock, self.instance_id.encode())
            except KeyWrongLastSequenceError:
                # Someone computes it: wait for the result, or for the lock to go.
                self.counts["waited"] += 1
                while time.monotonic() < deadline:
                    await asyncio.sleep(POLL_S)
                    value = await self._cached(mode, digest)
                    if value is not None:
                        return value, True
                    try:
                        await self._locks.get(lock)
                    except KeyNotFoundError:
                        break  # released (no cacheable result) or its holder died
                continue
            try:
                value = await self._compute(mode, context)
                if not value["errors"]:
                    stored = time.time()
                    try:
                        await self._caches[mode].put(digest, self._encode(
                            {**value, "stored_unix": stored}))
                        if (near := self._near.get(mode)) is not None:
                            near.put(digest, dict(value), stored)
                    except Exception:
                        self.counts["cache_errors"] += 1
                self.counts["computed"] += 1
                return value, False
            finally:
                with contextlib.suppress(Exception):
                    await self._locks.delete(lock)
        raise CallTimeoutError(f"coordinate: no result within the cluster's deadline "
                               f"({2 * (self._timeout_s() + MARGIN_S) + LOCK_SLACK_S} s)")

    async def _compute(self, mode: str, context: dict[str, Any]) -> dict[str, Any]:
        answers = await self._gather(coord_subject(mode),
                                     self._encode({"mode": mode, "context": context}),
                                     self._timeout_s() + MARGIN_S)
        results: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for member, answer in answers.items():
            if answer is None:
                errors[f"instance {member}"] = (
                    f"no answer within {self._timeout_s() + MARGIN_S} s")
                continue
            results.update(answer.get("results", {}))
            errors.update(answer.get("errors", {}))
        strategy = str(self._local.config.mode(mode).memory.strategy)
        return {"mode": mode, "strategy": strategy, "results": results, "errors": errors}

    async def _on_coord(self, msg: Msg) -> None:
        """Another daemon computes: ask this host's modules and answer."""
        try:
            request = self._decode(msg.data)
            mode, context = str(request["mode"]), dict(request["context"])
        except Exception:
            return
        loop = self._loop

        def done(value: dict[str, Any], cacheable: bool) -> None:
            answer = {"instance": self.instance_id, "results": value.get("results", {}),
                      "errors": value.get("errors", {})}
            loop.call_soon_threadsafe(
                lambda: loop.create_task(msg.respond(self._encode(answer))))

        self._local.compute(mode, context, done)

    def statistics(self) -> dict[str, Any]:
        """The counts, with each mode's near cache (``near_cache``: mode -> its
        statistics)."""
        return {**self.counts,
                "near_cache": {mode: near.statistics() for mode, near in self._near.items()}}
