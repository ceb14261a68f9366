"""A pausable loopback TCP proxy, for network-partition tests without root.

Put one :class:`Proxy` in front of each NATS server's client port and point the instance
under test at the proxies only (the cluster must run with ``no_advertise: true``, as
:class:`nats_cluster.NatsCluster` does, or the client finds the servers' own ports and goes
around the proxy). The routes between the servers are untouched, so the rest of the cluster
keeps working.

* :meth:`Proxy.pause` stops forwarding in both directions but keeps the sockets open: a
  black hole, as a real partition looks (the client notices only by missing PONGs).
* :meth:`Proxy.cut` resets every proxied connection and refuses new ones.
* :meth:`Proxy.resume` heals either.

:class:`Proxy` is asyncio; :class:`ThreadedProxy` runs a set of them on a loop in a thread
of its own, with plain (blocking) methods, for synchronous tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from nats_cluster import free_ports

__all__ = ["Proxy", "ThreadedProxy"]

T = TypeVar("T")

#: Bytes read from one side at a time.
CHUNK = 65536


class Proxy:
    """Forwards ``127.0.0.1:listen_port`` to ``127.0.0.1:target_port`` (see the module
    docstring). Data read while paused is held and forwarded on :meth:`resume`, never lost;
    a :meth:`cut` drops it with the connections, as a reset would."""

    def __init__(self, listen_port: int, target_port: int, host: str = "127.0.0.1") -> None:
        self.listen_port, self.target_port, self.host = listen_port, target_port, host
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.refuse = False
        self.conns: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.listen_port}"

    async def start(self) -> Proxy:
        self.server = await asyncio.start_server(self._handle, self.host, self.listen_port)
        return self

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:  # :meth:`close` ends every handler before the loop closes
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        if self.refuse:
            w.close()
            return
        try:
            ur, uw = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            w.close()
            return
        self.conns |= {w, uw}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while True:
                    await self.flowing.wait()
                    data = await src.read(CHUNK)
                    if not data:
                        break
                    await self.flowing.wait()  # read while pausing: held, not lost
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.close()
                self.conns.discard(dst)

        await asyncio.gather(pump(r, uw), pump(ur, w))

    def pause(self) -> None:
        """Black-hole the traffic (sockets stay open)."""
        self.flowing.clear()

    def resume(self) -> None:
        """Forward again and accept new connections."""
        self.refuse = False
        self.flowing.set()

    def cut(self) -> None:
        """Reset every proxied connection and refuse new ones until :meth:`resume`."""
        self.refuse = True
        for w in list(self.conns):
            w.transport.abort()
        self.conns.clear()
        self.flowing.set()

    async def close(self) -> None:
        """Reset every connection, stop listening and end every connection's handler (its
        pumps close their sockets while the loop still runs: nothing is left to a later
        garbage collection on a closed loop)."""
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


class ThreadedProxy:
    """One :class:`Proxy` per target port, on free listening ports, served by an event
    loop in a thread of its own; every method blocks until done. ``urls`` are the proxies'
    client URLs (give the instance under test only these)."""

    def __init__(self, target_ports: Sequence[int]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="nats-proxy", daemon=True)
        self._thread.start()
        listen = free_ports(len(target_ports))
        self.proxies = [Proxy(lp, tp) for lp, tp in zip(listen, target_ports, strict=True)]
        for p in self.proxies:
            self._call(p.start())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def _each(self, method: str) -> None:
        async def run() -> None:
            for p in self.proxies:
                getattr(p, method)()

        self._call(run())

    @property
    def urls(self) -> list[str]:
        return [p.url for p in self.proxies]

    def pause(self) -> None:
        """Black-hole every proxy."""
        self._each("pause")

    def cut(self) -> None:
        """Reset and refuse on every proxy."""
        self._each("cut")

    def resume(self) -> None:
        """Heal every proxy."""
        self._each("resume")

    def close(self) -> None:
        """Close every proxy and stop the thread."""
        with contextlib.suppress(Exception):
            for p in self.proxies:
                self._call(p.close())

        async def rest() -> None:  # anything else still pending on the loop
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        with contextlib.suppress(Exception):
            self._call(rest())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> ThreadedProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
