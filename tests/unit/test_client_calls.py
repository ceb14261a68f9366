"""The client's methods derive from the protocol's call table, and the client is light.

No daemon: the table ↔ client correspondence and the typed signatures; the import tests run
a fresh interpreter; a client against a fake daemon that names another protocol version (the
real daemon: ``integration/test_client_calls_daemon.py``).
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import msgpack
import msgspec
import pytest

from modcoord.supervisor import (
    CoordinationResult,
    ModcoordError,
    ProtocolVersionError,
    connect,
)
from modcoord.supervisor.client import api
from modcoord.supervisor.client.api import (
    CUSTOM_CALLS,
    GENERATED_CALLS,
    SESSION_CALLS,
    ActorProxy,
    Client,
)
from modcoord.supervisor.protocol.calls import ACTOR_CALLS, ACTOR_NAMES, CALLS, PROTOCOL_VERSION
from modcoord.supervisor.protocol.framing import HEADER
from modcoord.supervisor.protocol.paths import socket_path

# What a Client offers beside the calls (lifecycle, state, the generic request).
_NOT_CALLS = {"start", "close", "wait_connected", "statistics", "request", "connected",
              "closed", "daemon_info", *ACTOR_NAMES}

HEAVY = ("pykka", "pydantic", "loguru", "yaml")


# -- the call table and the client's methods ----------------------------------------------


def test_every_table_call_has_a_client_method_and_vice_versa() -> None:
    methods = {n for n in dir(Client) if not n.startswith("_")} - _NOT_CALLS
    assert methods == set(CALLS) - SESSION_CALLS
    assert set(GENERATED_CALLS) == set(CALLS) - SESSION_CALLS - CUSTOM_CALLS
    assert set(CALLS) >= SESSION_CALLS | CUSTOM_CALLS


def test_generated_methods_take_the_tables_parameters_and_defaults() -> None:
    for name in GENERATED_CALLS:
        fields = msgspec.structs.fields(CALLS[name].params)
        params = list(inspect.signature(getattr(Client, name)).parameters.values())[1:]
        assert [p.name for p in params] == [f.name for f in fields], name
        for p, f in zip(params, fields, strict=True):
            expected = inspect.Parameter.empty if f.required else f.default
            assert p.default == expected, (name, p.name)
        assert CALLS[name].doc in (getattr(Client, name).__doc__ or "")


def _typed_stubs() -> dict[str, ast.FunctionDef]:
    """The ``if TYPE_CHECKING:`` signatures in :class:`Client`'s body."""
    tree = ast.parse(Path(inspect.getfile(api)).read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Client"]
    stubs: dict[str, ast.FunctionDef] = {}
    for node in cls.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            stubs.update({f.name: f for f in node.body if isinstance(f, ast.FunctionDef)})
    return stubs


def test_the_typed_signatures_match_the_table() -> None:
    stubs = _typed_stubs()
    assert set(stubs) == set(GENERATED_CALLS)
    for name, stub in stubs.items():
        fields = msgspec.structs.fields(CALLS[name].params)
        assert [a.arg for a in stub.args.args[1:]] == [f.name for f in fields], name
        defaults = [ast.literal_eval(d) for d in stub.args.defaults]
        assert defaults == [f.default for f in fields if not f.required], name


class _Recorder:
    """Stands in for the connection: records what a method sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, Any]] = []

    def __call__(self, method: str, params: Any = None, convert: Any = None) -> Any:
        self.sent.append((method, params, convert))
        return None


def test_a_generated_method_sends_every_field_positionally_or_by_name(tmp_path: Path) -> None:
    client = Client(tmp_path / "none.sock")
    recorder = _Recorder()
    client._request = recorder
    client.publish("m", "k", {"x": 1})
    client.publish("m", "k", 2, priority="high")
    client.coordinate("HYBRID")
    client.crash("cache")
    client.status()
    assert recorder.sent[0] == ("publish", {"module_id": "m", "key": "k", "payload": {"x": 1},
                                            "priority": "medium"}, None)
    assert recorder.sent[1][1]["priority"] == "high"
    method, params, convert = recorder.sent[2]
    assert (method, params) == ("coordinate", {"mode": "HYBRID", "context": None})
    assert convert is not None
    converted = convert({"mode": "HYBRID", "strategy": "balanced", "results": {"m": 1},
                         "errors": {}, "cached": True, "latency_ms": 0.5})
    assert converted == CoordinationResult("HYBRID", "balanced", {"m": 1}, {}, True, 0.5)
    assert recorder.sent[3][:2] == ("crash", {"actor": "cache", "kind": "exception",
                                             "kill": False})
    assert recorder.sent[4][:2] == ("status", {})
    with pytest.raises(TypeError):
        client.publish("m")  # type: ignore[call-arg]


def test_actor_proxies_are_the_tables_actors_and_list_their_methods(tmp_path: Path) -> None:
    client = Client(tmp_path / "none.sock")
    for actor in ACTOR_NAMES:
        proxy = getattr(client, actor)
        assert isinstance(proxy, ActorProxy)
        assert dir(proxy) == sorted(ACTOR_CALLS[actor])


# -- a light client ---------------------------------------------------------------------


@pytest.mark.parametrize("statement", [
    "from modcoord.supervisor import connect",
    "import modcoord.actors.errors",
    "from modcoord.supervisor import ModcoordError, ProtocolVersionError, NotRunningError",
])
def test_the_client_imports_nothing_heavy(statement: str) -> None:
    probe = (f"{statement}\nimport json, sys\n"
             "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=30, check=True)
    loaded = set(json.loads(proc.stdout))
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_the_package_does_not_import_the_daemon_or_the_supervisor_actor() -> None:
    probe = ("import modcoord.supervisor, json, sys\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.startswith('modcoord'))))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=30, check=True)
    loaded = json.loads(proc.stdout)
    assert not [m for m in loaded if m.startswith("modcoord.supervisor.daemon")
                or m == "modcoord.supervisor.supervisor"], loaded


# -- the protocol version in hello --------------------------------------------------------


class _OldDaemon:
    """A fake daemon that answers hello with ``version`` (and does not check the client's)."""

    def __init__(self, path: Path, version: int, *, strict: bool = False) -> None:
        self.version = version
        self.strict = strict  # refuses unknown hello fields, as daemons before versioning
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen()
        self.hellos: list[Any] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            unpacker = msgpack.Unpacker(raw=False)
            data = conn.recv(1 << 16)
            unpacker.feed(data[HEADER.size:])
            msg = unpacker.unpack()
            self.hellos.append(msg)
            if self.strict:
                body = msgpack.packb([1, msg[1], ["InvalidMessageError",
                                                  "hello: unknown field(s) 'protocol'"], None])
            else:
                body = msgpack.packb([1, msg[1], None, {
                    "pid": os.getpid(), "mode": "HYBRID", "max_frame_bytes": 1 << 20,
                    "version": self.version}])
            conn.sendall(HEADER.pack(len(body)) + body)
            conn.recv(1 << 16)  # until the client hangs up

    def close(self) -> None:
        self.listener.close()
        self.thread.join(5)


def test_a_daemon_naming_another_version_fails_connect_naming_both(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    daemon = _OldDaemon(socket_path(run), PROTOCOL_VERSION + 1)
    try:
        with pytest.raises(ProtocolVersionError) as info:
            connect(run, timeout=5, reconnect=False)
    finally:
        daemon.close()
    message = str(info.value)
    assert isinstance(info.value, ModcoordError)
    assert f"protocol version {PROTOCOL_VERSION}" in message
    assert f"version {PROTOCOL_VERSION + 1}" in message
    (hello,) = daemon.hellos
    assert hello[2] == "hello" and hello[3]["protocol"] == PROTOCOL_VERSION


def test_a_daemon_predating_versioning_fails_connect_with_a_version_error(
        tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    daemon = _OldDaemon(socket_path(run), PROTOCOL_VERSION, strict=True)
    try:
        with pytest.raises(ProtocolVersionError, match="predates protocol versioning") as info:
            connect(run, timeout=5, reconnect=False)
    finally:
        daemon.close()
    assert f"protocol version {PROTOCOL_VERSION}" in str(info.value)
    assert "restart the daemon" in str(info.value)
