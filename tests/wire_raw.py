"""Helpers for tests that speak the wire by hand and check that honest clients still work.

``RawConnection`` is a raw Unix socket to a real daemon: it sends bytes as given (valid
frames or not) and reads the daemon's frames back, every read bounded by a deadline.
``HonestClients`` are two ordinary clients of the client library in the test process, each
on its own connection: a publisher and a subscriber module; :meth:`HonestClients.check`
proves the daemon still serves them (``status`` answers with the daemon's pid and a fresh
publish reaches the subscriber). :func:`run_hello_client` runs a client process that
announces a given protocol version in ``hello``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
from server_harness import Publisher

from modcoord.supervisor.daemon.config import MODES

__all__ = ["HELLO_CLIENT", "Collector", "HonestClients", "RawConnection", "frame",
           "run_hello_client"]

_HEADER = struct.Struct(">I")


def frame(obj: Any) -> bytes:
    """One wire frame (4-byte big-endian length + msgpack body) holding ``obj``."""
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return _HEADER.pack(len(body)) + body


class RawConnection:
    """A raw socket to the daemon. Reads are bounded: ``TimeoutError`` past the deadline,
    ``EOFError`` once the daemon closed the connection."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buf = bytearray()
        self.timeout = timeout
        self.other: list[Any] = []  # messages read while waiting for a given response

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        """Say "no more bytes" (the daemon sees the end of the stream)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def read(self, timeout: float | None = None) -> Any:
        """The next message from the daemon (decoded)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if len(self.buf) >= 4:
                (n,) = _HEADER.unpack_from(self.buf)
                if len(self.buf) >= 4 + n:
                    body = bytes(self.buf[4:4 + n])
                    del self.buf[:4 + n]
                    return msgpack.unpackb(body, raw=False, strict_map_key=False)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete frame from the daemon within the deadline "
                                   f"({len(self.buf)} bytes buffered)")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:  # the socket's timeout: look at the deadline again
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                if self.buf:
                    raise AssertionError(f"the daemon closed the connection in the middle "
                                         f"of a frame ({len(self.buf)} bytes)")
                raise EOFError
            self.buf += chunk

    def read_until_closed(self, timeout: float | None = None) -> list[Any]:
        """Every message until the daemon closes the connection (bounded)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        got: list[Any] = []
        while True:
            try:
                got.append(self.read(max(0.0, deadline - time.monotonic())))
            except EOFError:
                return got
            except TimeoutError as exc:
                raise AssertionError(f"the daemon did not close the connection in time; "
                                     f"got {got!r:.500}") from exc

    def call(self, rid: int, method: Any, params: Any, timeout: float | None = None
             ) -> tuple[Any, Any]:
        """Send one request and wait for the response with its id; other messages read
        meanwhile (callback requests, events) are appended to ``self.other``."""
        self.send(frame([0, rid, method, params]))
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            msg = self.read(max(0.0, deadline - time.monotonic()))
            if type(msg) is list and len(msg) == 4 and msg[0] == 1 and msg[1] == rid:
                return msg[2], msg[3]
            self.other.append(msg)

    def close(self) -> None:
        self.sock.close()


class Collector:
    """A subscriber module (``on_batch`` records every update); thread-safe waits."""

    def __init__(self, module_id: str, subscribe: list[str]) -> None:
        self.module_id = module_id
        self.name = f"collector {module_id}"
        self.supported_modes = set(MODES)
        self.subscribe = list(subscribe)
        self.updates: list[Any] = []
        self._cond = threading.Condition()

    def on_mode_change(self, mode: str, strategy: str, context: dict[str, Any]) -> Any:
        return "ok"

    def on_batch(self, batch: Any) -> None:
        with self._cond:
            self.updates.extend(batch.updates)
            self._cond.notify_all()

    def wait(self, condition: Callable[[list[Any]], Any], timeout: float, message: str
             ) -> Any:
        """Wait (bounded) until ``condition(updates)`` is truthy."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = condition(self.updates)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout} s waiting for {message}; "
                                         f"{len(self.updates)} updates received")
                self._cond.wait(min(left, 0.5))

    def by_key(self, module_id: str) -> dict[str, Any]:
        with self._cond:
            return {u.key: u for u in self.updates if u.module_id == module_id}


