"""The same-run baselines: a ``multiprocessing.managers`` echo and a raw length-prefixed
msgpack echo over a Unix socket (the servers, run in their own processes, and the client
loops that agents run against them)."""

from __future__ import annotations

import os
import socket
import threading
import time
from multiprocessing.managers import BaseManager
from typing import TYPE_CHECKING, Any

from .common import AUTHKEY, COORD_CONTEXT, HEADER, PUBLISH_PAYLOAD, BenchError

if TYPE_CHECKING:
    from .agents import AgentState



# -- baseline servers ------------------------------------------------------------------------


class _Echo:
    """What the ``multiprocessing.managers`` baseline serves: a method that echoes."""

    def echo(self, value: Any) -> Any:
        return value


class EchoManager(BaseManager):
    """The ``multiprocessing.managers`` baseline (server and client side)."""


EchoManager.register("Echo", _Echo)


def _recv_exact(sock: socket.socket, n: int, buf: bytearray) -> bytes:
    """Read until ``buf`` holds ``n`` bytes, return them and keep the rest in ``buf``.

    Raises:
        ConnectionError: the peer closed the connection first.
    """
    while len(buf) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    data = bytes(buf[:n])
    del buf[:n]
    return data


def _echo_connection(sock: socket.socket) -> None:
    """Serve one echo connection: decode every frame of a read, re-encode, send at once."""
    import msgpack

    packer = msgpack.Packer(use_bin_type=True, autoreset=True)
    buf = bytearray()
    header = HEADER.size
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return
            buf += chunk
            out: list[bytes] = []
            pos = 0
            end = len(buf)
            while end - pos >= header:
                (length,) = HEADER.unpack_from(buf, pos)
                if end - pos - header < length:
                    break
                body = memoryview(buf)[pos + header: pos + header + length]
                obj = msgpack.unpackb(body, raw=False, strict_map_key=False)
                body.release()
                reply = packer.pack(obj)
                out.append(HEADER.pack(len(reply)))
                out.append(reply)
                pos += header + length
            del buf[:pos]
            if out:
                sock.sendall(b"".join(out))
    except OSError:
        return
    finally:
        sock.close()


def _exit_with_parent() -> None:
    """Exit this process as soon as its parent (the bench) is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def echo_server_main(path: str, ready: Any) -> None:
    """The raw baseline server: a Unix socket, a thread per connection, msgpack echo."""
    _exit_with_parent()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    ready.set()
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_echo_connection, args=(conn,), daemon=True).start()


def manager_server_main(path: str, ready: Any) -> None:
    """The ``multiprocessing.managers`` baseline server (serves until killed)."""
    _exit_with_parent()
    server = EchoManager(address=path, authkey=AUTHKEY).get_server()
    ready.set()
    server.serve_forever()


def task_manager_loop(state: AgentState, address: str, n: int, warmup: int = 50
                      ) -> list[float]:
    """Time ``n`` echo calls through a ``multiprocessing.managers`` proxy."""
    proxy = state.managers.get(address)
    if proxy is None:
        manager = EchoManager(address=address, authkey=AUTHKEY)
        manager.connect()
        proxy = state.managers[address] = manager.Echo()  # type: ignore[attr-defined]
    value = {"mode": "HYBRID", "context": COORD_CONTEXT}
    for _ in range(warmup):
        proxy.echo(value)
    samples = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        proxy.echo(value)
        samples.append(clock() - t0)
    return samples


def _coordinate_frame(rid: int) -> list[Any]:
    return [0, rid, "coordinate", {"mode": "HYBRID", "context": COORD_CONTEXT}]


def _publish_frame(rid: int) -> list[Any]:
    return [0, rid, "publish", {"module_id": "pub-0", "key": f"k{rid}",
                                "payload": PUBLISH_PAYLOAD, "priority": "medium"}]


def task_raw_echo_loop(state: AgentState, path: str, n: int, warmup: int = 50) -> list[float]:
    """Time ``n`` raw msgpack echoes over a Unix socket, one request at a time."""
    import msgpack

    packer = msgpack.Packer(use_bin_type=True, autoreset=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    buf = bytearray()
    samples = []
    clock = time.perf_counter
    try:
        for i in range(warmup + n):
            t0 = clock()
            body = packer.pack(_coordinate_frame(i))
            sock.sendall(HEADER.pack(len(body)) + body)
            (length,) = HEADER.unpack(_recv_exact(sock, HEADER.size, buf))
            msgpack.unpackb(_recv_exact(sock, length, buf), raw=False)
            if i >= warmup:
                samples.append(clock() - t0)
    finally:
        sock.close()
    return samples


def task_raw_echo_pipelined(state: AgentState, path: str, n: int) -> float:
    """Send ``n`` msgpack frames back to back (a reader thread decodes the echoes);
    returns messages per second."""
    import msgpack

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    done = threading.Event()
    received = [0]
    failure: list[BaseException] = []

    def reader() -> None:
        unpacker_buf = bytearray()
        header = HEADER.size
        try:
            while received[0] < n:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("echo server closed")
                unpacker_buf += chunk
                pos, end = 0, len(unpacker_buf)
                while end - pos >= header:
                    (length,) = HEADER.unpack_from(unpacker_buf, pos)
                    if end - pos - header < length:
                        break
                    body = memoryview(unpacker_buf)[pos + header: pos + header + length]
                    msgpack.unpackb(body, raw=False)
                    body.release()
                    pos += header + length
                    received[0] += 1
                del unpacker_buf[:pos]
        except BaseException as exc:
            failure.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    packer = msgpack.Packer(use_bin_type=True, autoreset=True)
    lock = threading.Lock()  # the modcoord client takes a lock per request too
    t0 = time.perf_counter()
    try:
        for i in range(n):
            with lock:
                body = packer.pack(_publish_frame(i))
                sock.sendall(HEADER.pack(len(body)) + body)
        if not done.wait(60):
            raise BenchError("raw pipelined echo: replies did not arrive within 60 s")
        elapsed = time.perf_counter() - t0
    finally:
        sock.close()
    if failure:
        raise BenchError(f"raw pipelined echo failed: {failure[0]!r}")
    return n / elapsed
