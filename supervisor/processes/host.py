"""The daemon's side of the actor processes: start one, route to it, watch it.

:class:`ProcessHosting` (one per engine) starts an actor in a process of its own
(:meth:`ProcessHosting.start`), forked from a fork server that has the actors preloaded
(so a restart costs a fork, not an interpreter start), and returns a
:class:`ProcessRef`, which the actor's :class:`~modcoord.actors.ActorHandle` uses like a
pykka ref: messages put into its inbox travel over the pipe (tells as frames, asks with a
call id whose reply comes back), and the frames the child sends are acted on in the
reader thread (deliveries, settled updates, gauges, latency samples, log records).

Watching: the end of the pipe is the end of the process — exited, killed by a signal or by
the kernel's OOM killer — and, unless the daemon asked for it (a stop or a handover), is
reported to the supervisor as a crash, exactly as an in-daemon actor's crash; a process
that stops answering the heartbeat (:class:`~.heartbeat.Heartbeat`) is killed, which then
reads the same way. On a crash the handle buffers new messages for the successor, asks in
flight fail with :class:`~modcoord.actors.errors.ActorCrashedError`, and the accepted
updates the process held are in the :class:`~.ledger.UpdateLedger`, replayed into the
debouncer once the successor runs (:meth:`ProcessHosting.after_restart`).
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from multiprocessing.connection import Connection
from typing import Any

import psutil
from loguru import logger

from modcoord.actors._base import ActorHandle, FailureReport, Handover, ManagedActor
from modcoord.actors._pykka import Envelope, envelope
from modcoord.actors.batcher import BatcherHandover, Enqueue
from modcoord.actors.debouncer import Cancel, Publish, PublishMany
from modcoord.actors.errors import ActorCrashedError, ActorStoppedError, CallTimeoutError
from modcoord.actors.settings import PluginSettings
from modcoord.actors.shared import Shared
from modcoord.supervisor.processes.channel import Channel
from modcoord.supervisor.processes.child import Boot, decode_tell, encode_tell, main
from modcoord.supervisor.processes.codec import (
    DeliveryFrames,
    decode_error,
    pickled,
    unpickled,
)
from modcoord.supervisor.processes.heartbeat import Heartbeat
from modcoord.supervisor.processes.ledger import UpdateLedger, updates_in

__all__ = ["ProcessHosting", "ProcessRef", "ProcessUsage", "process_usage"]

_PRELOAD = ["modcoord.supervisor.processes.child"]
_STOP_GRACE_S = 2.0
"""Beyond a stop's own timeout, how long the daemon waits for the process to end before
killing it."""


def _context() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def _start_fork_server() -> None:
    """Start the fork server now, so its preload runs beside the daemon's own start.

    The fork server would also import the daemon's ``__main__`` script by path (to make it
    ``__mp_main__``); the actors need nothing from it, and a script without a ``__name__``
    guard would run twice, so its path is hidden while the server starts.
    """
    import multiprocessing.forkserver as forkserver
    import sys

    _context()
    main_module = sys.modules.get("__main__")
    path = main_module.__dict__.pop("__file__", None) if main_module is not None else None
    try:
        forkserver.ensure_running()
    finally:
        if path is not None and main_module is not None:
            main_module.__dict__["__file__"] = path


ProcessUsage = dict[str, Any]


def process_usage(pid: int) -> ProcessUsage:
    """``{"pid", "rss_bytes", "cpu_seconds"}`` of ``pid`` (zeros if it cannot be read)."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            rss = int(proc.memory_info().rss)
            times = proc.cpu_times()
        return {"pid": pid, "rss_bytes": rss,
                "cpu_seconds": round(float(times.user + times.system), 3)}
    except (psutil.Error, OSError):
        return {"pid": pid, "rss_bytes": 0, "cpu_seconds": 0.0}


