"""A real 3-node NATS cluster with JetStream on loopback, for the tests of the NATS engine.

:class:`NatsCluster` picks free ports, writes one config per node (JetStream on, a store
directory each, ``cluster { no_advertise: true }`` so that a client only ever uses the URLs
it was given — a test proxy in front of a node cannot be bypassed through a discovered
server), starts the ``nats-server`` processes and waits until the cluster is ready: every
node's ``/healthz`` answers 200 **and** a ``$JS.API.INFO`` request answers without an
error (a meta leader is elected). ``/healthz?js-enabled-only=true`` is too early for that,
and so is plain ``/healthz`` alone.

The binary is ``$MODCOORD_NATS_SERVER``, then ``nats-server`` on PATH, then
``/usr/sbin/nats-server`` (where Debian's package puts it, not on a normal user's PATH).
:func:`nats_server_or_skip` skips the test without one, or fails it when the run requires
it (``nats-server`` listed in ``$MODCOORD_REQUIRE_TOOLS``, as ``.ci/run`` sets).

Even after readiness the first stream creation can fail for about half a second on 2.9:
create streams through :func:`retry_async` (or an equivalent bounded retry).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from daemon_harness import wait_for

__all__ = [
    "NATS_READY_TIMEOUT_S",
    "NatsCluster",
    "await_bounded",
    "find_nats_server",
    "nats_server_or_skip",
    "retry_async",
    "run_bounded",
]

#: How long :meth:`NatsCluster.start` waits for readiness (it took 1.5 s at most here).
NATS_READY_TIMEOUT_S = 15.0
#: The Debian package's binary (not on a normal user's PATH).
DEBIAN_BINARY = "/usr/sbin/nats-server"
#: The tool's name in ``$MODCOORD_REQUIRE_TOOLS``.
TOOL = "nats-server"

T = TypeVar("T")

#: How long :func:`run_bounded` waits for a cancelled task to end.
CANCEL_WAIT_S = 5.0


def find_nats_server() -> str | None:
    """The nats-server binary: ``$MODCOORD_NATS_SERVER``, then PATH, then Debian's
    ``/usr/sbin/nats-server``; None when none of them is an executable."""
    for candidate in (os.environ.get("MODCOORD_NATS_SERVER"), shutil.which(TOOL),
                      DEBIAN_BINARY):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def nats_server_or_skip() -> str:
    """The nats-server binary; skips the test when there is none, or fails it when the run
    requires the tool (``nats-server`` in ``$MODCOORD_REQUIRE_TOOLS``)."""
    binary = find_nats_server()
    if binary is None:
        reason = (f"{TOOL} is not installed: run scripts/get-tools (Debian: apt-get install "
                  f"nats-server), or set $MODCOORD_NATS_SERVER to the binary")
        if TOOL in os.environ.get("MODCOORD_REQUIRE_TOOLS", "").split():
            pytest.fail(reason + f" ($MODCOORD_REQUIRE_TOOLS lists {TOOL})")
        pytest.skip(reason)
    return binary


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback TCP ports that were free a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


async def retry_async(make: Callable[[], Awaitable[T]], *, timeout_s: float = 10.0,
                      step_s: float = 0.1) -> T:
    """``await make()`` until it succeeds, every ``step_s``, for at most ``timeout_s``.

    Raises:
        Exception: the last attempt's error, once ``timeout_s`` has passed.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await make()
        except Exception:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(step_s)


def run_async(coro: Awaitable[T]) -> T:
    """Run ``coro`` to completion on a fresh event loop in its own thread (so it works
    whether or not the caller's thread already runs a loop)."""
    box: dict[str, Any] = {}

    def main() -> None:
        async def wrap() -> T:
            return await coro

        try:
            box["value"] = asyncio.run(wrap())
        except BaseException as e:  # handed to the caller
            box["error"] = e

    t = threading.Thread(target=main, name="nats-cluster-probe", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def _task_stacks(loop: asyncio.AbstractEventLoop) -> str:
    """Where every task on ``loop`` is waiting, as ``Task.print_stack`` prints it."""
    out = io.StringIO()
    for task in asyncio.all_tasks(loop):
        print(f"--- {task.get_name()}: {task.get_coro()!r}", file=out)
        task.print_stack(limit=12, file=out)
    return out.getvalue()


def run_bounded(coro: Coroutine[Any, Any, T], timeout_s: float, what: str) -> T:
    """``asyncio.run(coro)``, bounded: a scenario that hangs fails with the stack of every
    task it left waiting, instead of hanging until pytest-timeout kills the test with only
    the threads' stacks (which show nothing but the loop in ``select``).

    At the end (done or not), every task still running is cancelled and waited for at most
    :data:`CANCEL_WAIT_S`; one that ignores its cancellation (a library's close stuck on a
    dead socket) is left behind with the closed loop rather than hanging the test.

    Raises:
        AssertionError: ``coro`` not done within ``timeout_s`` (the message holds the
            tasks' stacks).
        Exception: whatever ``coro`` raised.
    """
    loop = asyncio.new_event_loop()
    try:
        main = loop.create_task(coro, name=what)
        loop.run_until_complete(asyncio.wait({main}, timeout=timeout_s))
        if not main.done():
            stacks = _task_stacks(loop)
            main.cancel()
            loop.run_until_complete(asyncio.wait({main}, timeout=CANCEL_WAIT_S))
            raise AssertionError(f"{what}: not done within {timeout_s} s; its tasks "
                                 f"were waiting here:\n{stacks}")
        return main.result()
    finally:
        rest = asyncio.all_tasks(loop)
        for task in rest:
            task.cancel()
        if rest:
            loop.run_until_complete(asyncio.wait(rest, timeout=CANCEL_WAIT_S))
        loop.run_until_complete(asyncio.wait({loop.create_task(loop.shutdown_asyncgens())},
                                             timeout=CANCEL_WAIT_S))
        loop.close()


async def await_bounded(aw: Awaitable[T], timeout_s: float, what: str) -> T:
    """``await aw`` for at most ``timeout_s``, inside a running scenario: past the bound
    it fails with where every task on the loop was waiting (the cause of a stop that
    hangs), not with a bare ``TimeoutError``. ``aw`` is cancelled then.

    Raises:
        AssertionError: not done within ``timeout_s`` (the message holds the stacks).
        Exception: whatever ``aw`` raised.
    """
    task = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        stacks = _task_stacks(asyncio.get_running_loop())
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_WAIT_S)
        raise AssertionError(f"{what}: not done within {timeout_s} s; the tasks were "
                             f"waiting here:\n{stacks}")
    return task.result()


