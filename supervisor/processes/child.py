"""The actor process: one actor, its own clock and timers, talking to the daemon over a
pipe.

:func:`main` is the process's entry point (the fork server preloads this module, so a
start or a restart is a fork, not a fresh interpreter). It builds the actor with a context
whose shared objects stand in for the daemon's: deliveries, settled updates, the queue
gauge, the backlog, latency samples and log records travel to the daemon as frames
(:mod:`.codec`); peers that live elsewhere are reached through the daemon
(:class:`RemoteHandle`). Its reader loop (the main thread) turns the daemon's frames into
messages for the actor and answers heartbeats at once.

Failure: an actor that crashes reports it (with its exported pending work) and the process
exits; the daemon treats the end of the pipe as the crash in every other case (killed,
out of memory). When the daemon goes away the pipe ends and the process exits at once.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, cast

import pykka
from loguru import logger

# Preloaded by the fork server: what every actor process runs.
from modcoord.actors import batcher as _batcher  # noqa: F401
from modcoord.actors import debouncer as _debouncer  # noqa: F401
from modcoord.actors._base import (
    ActorContext,
    ActorHandle,
    FailureReport,
    ManagedActor,
)
from modcoord.actors._pykka import envelope
from modcoord.actors.batcher import Enqueue
from modcoord.actors.clock import MonotonicClock
from modcoord.actors.debouncer import PublishMany
from modcoord.actors.errors import ActorCrashedError, ActorStoppedError
from modcoord.actors.histogram import LatencyHistogram
from modcoord.actors.message import Message
from modcoord.actors.settings import PluginSettings
from modcoord.actors.shared import Shared
from modcoord.actors.shared.admission import Backlog, QueueGauge
from modcoord.actors.shared.metrics import MetricsRegistry
from modcoord.actors.update import Batch, Update
from modcoord.supervisor.processes.channel import Channel
from modcoord.supervisor.processes.codec import (
    DeliveryFrames,
    decode_updates,
    encode_error,
    encode_updates,
    pack,
    pickled,
    unpack,
    unpickled,
)

__all__ = ["METRICS_FLUSH_S", "Boot", "RemoteHandle", "encode_relayed_tell", "encode_tell",
           "main"]

METRICS_FLUSH_S = 0.05
"""How often an actor process sends its latency samples to the daemon's registry."""

SWITCH_INTERVAL_S = 0.0005
"""The actor process's GIL switch interval (Python's default is 5 ms): a timer thread that
wakes while the reader thread decodes a burst gets the interpreter within this, so a
deadline is not served up to 5 ms late per thread hop."""

EXIT_CRASHED = 70
"""The exit code of an actor process whose actor crashed (it reported why first)."""


@dataclass(frozen=True)
class Boot:
    """What an actor process starts with (pickled by ``multiprocessing`` at the fork)."""

    name: str
    actor_class: type[ManagedActor]
    settings: Any
    takeover: Any
    generation: int
    fault_injection: bool
    peers: tuple[str, ...]
    plugins: PluginSettings | None = None
    widening: tuple[float, str] = (1.0, "")
    hosted: tuple[str, ...] = ()
    """The peers that run in processes of their own: the daemon passes their updates on
    without decoding them (:func:`encode_relayed_tell`)."""


def encode_tell(message: Any) -> list[Any]:
    """A tell as a frame body: the data path as arrays, anything else pickled."""
    kind = type(message)
    if kind is PublishMany:
        return ["pm", encode_updates(message.updates)]
    if kind is Enqueue:
        return ["eq", encode_updates(message.updates)]
    return ["p", pickled(message)]


def encode_relayed_tell(message: Any) -> list[Any]:
    """A tell for a peer in another actor process: the data path's rows packed into one
    ``bin`` (with their count), which the daemon passes on as it is, never decoding a row;
    anything else as :func:`encode_tell`."""
    kind = type(message)
    if kind is PublishMany or kind is Enqueue:
        rows = encode_updates(message.updates)
        return ["pm" if kind is PublishMany else "eq", pack(rows), len(rows)]
    return encode_tell(message)


def decode_tell(kind: str, body: Any) -> Any:
    """The message of a tell's frame body (rows, or rows packed by
    :func:`encode_relayed_tell`).

    Raises:
        ValueError: a packed body that is not msgpack (a malformed stream).
    """
    if kind == "pm" or kind == "eq":
        if type(body) is bytes:
            body = unpack(body)
        updates = decode_updates(body)
        return PublishMany(updates) if kind == "pm" else Enqueue(updates)
    return unpickled(body)


