"""Module agents: ``multiprocessing`` (spawn) processes that hold real modcoord clients and
modules and run the bench's tasks, one at a time, sent over a pipe."""

from __future__ import annotations

import contextlib
import math
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .baselines import task_manager_loop, task_raw_echo_loop, task_raw_echo_pipelined
from .common import MODES, PUBLISH_PAYLOAD, BenchError

# -- module objects living in agent processes --------------------------------------------------


class Sink:
    """Counts what a subscriber module receives (written by the client's callback thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.reset(math.inf)

    def reset(self, expected: float, track_keys: bool = False) -> None:
        """Start a new count; ``done`` is set once ``expected`` updates have arrived."""
        with self.lock:
            self.expected = expected
            self.count = 0
            self.batches = 0
            self.first: float | None = None
            self.last: float | None = None
            self.arrivals: dict[str, float] | None = {} if track_keys else None
            self.done.clear()

    def on_batch(self, batch: Any) -> None:
        now = time.monotonic()
        with self.lock:
            self.count += len(batch.updates)
            self.batches += 1
            if self.first is None:
                self.first = now
            self.last = now
            if self.arrivals is not None:
                for u in batch.updates:
                    self.arrivals.setdefault(u.key, now)
            if self.count >= self.expected:
                self.done.set()


class BenchModule:
    """A module of the shape the client registers (``ModeAwareModule``), for the agents.

    Args:
        module_id: its id.
        modes: the modes whose coordination it takes part in.
        subscribe: the sources it receives updates from.
        sink: where ``on_batch`` counts (None: batches are ignored).
        result_size: length of the string ``on_mode_change`` returns (at least its id).
    """

    def __init__(self, module_id: str, modes: list[str], subscribe: list[str],
                 sink: Sink | None = None, result_size: int = 0) -> None:
        self.module_id = module_id
        self.name = f"bench {module_id}"
        self.supported_modes = set(modes)
        self.subscribe = list(subscribe)
        self._sink = sink
        self._result = (module_id + ":" + "r" * result_size)[: max(result_size, len(module_id))]

    def on_mode_change(self, mode: str, strategy: str, context: dict[str, Any]) -> str:
        return self._result

    def on_batch(self, batch: Any) -> None:
        if self._sink is not None:
            self._sink.on_batch(batch)


# -- agents: module processes that run tasks -------------------------------------------------


@dataclass
class AgentState:
    """What an agent process keeps between tasks."""

    index: int
    clients: dict[str, Any] = field(default_factory=dict)
    extra_clients: dict[str, list[Any]] = field(default_factory=dict)
    modules: dict[str, list[BenchModule]] = field(default_factory=dict)
    sink: Sink = field(default_factory=Sink)
    managers: dict[str, Any] = field(default_factory=dict)

    def client(self, runtime: str) -> Any:
        """The agent's connection to the daemon of ``runtime`` (made on first use)."""
        client = self.clients.get(runtime)
        if client is None:
            from modcoord.supervisor.client import connect

            client = connect(runtime_dir=runtime, timeout=30.0,
                             name=f"bench-agent-{self.index}", reconnect=False)
            self.clients[runtime] = client
        return client


def task_register(state: AgentState, runtime: str, module_ids: list[str],
                  modes: list[str] | None = None, subscribe: list[str] | None = None,
                  result_size: int = 0, hybrid_first: int | None = None) -> int:
    """Register modules (pipelined) on the agent's connection; returns how many.

    ``hybrid_first``: only the first that many take part in HYBRID coordinations (the
    rest support MANUAL only).
    """
    client = state.client(runtime)
    futures = []
    for i, module_id in enumerate(module_ids):
        module_modes = modes or MODES
        if hybrid_first is not None and i >= hybrid_first:
            module_modes = ["MANUAL"]
        module = BenchModule(module_id, module_modes, subscribe or [], state.sink, result_size)
        state.modules.setdefault(runtime, []).append(module)
        futures.append(client.register(module))
    for f in futures:
        f.get(timeout=60)
    return len(futures)


def task_register_many(state: AgentState, work: list[tuple[str, list[str]]]) -> int:
    """Register each ``(runtime, module_ids)`` of ``work``, every module on a new
    connection of its own to its daemon (closed by ``release``); returns how many."""
    from modcoord.supervisor.client import connect

    futures = []
    for runtime, module_ids in work:
        extra = state.extra_clients.setdefault(runtime, [])
        for module_id in module_ids:
            client = connect(runtime_dir=runtime, timeout=30.0, reconnect=False,
                             name=f"bench-agent-{state.index}-{len(extra)}")
            extra.append(client)
            module = BenchModule(module_id, MODES, [], state.sink)
            state.modules.setdefault(runtime, []).append(module)
            futures.append(client.register(module))
    for f in futures:
        f.get(timeout=60)
    return len(futures)


def task_release(state: AgentState, runtime: str) -> None:
    """Close the connections to ``runtime`` (the daemon unregisters their modules)."""
    client = state.clients.pop(runtime, None)
    state.modules.pop(runtime, None)
    for extra in state.extra_clients.pop(runtime, []):
        extra.close()
    if client is not None:
        client.close()