class HonestClients:
    """An honest publisher and subscriber, each a client-library connection of its own.

    The subscriber (``honest-sub``) receives ``honest-pub``'s updates and those of the
    ``extra_sources``. It also publishes a heartbeat at every check, so that it counts as
    active whatever the memory manager thinks of modules that only listen: the fuzz test
    is about the wire, not about sweeping (the soak test has pure listeners).
    """

    def __init__(self, runtime_dir: Path, daemon_pid: int,
                 extra_sources: tuple[str, ...] = ()) -> None:
        from modcoord.supervisor import connect

        self.daemon_pid = daemon_pid
        self.sub = Collector("honest-sub", ["honest-pub", *extra_sources])
        self.sub_client = connect(runtime_dir=runtime_dir, timeout=10, name="honest-sub")
        self.pub_client = connect(runtime_dir=runtime_dir, timeout=10, name="honest-pub")
        self.sub_client.register(self.sub).get(10)
        self.pub_client.register(Publisher("honest-pub", "publisher honest-pub", MODES)).get(10)
        self._n = itertools.count()
        self.checks = 0

    def check(self, step: str, timeout: float = 15.0) -> None:
        """Assert the daemon still serves honest clients: ``status`` names the daemon's
        pid and a fresh (critical) publish is delivered to the subscriber."""
        status = self.pub_client.status().get(timeout)
        assert status["pid"] == self.daemon_pid, (step, status.get("pid"))
        key = f"alive-{next(self._n)}"
        seq = self.pub_client.publish("honest-pub", key, {"step": step},
                                      priority="critical").get(timeout)
        self.sub_client.publish("honest-sub", "heartbeat", step).get(timeout)
        self.sub.wait(lambda ups: any(u.seq == seq for u in ups), timeout,
                      f"the honest update {key} (seq {seq}) after {step}")
        stats = [self.pub_client.statistics(), self.sub_client.statistics()]
        assert all(s.connection_losses == 0 for s in stats), (step, stats)
        self.checks += 1

    def close(self) -> None:
        for c in (self.pub_client, self.sub_client):
            c.close()


# A client process: it says hello with the protocol version given, then asks for the
# status; it prints what came back as JSON (the errors rebuilt as a client does).
HELLO_CLIENT = textwrap.dedent("""
    import json, socket, sys
    from modcoord.supervisor.protocol.errors import error_from_wire
    from modcoord.supervisor.protocol.framing import FrameDecoder, encode_frame

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(sys.argv[1])
    sock.sendall(encode_frame([0, 1, "hello", {"client": "old", "protocol": int(sys.argv[2])}])
                 + encode_frame([0, 2, "status", {}]))
    decoder, got = FrameDecoder(1 << 30), {}
    while len(got) < 2:
        data = sock.recv(1 << 16)
        if not data:
            break
        for msg in decoder.feed(data):
            if msg[0] == 1:
                got[msg[1]] = msg
    out = {}
    for rid, (_, _, error, result) in got.items():
        if error is None:
            out[rid] = {"ok": result if rid == 1 else sorted(result)[:3]}
        else:
            exc = error_from_wire(error)
            out[rid] = {"error": type(exc).__name__, "message": str(exc)}
    print(json.dumps(out))
""")


def run_hello_client(path: Path, version: int) -> dict[str, Any]:
    """Run a client process that says ``hello`` announcing protocol ``version`` to the socket
    ``path``, then asks for the status; what came back by request id (``{"ok": result}``, or
    ``{"error": type name, "message": text}``, the errors rebuilt as a client does)."""
    proc = subprocess.run([sys.executable, "-c", HELLO_CLIENT, str(path), str(version)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    answers: dict[str, Any] = json.loads(proc.stdout)
    return answers