class RemoteHandle(ActorHandle):
    """A peer that lives in another process: its tells go through the daemon."""

    def __init__(self, name: str, channel: Channel, *, relayed: bool = False) -> None:
        super().__init__(name)
        self._channel = channel
        self._state = "running"
        self._encode = encode_relayed_tell if relayed else encode_tell

    def tell(self, message: Any) -> None:
        self._channel.send(["t", self.name, *self._encode(message)])

    def ask_future(self, message: Any) -> pykka.Future[Any]:
        raise ActorStoppedError(self.name, "asks between actor processes are not routed")

    def is_alive(self) -> bool:
        return True


class _Samples:
    """Latency samples recorded in this process, waiting to go to the daemon."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, list[float]] = {}
        self.counters: dict[str, int] = {}

    def take(self) -> tuple[dict[str, list[float]], dict[str, int]]:
        with self.lock:
            values, self.values = self.values, {}
            counters, self.counters = self.counters, {}
        return values, counters


class _ForwardedHistogram(LatencyHistogram):
    """Records locally and queues the sample for the daemon's histogram of that name."""

    def __init__(self, name: str, samples: _Samples, registry: MetricsRegistry) -> None:
        super().__init__(registry.clock, registry.window_s)
        self._name = name
        self._samples = samples

    def record(self, seconds: float) -> None:
        with self._samples.lock:
            self._samples.values.setdefault(self._name, []).append(seconds)

    def record_many(self, values: list[float]) -> None:
        with self._samples.lock:
            self._samples.values.setdefault(self._name, []).extend(values)


class _ForwardedMetrics(MetricsRegistry):
    def __init__(self, clock: Any, samples: _Samples) -> None:
        super().__init__(clock, names=())
        self._samples = samples

    def histogram(self, name: str) -> LatencyHistogram:
        h = self._histograms.get(name)
        if h is None:
            with self._lock:
                h = self._histograms.setdefault(
                    name, _ForwardedHistogram(name, self._samples, self))
        return h

    def increment(self, name: str, by: int = 1) -> None:
        with self._samples.lock:
            self._samples.counters[name] = self._samples.counters.get(name, 0) + by


class _ForwardedGauge(QueueGauge):
    """The batch queue's gauge as the daemon's admission sees it: each change forwarded."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        super().__init__()

    def set_depth(self, depth: int) -> None:
        if depth != self._depth:
            self._channel.send(["gd", depth])
        super().set_depth(depth)

    def set_max_queue(self, max_queue: int) -> None:
        if max_queue != self._max_queue:
            self._channel.send(["gm", max_queue])
        super().set_max_queue(max_queue)

    def sent(self, n: int) -> None:
        self._channel.send(["gs", n])

    def received(self, n: int) -> None:
        self._channel.send(["gr", n])


class _ForwardedBacklog(Backlog):
    """The debouncer's intake as the daemon's server sees it: what was taken in, and the
    armed deadline (the server holds publishers back while a deadline is overdue)."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._deadline: float | None = None
        super().__init__()

    def sub(self, n: int) -> None:
        self._channel.send(["b", n])

    @property
    def next_deadline(self) -> float | None:
        return self._deadline

    @next_deadline.setter
    def next_deadline(self, deadline: float | None) -> None:
        if deadline != self._deadline:
            self._deadline = deadline
            self._channel.send(["nd", deadline])


class _Reply:
    """Where the actor answers an ask from the daemon: the answer goes back as a frame.

    Duck-types the part of a pykka future the actor loop uses (``set``,
    ``set_exception``)."""

    def __init__(self, call_id: int, channel: Channel) -> None:
        self._id = call_id
        self._channel = channel

    def set(self, value: Any = None) -> None:
        try:
            body = pickled(value)
        except Exception as exc:
            self._channel.send(["r", self._id, False, encode_error(
                ActorCrashedError("actor", f"reply not picklable: {exc}"))])
            return
        self._channel.send(["r", self._id, True, body])

    def set_exception(self, exc_info: Any = None) -> None:
        error = exc_info[1] if exc_info is not None else sys.exc_info()[1]
        if not isinstance(error, BaseException):
            error = ActorCrashedError("actor", "failed without an exception")
        self._channel.send(["r", self._id, False, encode_error(error)])


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _log_sink(channel: Channel) -> Any:
    def sink(message: Any) -> None:
        record = message.record
        extra = {k: _plain(v) for k, v in record["extra"].items()}
        exc = record["exception"]
        if exc is not None and exc.type is not None:
            extra["exception"] = f"{exc.type.__name__}: {exc.value}"
        channel.send(["l", record["level"].name, record["message"], extra])

    return sink