def task_coordinate_loop(state: AgentState, runtime: str, n: int, context: dict[str, Any],
                         warmup: int = 50) -> dict[str, Any]:
    """Time ``n`` blocking coordinate calls with one context; keep cached answers only."""
    client = state.client(runtime)
    for _ in range(warmup):
        client.coordinate("HYBRID", context).get(timeout=30)
    samples: list[float] = []
    misses = 0
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        result = client.coordinate("HYBRID", context).get(timeout=30)
        elapsed = clock() - t0
        if result.cached:
            samples.append(elapsed)
        else:
            misses += 1
    return {"samples": samples, "misses": misses}


def task_coordinate_uncached(state: AgentState, runtime: str, n: int, tag: str) -> dict[str, Any]:
    """Time ``n`` coordinate calls, each with a fresh context (a cache miss)."""
    client = state.client(runtime)
    samples: list[float] = []
    errors = 0
    clock = time.perf_counter
    for i in range(n):
        t0 = clock()
        result = client.coordinate("HYBRID", {"bench": tag, "i": i}).get(timeout=30)
        elapsed = clock() - t0
        if result.cached:
            raise BenchError("a fresh context was answered from the cache")
        errors += len(result.errors)
        samples.append(elapsed)
    return {"samples": samples, "errors": errors}


def task_fill_cache(state: AgentState, runtime: str, n: int, pad: int) -> int:
    """Send ``n`` coordinations with distinct, ``pad``-byte contexts at once; wait for all."""
    client = state.client(runtime)
    filler = "p" * pad
    futures = [client.coordinate("HYBRID", {"bench": "fill", "i": i, "pad": filler})
               for i in range(n)]
    errors = 0
    for f in futures:
        errors += len(f.get(timeout=120).errors)
    return errors


def task_publish_pipelined(state: AgentState, runtime: str, module_id: str, n: int,
                           prefix: str, priority: str = "medium", keys: int | None = None
                           ) -> dict[str, Any]:
    """Publish ``n`` updates back to back, then await every future.

    Keys are ``prefix0``, ``prefix1``...: all distinct, or cycling over ``keys`` of them.
    """
    client = state.client(runtime)
    publish = client.publish
    payload = dict(PUBLISH_PAYLOAD)
    start_mono = time.monotonic()
    t0 = time.perf_counter()
    cycle = keys or n
    futures = [publish(module_id, f"{prefix}{i % cycle}", payload, priority)
               for i in range(n)]
    sent = time.perf_counter() - t0
    errors: dict[str, int] = {}
    for f in futures:
        exc = f.exception(timeout=120)
        if exc is not None:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
    elapsed = time.perf_counter() - t0
    return {"rate": n / elapsed, "elapsed": elapsed, "send_elapsed": sent,
            "start": start_mono, "errors": errors}


