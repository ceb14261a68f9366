"""The in-process server harness: the real :class:`Server` on a real Unix socket in a
temporary runtime directory, in front of :class:`FakeCoordinator` (which records every call
and answers like the coordination core would, in shape), with a real client
(:func:`client`) or a bare socket speaking frames by hand (:class:`RawClient`).

Test modules import the fixtures they use (``runtime_dir``, ``fake``, ``server``,
``client``) from here. Every wait is bounded (``WAIT`` seconds).
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from modcoord.actors.errors import ActorCrashedError, InvalidMessageError, QueueFullError
from modcoord.actors.update import Batch, Update
from modcoord.supervisor.client import Client, connect
from modcoord.supervisor.daemon.server import Server
from modcoord.supervisor.protocol.calls import ActorParams, Params
from modcoord.supervisor.protocol.framing import FrameDecoder, encode_frame
from modcoord.supervisor.protocol.module import ModuleEndpoint, ModuleInfo
from modcoord.supervisor.protocol.paths import socket_path

__all__ = ["WAIT", "Editor", "FakeCoordinator", "Publisher", "RawClient", "client", "fake",
           "nested", "registered", "runtime_dir", "server"]

WAIT = 5.0


# -- the fake coordinator ----------------------------------------------------------------------


class FakeCoordinator:
    """Records every call; answers like the real façade would, in shape."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.endpoints: dict[str, ModuleEndpoint] = {}
        self.registrations: list[ModuleInfo] = []
        self.unregistrations: list[tuple[str, Any]] = []
        self.publish_calls: list[list[tuple[str, str, Any, str]]] = []
        self.coordinations: list[tuple[str, dict[str, Any], tuple[str, ...]]] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.held: list[Callable[[Any, BaseException | None], None]] = []
        self.full_modules: set[str] = set()
        self.cached: set[str] = set()
        self._seq = itertools.count(1)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    @property
    def published(self) -> list[tuple[str, str, Any, str]]:
        return [item for call in self.publish_calls for item in call]

    def register(self, info: ModuleInfo, endpoint: ModuleEndpoint) -> dict[str, Any]:
        with self.cond:
            current = self.endpoints.get(info.module_id)
            if current is not None and current is not endpoint:
                raise InvalidMessageError(f"module id {info.module_id!r} is already registered")
            self.endpoints[info.module_id] = endpoint
            self.registrations.append(info)
            self.cond.notify_all()
        if info.module_id == "eager":  # the batcher delivers before register returns
            endpoint.deliver("eager", Batch(1, (Update("src", "k", "early"),), "critical"))
        return {"module_id": info.module_id, "mode": "HYBRID", "strategy": "balanced"}

    def unregister(self, module_id: str, endpoint: ModuleEndpoint | None = None) -> bool:
        with self.cond:
            self.unregistrations.append((module_id, endpoint))
            removed = False
            if endpoint is None or self.endpoints.get(module_id) is endpoint:
                removed = self.endpoints.pop(module_id, None) is not None
            self.cond.notify_all()
        return removed

    def publish_many(self, items: Sequence[tuple[str, str, Any, str]]) -> list[Any]:
        out: list[Any] = []
        with self.cond:
            self.publish_calls.append(list(items))
            for module_id, _key, _payload, _priority in items:
                if module_id in self.full_modules:
                    out.append(QueueFullError("batch queue full (10000 updates)"))
                else:
                    out.append(next(self._seq))
            self.cond.notify_all()
        return out

    def coordinate(self, mode: str, context: dict[str, Any],
                   reply: Callable[[Any, BaseException | None], None],
                   caller: Sequence[str] = ()) -> None:
        with self.cond:
            self.coordinations.append((mode, context, tuple(caller)))
            self.cond.notify_all()
        if context.get("explode"):
            raise RuntimeError("coordinator bug")
        if context.get("hold"):
            with self.cond:
                self.held.append(reply)
                self.cond.notify_all()
            return
        if context.get("refuse"):
            reply(None, ActorCrashedError("cache", "failed on this key"))
            return
        key = f"{mode}:{sorted(context.items())}"
        cached = key in self.cached
        self.cached.add(key)
        result = {"mode": mode, "strategy": "balanced",
                  "results": {m: f"ok:{mode}" for m in caller}, "errors": {},
                  "cached": cached, "latency_ms": 0.25}
        if cached:
            reply(result, None)  # a hit: answered in the calling (I/O) thread
        else:
            threading.Thread(target=reply, args=(result, None)).start()

    def call(self, method: str, params: Params) -> Any:
        wire = params.to_wire()
        with self.cond:
            self.calls.append((method, wire))
            self.cond.notify_all()
        if method == "status":
            return {"pid": os.getpid(), "mode": "HYBRID", "modules": len(self.endpoints)}
        if method == "insights":
            return {"insights": [], "recommendations": []}
        if isinstance(params, ActorParams):
            if params.method == "trim":
                raise ZeroDivisionError("division by zero")
            return {"actor": params.actor, "method": params.method,
                    "args": params.keywords()}
        if method == "crash":
            raise InvalidMessageError("fault injection is disabled")
        return {"method": method, "params": wire}

    def status_brief(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "mode": "HYBRID"}