class _Relayed:
    """A tell from one actor process to another, passed on as the frame body it came in
    (never decoded in the daemon: the sender packed its rows into one ``bin``,
    :func:`~.child.encode_relayed_tell`). ``count`` is how many updates it carries. Its
    updates are in the ledger already: they entered the data path through the sender,
    which got them from the daemon."""

    __slots__ = ("body", "count", "kind")

    def __init__(self, kind: str, body: Any, count: int) -> None:
        self.kind = kind
        self.body = body
        self.count = count


class _Inbox:
    """What the handle puts envelopes into: they go over the pipe."""

    __slots__ = ("_ref",)

    def __init__(self, ref: ProcessRef) -> None:
        self._ref = ref

    def put(self, item: Envelope[Any]) -> None:
        self._ref.put(item)


class ProcessRef:
    """One actor process, seen from the daemon (see the module docstring)."""

    def __init__(self, hosting: ProcessHosting, boot: Boot,
                 report: Callable[[FailureReport], None]) -> None:
        self.hosting = hosting
        self.name = boot.name
        self.generation = boot.generation
        self._report = report
        ctx = _context()
        parent, child = ctx.Pipe(duplex=True)
        self._child_conn: Connection | None = child
        self.process = ctx.Process(target=main, args=(child, boot), daemon=True,
                                   name=f"modcoord-{boot.name}")
        self.channel = Channel(parent, boot.name)
        self.actor_inbox = _Inbox(self)
        self._deliveries = DeliveryFrames()  # this process's batches, one copy each
        self.pid: int | None = None
        self._calls: dict[int, Any] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._stopping = False
        self._clean = False
        self._dead = threading.Event()
        self._ready = threading.Event()
        self._failure: FailureReport | None = None
        self._hung: str | None = None
        self._armed = False  # it set the debouncer's deadline the server reads
        # What the daemon's backlog and queue gauge count for this process, so that what
        # dies with it is taken off them (the successor counts its own).
        self._told = self._taken = 0  # PublishMany updates sent / taken in (backlog)
        self._queued = self._received = 0  # Enqueue updates sent / received (in transit)
        self._depth = False  # it set the batch queue's depth
        self.heartbeat = Heartbeat(hosting.heartbeat_interval, hosting.heartbeat_timeout,
                                   time.monotonic())
        self._log = logger.bind(actor=boot.name)

    # -- lifecycle --

    def launch(self) -> None:
        """Fork the process (from the fork server) in a thread of its own and return at
        once: the actor's messages wait in the pipe until it runs, so the daemon's start
        does not wait for the fork server's preload."""
        threading.Thread(target=self._launch, daemon=True,
                         name=f"modcoord-{self.name}-launch").start()

    def _launch(self) -> None:
        try:
            self.process.start()
        except Exception as exc:
            self._log.opt(exception=True).error("actor process could not start")
            self._failure = FailureReport(self.name, self.generation,
                                          f"actor process could not start: {exc}",
                                          False, None)
            self._ended(started=False)
            return
        self.pid = self.process.pid
        if self._child_conn is not None:
            self._child_conn.close()
            self._child_conn = None
        self._log.info("actor process started", actor_pid=self.pid, generation=self.generation)
        self._read()

    def is_alive(self) -> bool:
        return not self._dead.is_set() and not self._stopping

    def stop(self, block: bool = True, timeout: float | None = None) -> bool:
        """Stop the actor (it flushes its pending work), wait for the process to end."""
        limit = 10.0 if timeout is None else timeout
        self._stopping = True
        self.channel.send(["stop", limit])
        if not self._dead.wait(limit + _STOP_GRACE_S):
            self._log.error("actor process did not stop in time: killed", actor_pid=self.pid)
            self.kill()
            self._dead.wait(_STOP_GRACE_S)
        return self._clean

    def kill(self) -> None:
        """SIGKILL the process (fault injection, a hung process, a stop that hangs)."""
        if self.pid is not None and not self._dead.is_set():  # never a reused pid
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.kill(self.pid, signal.SIGKILL)

    def ask(self, message: Any, block: bool = True, timeout: float | None = None) -> Any:
        """Send ``message`` and wait for the reply (the supervisor's ``Handover``).

        Raises:
            CallTimeoutError: no reply within ``timeout``.
            ActorCrashedError: the process ended first.
        """
        import pykka

        future: pykka.Future[Any] = pykka.ThreadingFuture()
        if isinstance(message, Handover):
            self._stopping = True
        self.put(envelope(message, reply_to=future))
        try:
            result = future.get(timeout=timeout)
        except pykka.Timeout as exc:
            raise CallTimeoutError(f"{self.name}: no reply within {timeout} s") from exc
        if isinstance(message, Handover):
            self.channel.close()
            self.channel.conn.close()  # the child sees the end of the pipe and exits
            self._dead.wait(_STOP_GRACE_S)
        return result

    # -- sending --

    def put(self, item: Envelope[Any]) -> None:
        message = item.message
        kind = type(message)
        if kind is _Relayed:
            if message.kind == "eq":
                self._queued += message.count
            self.channel.send(["t", message.kind, message.body])
            return
        ledger = self.hosting.ledger
        if kind is PublishMany:
            ledger.record(message.updates)
            self._told += len(message.updates)
        elif kind is Enqueue:
            ledger.record(message.updates)
            self._queued += len(message.updates)
        elif kind is Publish:
            ledger.record((message.update,))
        elif kind is Cancel:
            ledger.cancel(message.module_id, message.key)
        reply_to = item.reply_to
        if reply_to is None:
            self.channel.send(["t", *encode_tell(message)])
            return
        with self._lock:
            if self._dead.is_set():
                err = ActorCrashedError(self.name, "actor process ended")
                reply_to.set_exception((type(err), err, None))
                return
            call_id = next(self._ids)
            self._calls[call_id] = reply_to
        self.channel.send(["a", call_id, pickled(message)])

    # -- reading --

    def _read(self) -> None:
        try:
            self.channel.read_forever(self._frame)
        except Exception:
            self._log.opt(exception=True).error("actor process frames unreadable: killed")
            self.kill()
        self._ended()

    def _frame(self, frame: list[Any]) -> None:
        kind = frame[0]
        hosting = self.hosting
        shared = hosting.shared
        if kind in ("dw", "dr", "d"):
            batch = self._deliveries.batch(frame)
            hosting.last_batch_id = max(hosting.last_batch_id, batch.batch_id)
            shared.deliver(frame[1], batch)
        elif kind == "s":
            hosting.ledger.release(frame[1])
        elif kind == "t":
            target = frame[1]
            try:
                if hosting.hosts(target):  # process to process: passed on as it came
                    body = frame[3]
                    count = frame[4] if len(frame) > 4 else len(body)
                    hosting.handles[target].tell(_Relayed(frame[2], body, count))
                else:
                    hosting.handles[target].tell(decode_tell(frame[2], frame[3]))
            except (KeyError, ActorStoppedError):
                self._log.bind(target=target).warning(
                    "actor-process message not routed: peer stopped")
        elif kind == "b":
            shared.backlog.sub(frame[1])
            self._taken += frame[1]
        elif kind == "nd":
            shared.backlog.next_deadline = frame[1]
            self._armed = True
        elif kind == "gd":
            shared.queue_gauge.set_depth(frame[1])
            self._depth = True
        elif kind == "gm":
            shared.queue_gauge.set_max_queue(frame[1])
        elif kind == "gs":
            shared.queue_gauge.sent(frame[1])
        elif kind == "gr":
            shared.queue_gauge.received(frame[1])
            self._received += frame[1]
        elif kind == "m":
            metrics = shared.metrics
            for name, values in frame[1].items():
                metrics.record_many(name, values)
            for name, by in frame[2].items():
                metrics.increment(name, by)
        elif kind == "l":
            logger.bind(**frame[3], actor_pid=self.pid).log(frame[1], frame[2])
        elif kind == "h":
            self.heartbeat.answer(frame[1], time.monotonic())
        elif kind == "r":
            with self._lock:
                future = self._calls.pop(frame[1], None)
            if future is not None:
                if frame[2]:
                    future.set(unpickled(frame[3]))
                else:
                    err = decode_error(frame[3], self.name)
                    future.set_exception((type(err), err, None))
        elif kind == "pg":
            hosting.guards[self.name] = frame[1]
        elif kind == "f":
            self._failure = unpickled(frame[1])
        elif kind == "ready":
            self._ready.set()
            threading.Thread(target=self._beat, daemon=True,
                             name=f"modcoord-{self.name}-heartbeat").start()
        elif kind == "stopped":
            self._clean = True
        else:  # a child of another version, or a bug: say so rather than lose it quietly
            self._log.bind(kind=str(kind)[:32]).error("actor-process frame of unknown kind")

    def _beat(self) -> None:
        hb = self.heartbeat
        hb.answer(0, time.monotonic())
        widening = self.hosting.shared.widening
        while not self._dead.wait(hb.interval / 2):
            now = time.monotonic()
            number = hb.ping_due(now)
            if number is not None:
                self.channel.send(["h", number, widening.factor, widening.reason])
            if hb.hung(now) and not self._stopping:
                silent = round(hb.silent_for(now), 3)
                self._hung = f"no heartbeat answer for {silent} s (supervisor.heartbeat_timeout_ms)"
                self._log.error("actor process not answering the heartbeat: killed",
                                actor_pid=self.pid, silent_s=silent)
                self.kill()
                return

    def _forget_counts(self) -> None:
        """Take what died with the process off the daemon's backlog and queue gauge (the
        ledger replays those updates, and the successor counts them again)."""
        shared = self.hosting.shared
        if self._armed:  # its timer died with it: the successor arms its own
            shared.backlog.next_deadline = None
        if self._told > self._taken:
            shared.backlog.sub(self._told - self._taken)
        if self._queued > self._received:
            shared.queue_gauge.received(self._queued - self._received)
        if self._depth:
            shared.queue_gauge.set_depth(0)

    def _ended(self, started: bool = True) -> None:
        code = None
        if started:
            self.process.join(_STOP_GRACE_S)
            code = self.process.exitcode
        with self._lock:
            self._dead.set()
            calls, self._calls = self._calls, {}
        how = (self._hung or (f"killed by {signal.Signals(-code).name}" if code is not None
               and code < 0 else f"exited with code {code}"))
        for future in calls.values():
            err = ActorCrashedError(self.name, f"actor process {self.pid} ended ({how})")
            future.set_exception((type(err), err, None))
        self.channel.close()
        self._forget_counts()
        if self._stopping:
            return
        handle = self.hosting.handles.get(self.name)
        if handle is not None and handle.ref is self:  # type: ignore[comparison-overlap]
            handle.suspend()
        failure = self._failure
        error = (failure.error if failure is not None
                 else f"actor process {self.pid} {how}")
        self._log.error("actor process ended", actor_pid=self.pid, how=how)
        self._report(FailureReport(
            name=self.name, generation=self.generation, error=error,
            fatal=failure.fatal if failure is not None else False,
            handover=failure.handover if failure is not None else None))