def task_publish_for(state: AgentState, runtime: str, module_id: str, duration: float,
                     prefix: str, interval: float | None = None, window: int = 2000
                     ) -> dict[str, Any]:
    """Publish on fresh keys for ``duration`` seconds: every ``interval`` seconds, or as
    fast as possible (at most ``window`` unanswered) when ``interval`` is None."""
    client = state.client(runtime)
    payload = dict(PUBLISH_PAYLOAD)
    futures: list[Any] = []
    errors = 0
    sent = 0
    end = time.monotonic() + duration
    next_at = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if interval is not None:
            if now < next_at:
                time.sleep(next_at - now)
            next_at += interval
        futures.append(client.publish(module_id, f"{prefix}{sent}", payload))
        sent += 1
        if len(futures) >= window:
            for f in futures[: window // 2]:
                errors += f.exception(timeout=60) is not None
            del futures[: window // 2]
    for f in futures:
        errors += f.exception(timeout=60) is not None
    return {"sent": sent, "errors": errors}


def task_sink_arm(state: AgentState, expected: int, track_keys: bool = False) -> None:
    """Reset the agent's sink to wait for ``expected`` updates."""
    state.sink.reset(expected, track_keys)


def task_sink_wait(state: AgentState, wait_s: float) -> dict[str, Any]:
    """Wait until the sink has its expected updates; returns counts and arrival times."""
    state.sink.done.wait(wait_s)
    sink = state.sink
    with sink.lock:
        return {"count": sink.count, "batches": sink.batches, "first": sink.first,
                "last": sink.last, "complete": sink.done.is_set()}


def task_flush_and_wait(state: AgentState, runtime: str, expected: int, wait_s: float
                        ) -> dict[str, Any]:
    """Flush the debouncer and time until the sink has ``expected`` updates."""
    client = state.client(runtime)
    state.sink.reset(expected)
    cpu0 = time.process_time()  # this process: the subscriber's reading and callbacks
    t0 = time.monotonic()
    flushed = client.debouncer.flush().get(timeout=60)
    if not state.sink.done.wait(wait_s):
        raise BenchError(f"flush: {state.sink.count} of {expected} updates arrived "
                         f"within {wait_s} s")
    cpu = time.process_time() - cpu0
    sink = state.sink
    assert sink.last is not None
    return {"flushed": flushed, "elapsed": sink.last - t0, "batches": sink.batches,
            "subscriber_cpu_s": cpu}


def task_priority_latency(state: AgentState, runtime: str, source: str, n: int, gap: float,
                          prefix: str) -> dict[str, list[float]]:
    """Publish, alternately, medium and critical updates on fresh keys every ``gap`` s and
    time each one's arrival at a subscriber module of this process."""
    client = state.client(runtime)
    state.sink.reset(2 * n, track_keys=True)
    sent: dict[str, tuple[str, float]] = {}
    futures = []
    payload = dict(PUBLISH_PAYLOAD)
    next_at = time.monotonic()
    for i in range(n):
        for priority in ("medium", "critical"):
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
            next_at += gap
            key = f"{prefix}-{priority}-{i}"
            sent[key] = (priority, time.monotonic())
            futures.append(client.publish(source, key, payload, priority))
    for f in futures:
        f.get(timeout=30)
    if not state.sink.done.wait(30):
        raise BenchError(f"priority latency: {state.sink.count} of {2 * n} updates arrived")
    with state.sink.lock:
        arrivals = dict(state.sink.arrivals or {})
    out: dict[str, list[float]] = {"critical": [], "medium": []}
    for key, (priority, at) in sent.items():
        out[priority].append(arrivals[key] - at)
    return out


def task_client_statistics(state: AgentState, runtime: str) -> dict[str, Any]:
    """The agent's client counters for ``runtime`` (``ClientStatistics`` as a dict)."""
    stats = state.client(runtime).statistics()
    return {name: getattr(stats, name) for name in stats.__dataclass_fields__}


TASKS: dict[str, Callable[..., Any]] = {
    "register": task_register,
    "register_many": task_register_many,
    "client_statistics": task_client_statistics,
    "release": task_release,
    "coordinate_loop": task_coordinate_loop,
    "coordinate_uncached": task_coordinate_uncached,
    "fill_cache": task_fill_cache,
    "manager_loop": task_manager_loop,
    "raw_echo_loop": task_raw_echo_loop,
    "raw_echo_pipelined": task_raw_echo_pipelined,
    "publish_pipelined": task_publish_pipelined,
    "publish_for": task_publish_for,
    "sink_arm": task_sink_arm,
    "sink_wait": task_sink_wait,
    "flush_and_wait": task_flush_and_wait,
    "priority_latency": task_priority_latency,
}


def agent_main(conn: Connection, index: int) -> None:
    """An agent process: run ``(task, kwargs)`` requests until ``None`` or EOF."""
    import logging

    logging.disable(logging.WARNING)
    from loguru import logger

    logger.remove()  # the client logs warnings to stderr; the bench reports failures itself
    state = AgentState(index)
    try:
        while True:
            try:
                request = conn.recv()
            except EOFError:
                return
            if request is None:
                return
            name, kwargs = request
            try:
                result = TASKS[name](state, **kwargs)
            except BaseException:
                conn.send(("error", traceback.format_exc()))
            else:
                conn.send(("ok", result))
    finally:
        for client in [*state.clients.values(), *(c for cs in state.extra_clients.values()
                                                    for c in cs)]:
            with contextlib.suppress(Exception):
                client.close()


class Agent:
    """The bench's handle on one agent process.

    Args:
        ctx: a multiprocessing (spawn) context.
        index: the agent's number (its client name is ``bench-agent-<index>``).
    """

    def __init__(self, ctx: Any, index: int) -> None:
        self.index = index
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=agent_main, args=(child, index), daemon=True,
                                name=f"bench-agent-{index}")
        self.proc.start()
        child.close()
        self._busy = False

    @property
    def busy(self) -> bool:
        """Whether a submitted task's result has not been collected yet."""
        return self._busy

    def submit(self, task: str, **kwargs: Any) -> None:
        """Start ``task`` in the agent; collect it with :meth:`result`.

        Raises:
            BenchError: the agent is already running a task or has died.
        """
        if self._busy:
            raise BenchError(f"agent {self.index} is busy")
        try:
            self._conn.send((task, kwargs))
        except OSError as exc:
            raise BenchError(f"agent {self.index} is gone: {exc}") from None
        self._busy = True

    def result(self, timeout: float = 120.0) -> Any:
        """Wait for the submitted task's result.

        Raises:
            BenchError: the task failed (with the agent's traceback), the agent died, or
                no result within ``timeout``.
        """
        if not self._busy:
            raise BenchError(f"agent {self.index}: no task submitted")
        if not self._conn.poll(timeout):
            raise BenchError(f"agent {self.index}: no result within {timeout} s")
        self._busy = False
        try:
            status, value = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise BenchError(f"agent {self.index} died: {exc!r}") from None
        if status != "ok":
            raise BenchError(f"agent {self.index} task failed:\n{value}")
        return value

    def call(self, task: str, timeout: float = 120.0, **kwargs: Any) -> Any:
        """Run ``task`` and return its result (see :meth:`result` for failures)."""
        self.submit(task, **kwargs)
        return self.result(timeout)

    def close(self) -> None:
        """Ask the agent to exit; kill it if it does not within 5 s."""
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self._conn.close()