class Editor:
    """A module object as a module process would write it."""

    def __init__(self, module_id: str = "editor", subscribe: tuple[str, ...] = ("*",)) -> None:
        self.module_id = module_id
        self.name = module_id.title()
        self.supported_modes = {"MANUAL", "HYBRID", "FULLY_AUTO"}
        self.subscribe = list(subscribe)
        self.batches: list[Batch] = []
        self.batch_threads: list[str] = []
        self.got_batch = threading.Event()
        self.mode_changes: list[tuple[str, str, dict[str, Any], str]] = []

    def on_mode_change(self, mode: str, strategy: str, context: dict[str, Any]) -> Any:
        self.mode_changes.append((mode, strategy, context, threading.current_thread().name))
        if context.get("fail"):
            raise ValueError("cannot switch")
        return f"{self.module_id} in {mode}/{strategy}"

    def on_batch(self, batch: Batch) -> None:
        self.batches.append(batch)
        self.batch_threads.append(threading.current_thread().name)
        self.got_batch.set()

    def get_performance_metrics(self) -> dict[str, Any]:
        return {"coordination_latency": 50}


class Publisher:
    """A module that only publishes: subscribes to nothing; takes part in the ``modes`` given
    (none by default), answering a mode change with ``"ok"``; named ``name`` (its id by
    default)."""

    def __init__(self, module_id: str, name: str | None = None,
                 modes: Iterable[str] = ()) -> None:
        self.module_id = module_id
        self.name = name if name is not None else module_id
        self.supported_modes: set[str] = set(modes)
        self.subscribe: list[str] = []

    def on_mode_change(self, mode: str, strategy: str, context: dict[str, Any]) -> Any:
        return "ok"

    def on_batch(self, batch: Any) -> None:
        pass


def nested(depth: int) -> Any:
    """A payload ``depth`` lists deep."""
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


class RawClient:
    """A bare socket speaking frames by hand (for malformed input)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT)
        self.sock.connect(str(path))
        self.decoder = FrameDecoder(1 << 30)
        self.inbox: list[Any] = []

    def send(self, *msgs: Any) -> None:
        self.sock.sendall(b"".join(encode_frame(m) for m in msgs))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> Any:
        """The next message, or None at EOF (bounded by the socket timeout)."""
        while not self.inbox:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.inbox.extend(self.decoder.feed(data))
        return self.inbox.pop(0)

    def recv_response(self, rid: Any) -> Any:
        return self.recv_responses([rid])[rid]

    def recv_responses(self, rids: list[Any]) -> dict[Any, Any]:
        """Responses by id (in whatever order they come); other messages are dropped."""
        got: dict[Any, Any] = {}
        while len(got) < len(rids):
            msg = self.recv()
            assert msg is not None, f"EOF while waiting for responses {rids}, got {got}"
            if msg[0] == 1 and msg[1] in rids:
                got[msg[1]] = msg
        return got

    def at_eof(self) -> bool:
        """Read until EOF (true) or a timeout (false)."""
        try:
            while True:
                if self.recv() is None:
                    return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def runtime_dir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
def fake() -> FakeCoordinator:
    return FakeCoordinator()


@pytest.fixture
def server(fake: FakeCoordinator, runtime_dir: Path) -> Iterator[Server]:
    srv = Server(fake, socket_path(runtime_dir)).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: Server, runtime_dir: Path) -> Iterator[Client]:
    c = connect(runtime_dir, timeout=WAIT)
    yield c
    c.close()


def registered(fake: FakeCoordinator, module_id: str, count: int = 1) -> bool:
    return fake.wait_for(
        lambda: sum(i.module_id == module_id for i in fake.registrations) >= count)