def main(conn: Connection, boot: Boot) -> None:
    """Run one actor until the daemon stops it or the pipe ends (see the module doc)."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    channel = Channel(conn, f"{boot.name}-child")
    logger.remove()
    logger.add(_log_sink(channel), level="DEBUG", enqueue=False, catch=True)
    clock = MonotonicClock()
    samples = _Samples()
    shared = Shared.create(clock)
    if boot.plugins is not None:
        shared.apply_plugins(boot.plugins)

    deliveries = DeliveryFrames()

    def deliver(subscriber_id: str, batch: Batch) -> None:
        channel.send(deliveries.frame(subscriber_id, batch))

    def settled(updates: Sequence[Update]) -> None:
        channel.send(["s", [[u.module_id, u.key, u.seq] for u in updates]])

    shared = dataclasses.replace(
        shared, metrics=_ForwardedMetrics(clock, samples),
        queue_gauge=_ForwardedGauge(channel), backlog=_ForwardedBacklog(channel),
        deliver=deliver, settled=settled)
    shared.widening.set(*boot.widening)
    local = ActorHandle(boot.name)
    handles: dict[str, ActorHandle] = {
        p: RemoteHandle(p, channel, relayed=p in boot.hosted) for p in boot.peers}
    handles[boot.name] = local

    sent_guards: list[Any] = [{}]

    def flush_samples() -> None:
        values, counters = samples.take()
        if values or counters:
            channel.send(["m", values, counters])
        if boot.plugins is not None:  # the plugins this actor calls count here
            guards = shared.plugins.statistics()["guards"]
            if guards != sent_guards[0]:
                sent_guards[0] = guards
                channel.send(["pg", guards])

    def report(failure: FailureReport) -> None:
        flush_samples()
        try:
            body = pickled(failure)
        except Exception:
            body = pickled(dataclasses.replace(failure, handover=None))
        channel.send(["f", body])
        channel.close()
        os._exit(EXIT_CRASHED)

    context = ActorContext(clock=clock, handles=handles, report_failure=report,
                           generation=boot.generation, fault_injection=boot.fault_injection,
                           shared=shared)
    ref = boot.actor_class.start(boot.settings, context, takeover=boot.takeover)
    local.install(ref)
    done = threading.Event()

    def flusher() -> None:
        while not done.wait(METRICS_FLUSH_S):
            flush_samples()

    threading.Thread(target=flusher, daemon=True, name="modcoord-metrics-flush").start()
    channel.send(["ready", os.getpid()])


    def handle(frame: list[Any]) -> None:
        kind = frame[0]
        if kind == "t":
            local.tell(decode_tell(frame[1], frame[2]))
        elif kind == "w":
            shared.widening.set(frame[1], frame[2])
        elif kind == "pl":
            shared.apply_plugins(unpickled(frame[1]))
        elif kind == "h":
            shared.widening.set(frame[2], frame[3])
            channel.send(["h", frame[1]])
        elif kind == "a":
            call_id = frame[1]
            message: Message = unpickled(frame[2])
            try:
                reply = cast("pykka.Future[Any]", _Reply(call_id, channel))
                local._put(envelope(message, reply_to=reply))
            except ActorStoppedError as exc:
                channel.send(["r", call_id, False, encode_error(exc)])
        elif kind == "stop":
            try:
                ref.stop(block=True, timeout=frame[1])
            except pykka.Timeout:
                logger.bind(actor=boot.name).error("actor did not stop in time")
            done.set()
            flush_samples()
            channel.send(["stopped"])
            channel.close()
            os._exit(0)

    try:
        channel.read_forever(handle)
    finally:
        # The daemon closed the pipe (a handover, or it is gone): nothing to tell anyone.
        done.set()
        sys.stdout.flush()
        os._exit(0)