class ProcessHosting:
    """Every actor process of one engine (see the module docstring).

    Args:
        names: the actors to run out of process (``supervisor.out_of_process``).
        handles: every actor's handle (routing between processes, suspending on a crash).
        shared: the daemon's shared objects (deliveries, gauges, metrics, widening).
        heartbeat_interval: seconds between pings (``supervisor.heartbeat_interval_ms``).
        heartbeat_timeout: seconds of silence that make a process hung
            (``supervisor.heartbeat_timeout_ms``).
        plugins: the plugin settings given to each process at start (its batch
            processors).
    """

    def __init__(self, names: tuple[str, ...], handles: Mapping[str, ActorHandle],
                 shared: Shared, ledger: UpdateLedger, *, heartbeat_interval: float,
                 heartbeat_timeout: float,
                 plugins: Callable[[], PluginSettings | None] = lambda: None) -> None:
        self.names = frozenset(names)
        self.handles = handles
        self.shared = shared
        self.ledger = ledger
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.plugins = plugins
        self.last_batch_id = 0
        # The plugin guards each actor process keeps (its batch processors run there).
        self.guards: dict[str, dict[str, Any]] = {}
        self.refs: dict[str, ProcessRef] = {}  # the newest process of each actor
        if self.names:
            _start_fork_server()
            shared.widening.on_change = self._widened

    def _widened(self, factor: float, reason: str) -> None:
        """The memory actor changed the widening: every actor process gets it now."""
        for ref in list(self.refs.values()):
            if ref.is_alive():
                ref.channel.send(["w", factor, reason])

    def hosts(self, name: str) -> bool:
        return name in self.names

    def start(self, name: str, actor_class: type[ManagedActor], settings: Any, *,
              generation: int, fault_injection: bool,
              report: Callable[[FailureReport], None], takeover: Any) -> ProcessRef:
        """Start ``name`` in a process of its own; returns its ref once forked."""
        if takeover is None and name == "batcher" and self.last_batch_id:
            # Killed: nothing handed over; keep batch ids increasing.
            takeover = BatcherHandover(queued=(), subscriptions=(),
                                       next_batch_id=self.last_batch_id + 1)
        w = self.shared.widening
        boot = Boot(name=name, actor_class=actor_class, settings=settings,
                    takeover=takeover, generation=generation,
                    fault_injection=fault_injection,
                    peers=tuple(n for n in self.handles if n != name),
                    hosted=tuple(n for n in self.names if n != name),
                    plugins=self.plugins(), widening=(w.factor, w.reason))
        ref = ProcessRef(self, boot, report)
        self.refs[name] = ref
        ref.launch()
        return ref

    def apply_plugins(self, settings: PluginSettings) -> None:
        """Load the plugins of ``settings`` in every actor process (a mode switch, a
        reload); its guards start afresh there, as in the daemon."""
        body = pickled(settings)
        for ref in list(self.refs.values()):
            if ref.is_alive():
                ref.channel.send(["pl", body])

    def plugin_statistics(self, local: dict[str, Any]) -> dict[str, Any]:
        """``status`` → ``plugins`` with, per plugin, the guard of the process that calls
        it (every process loads every plugin; only one calls each: the one with calls)."""
        remote = list(self.guards.values())
        if not remote:
            return local
        guards = dict(local["guards"])
        for theirs in remote:
            for key, guard in theirs.items():
                mine = guards.get(key)
                if mine is None or guard["calls"] > mine["calls"]:
                    guards[key] = guard
        return {**local, "guards": guards,
                "failures": sum(g["failures"] for g in guards.values()),
                "disabled": sorted(k for k, g in guards.items() if g["disabled"])}

    @staticmethod
    def kill(ref: object) -> int | None:
        """SIGKILL the process behind ``ref`` (a :class:`ProcessRef`); returns its pid, or
        None when there is no live process to kill (still being forked, or already
        ended)."""
        if not isinstance(ref, ProcessRef) or ref.pid is None or not ref.is_alive():
            return None
        ref.kill()
        return ref.pid

    def replay(self, handed_over: Iterable[Any] = ()) -> int:
        """Tell the debouncer every update the ledger holds (after a process ended),
        but those a handover gave the successors already (an actor that crashed and
        could still export its pending work)."""
        skip = {(u.module_id, u.key, u.seq) for h in handed_over for u in updates_in(h)}
        updates = tuple(u for u in self.ledger.replay()
                        if (u.module_id, u.key, u.seq) not in skip)
        if updates:
            self.shared.backlog.add(len(updates))
            self.handles["debouncer"].tell(PublishMany(updates))
            logger.bind(actor="supervisor").warning(
                "accepted updates replayed after an actor process ended",
                updates=len(updates))
        return len(updates)