async def _quiet_error(e: Exception) -> None:
    """nats-py's ``error_cb``: without one it prints a traceback per refused connection."""


class NatsCluster:
    """``n`` clustered nats-server processes with JetStream on loopback (see the module
    docstring). Nodes are numbered 0..n-1; ``urls[i]`` is node ``i``'s client URL.

    Use :meth:`start` then :meth:`stop` (or the instance as a context manager).
    """

    def __init__(self, n: int = 3, *, binary: str | None = None,
                 root: Path | None = None, no_advertise: bool = True) -> None:
        if n < 1:
            raise ValueError(f"a cluster needs at least one node, not {n}")
        self.n = n
        self.binary = binary or nats_server_or_skip()
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="modcoord-nats-")) if root is None else root
        self.root.mkdir(parents=True, exist_ok=True)
        self.no_advertise = no_advertise
        ports = free_ports(3 * n)
        self.client_ports = ports[:n]
        self.route_ports = ports[n:2 * n]
        self.http_ports = ports[2 * n:]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    # -- addresses ---------------------------------------------------------------------
    def name(self, i: int) -> str:
        """Node ``i``'s ``server_name`` (as JetStream reports leaders: ``n0``, ``n1``...)."""
        return f"n{i}"

    def index(self, server_name: str) -> int:
        """The node number of ``server_name`` (e.g. a stream's ``cluster.leader``).

        Raises:
            ValueError: ``server_name`` is not one of this cluster's nodes.
        """
        for i in range(self.n):
            if self.name(i) == server_name:
                return i
        raise ValueError(f"{server_name!r} is not a node of this cluster")

    def url(self, i: int) -> str:
        return f"nats://127.0.0.1:{self.client_ports[i]}"

    @property
    def urls(self) -> list[str]:
        """Every node's client URL, node 0 first."""
        return [self.url(i) for i in range(self.n)]

    def store_dir(self, i: int) -> Path:
        return self.root / self.name(i)

    def log_path(self, i: int) -> Path:
        return self.root / f"{self.name(i)}.log"

    def config(self, i: int) -> str:
        """Node ``i``'s configuration file text."""
        routes = ", ".join(f"nats-route://127.0.0.1:{p}"
                           for j, p in enumerate(self.route_ports) if j != i)
        advertise = ", no_advertise: true" if self.no_advertise else ""
        return (f'server_name: {self.name(i)}\n'
                f'listen: 127.0.0.1:{self.client_ports[i]}\n'
                f'http: 127.0.0.1:{self.http_ports[i]}\n'
                f'jetstream {{ store_dir: "{self.store_dir(i)}", max_memory_store: 256MB, '
                f'max_file_store: 1GB }}\n'
                f'cluster {{ name: modcoord, listen: 127.0.0.1:{self.route_ports[i]}, '
                f'routes: [{routes}]{advertise} }}\n')

    # -- processes ---------------------------------------------------------------------
    def start_node(self, i: int) -> None:
        """Start node ``i`` (its config rewritten, its store directory kept)."""
        if i in self.procs:
            raise RuntimeError(f"node {i} is already running (pid {self.procs[i].pid})")
        path = self.root / f"{self.name(i)}.conf"
        path.write_text(self.config(i))
        with self.log_path(i).open("ab") as log:
            self.procs[i] = subprocess.Popen([self.binary, "-c", str(path)],
                                             stdout=log, stderr=log)

    def start(self, timeout_s: float = NATS_READY_TIMEOUT_S) -> NatsCluster:
        """Start every node and wait until the cluster is ready (:meth:`wait_ready`).

        Raises:
            TimeoutError: not ready within ``timeout_s`` (the nodes are stopped; the message
                ends with the tail of each node's log).
        """
        for i in range(self.n):
            self.start_node(i)
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def running(self) -> list[int]:
        """The nodes whose process is alive."""
        return sorted(i for i, p in self.procs.items() if p.poll() is None)

    def pid(self, i: int) -> int:
        return self.procs[i].pid

    def kill(self, i: int, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` (SIGKILL by default) to node ``i`` and reap it."""
        p = self.procs.pop(i)
        p.send_signal(sig)
        p.wait()

    def restart(self, i: int, timeout_s: float = NATS_READY_TIMEOUT_S) -> None:
        """Start node ``i`` again on its old store directory and wait until the cluster is
        ready again.

        Raises:
            TimeoutError: not ready within ``timeout_s``.
        """
        if i in self.procs:
            self.kill(i)
        self.start_node(i)
        self.wait_ready(timeout_s)

    def stop(self) -> None:
        """Terminate every node, wait for each, and remove the store directories (the
        whole root when this cluster made it)."""
        for i in list(self.procs):
            p = self.procs.pop(i)
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
        else:  # the caller's directory keeps the configs and logs; the stores go
            for i in range(self.n):
                shutil.rmtree(self.store_dir(i), ignore_errors=True)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- probes ------------------------------------------------------------------------
    def http_get(self, i: int, path: str, timeout_s: float = 1.0) -> tuple[int, str]:
        """Node ``i``'s monitoring endpoint ``path``: (status, body); (0, error name) when
        it does not answer."""
        url = f"http://127.0.0.1:{self.http_ports[i]}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError as e:
            return 0, type(e).__name__

    def healthy(self, nodes: Sequence[int] | None = None) -> bool:
        """Whether every node in ``nodes`` (default: the running ones) answers ``/healthz``
        with 200."""
        nodes = self.running() if nodes is None else nodes
        return all(self.http_get(i, "/healthz", 0.5)[0] == 200 for i in nodes)

    def jsz(self, i: int) -> dict[str, Any]:
        """Node ``i``'s ``/jsz`` (JetStream state, streams and consumers included).

        Raises:
            RuntimeError: the node does not answer 200.
        """
        status, body = self.http_get(i, "/jsz?streams=true&consumers=true")
        if status != 200:
            raise RuntimeError(f"node {i} /jsz answered {status}: {body[:200]}")
        result: dict[str, Any] = json.loads(body)
        return result

    def meta_leader(self) -> int | None:
        """The node leading JetStream's meta group, by any running node's ``/jsz``; None
        while there is none."""
        for i in self.running():
            try:
                leader = self.jsz(i).get("meta_cluster", {}).get("leader")
            except (RuntimeError, ValueError):
                continue
            if leader:
                return self.index(leader)
        return None

    def wait_ready(self, timeout_s: float = NATS_READY_TIMEOUT_S) -> float:
        """Wait until every running node's ``/healthz`` answers 200 and a ``$JS.API.INFO``
        request answers without an error; returns the seconds it took.

        Raises:
            TimeoutError: not ready within ``timeout_s``, with the tail of each node's log.
        """
        t0 = time.monotonic()
        deadline = t0 + timeout_s

        def healthy() -> bool:
            self._check_alive()
            return self.healthy()

        try:
            wait_for(healthy, timeout_s, message="/healthz answering 200 on every node")
        except AssertionError:
            raise TimeoutError(self._not_ready("/healthz never answered 200 on every node",
                                               timeout_s)) from None
        urls = [self.url(i) for i in self.running()]
        if not run_async(self._js_info_ready(urls, deadline)):
            raise TimeoutError(self._not_ready("$JS.API.INFO never answered without error",
                                               timeout_s))
        return time.monotonic() - t0

    async def _js_info_ready(self, urls: list[str], deadline: float) -> bool:
        import nats

        nc = await nats.connect(urls, connect_timeout=0.5, max_reconnect_attempts=-1,
                                reconnect_time_wait=0.05, error_cb=_quiet_error)
        try:
            while time.monotonic() < deadline:
                try:
                    msg = await nc.request("$JS.API.INFO", b"", timeout=0.5)
                    if "error" not in json.loads(msg.data):
                        return True
                except Exception:
                    pass
                await asyncio.sleep(0.05)
            return False
        finally:
            await nc.close()

    def _check_alive(self) -> None:
        dead = [i for i, p in self.procs.items() if p.poll() is not None]
        if dead:
            raise RuntimeError(self._not_ready(f"node(s) {dead} exited", 0))

    def _not_ready(self, what: str, timeout_s: float) -> str:
        tails = []
        for i in range(self.n):
            try:
                lines = self.log_path(i).read_text(errors="replace").splitlines()[-5:]
            except OSError:
                lines = ["(no log)"]
            tails.append(f"--- {self.name(i)} ---\n" + "\n".join(lines))
        limit = f" within {timeout_s:g} s (NATS_READY_TIMEOUT_S)" if timeout_s else ""
        return f"NATS cluster not ready{limit}: {what}\n" + "\n".join(tails)
