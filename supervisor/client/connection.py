"""One client's connection to the daemon: the socket, sending, reading and reconnecting.

:class:`Connection` is built in three layers, one file each:

- :mod:`._sending` (:class:`~._sending._Sending`): the connection's state, the output
  buffer and its coalesced writes (the writer thread, answering callbacks), and losing a
  stream (every pending future fails at once); with the :class:`Inbound` protocol and the
  :data:`Rejoin` type its constructor takes.
- :mod:`._reading` (:class:`~._reading._Reading`): the reading token (leader/follower:
  a waiting caller reads its own answer), the background reader's serve loop, decoding
  frames and dispatching them.
- here: the lifecycle (connecting, the hello, closing, the counters), the reader thread,
  and reconnecting.

If the daemon goes away, every pending future fails with :class:`ConnectionLostError`
at once (whoever reads sees the end of the stream), calls made while disconnected fail
the same way immediately, and the reader thread reconnects with backoff (50 ms doubling to
1 s); once the daemon is back it says hello again and re-registers every module the
``rejoin`` callable names.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
from typing import Any

from modcoord.actors.errors import (
    ConnectionLostError,
    InvalidMessageError,
    NotRunningError,
)
from modcoord.supervisor.client._log import log
from modcoord.supervisor.client._reading import _PARK_MAX, _Reading
from modcoord.supervisor.client._sending import Inbound, Rejoin
from modcoord.supervisor.client.future import Future
from modcoord.supervisor.client.hello import refused_hello, version_mismatch
from modcoord.supervisor.client.registry import log_reregistration
from modcoord.supervisor.client.stream import Stream
from modcoord.supervisor.protocol.signatures import PROTOCOL_VERSION

__all__ = ["Connection", "Inbound", "Rejoin", "version_mismatch"]

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0


class Connection(_Reading):
    """The connection of one client to the daemon at ``path`` (see the module docstring).

    It owns the futures of its requests (:class:`~.future.FutureOwner`), hands events and
    callback requests to ``inbound``, and on every (re)connection says hello and
    re-registers what ``rejoin`` returns.
    """

    # -- lifecycle -------------------------------------------------------------------------

    def _open_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except FileNotFoundError:
            sock.close()
            raise NotRunningError(
                f"no modcoord daemon at {self.path} (no socket); start one with "
                "`modcoord start`") from None
        except ConnectionRefusedError:
            sock.close()
            raise NotRunningError(
                f"no modcoord daemon listening on {self.path} (stale socket); start one "
                "with `modcoord start`") from None
        except PermissionError as exc:
            sock.close()
            raise NotRunningError(f"cannot reach the daemon at {self.path}: {exc}") from None
        except OSError as exc:
            sock.close()
            raise NotRunningError(f"cannot connect to {self.path}: {exc}; is the daemon "
                                  "running (`modcoord start`)?") from None
        sock.settimeout(None)
        return sock

    def start(self) -> None:
        """Connect and say hello; returns once the daemon answered.

        Raises:
            NotRunningError: no daemon listens on :attr:`path`.
            ConnectionLostError: the daemon closed the connection (e.g. refused this user).
            CallTimeoutError: no answer to hello within :attr:`timeout`.
            ProtocolVersionError: the daemon speaks another protocol version (a
                ``ModcoordError`` naming both).
        """
        sock = self._open_socket()
        self._writer.start()
        hello = self._install(sock)
        stream = self._stream
        if hello is None or stream is None:
            raise ConnectionLostError("client closed")
        self._reader = threading.Thread(target=self._reader_main, args=(stream,),
                                        name="modcoord-client-reader", daemon=True)
        self._reader.start()
        try:
            hello.get(self.timeout)
        except InvalidMessageError as exc:
            refused = refused_hello(exc, self.path)
            if refused is not None:
                raise refused from None
            raise
        except ConnectionLostError:
            # Say why, if the daemon told us (e.g. it refused this user).
            self._lost_event.wait(self.timeout)
            reason = self._loss_reason
            raise ConnectionLostError(f"connection to the daemon lost: {reason}") from None

    def close(self, timeout: float = 2.0) -> None:
        """Write what is buffered, close the socket and stop reconnecting; pending futures
        fail with :class:`ConnectionLostError`. Idempotent."""
        if self._closed.is_set():
            return
        with contextlib.suppress(Exception):
            self.flush()
        self._closed.set()
        with self._send_lock:
            stream = self._stream
            self._connected = False
            if not self._writer_idle:
                with contextlib.suppress(RuntimeError):  # cut its sleep short
                    self._writer_tick.release()
            else:
                self._writer_idle = False
                self._writer_wake.release()
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.sock.shutdown(socket.SHUT_RDWR)
        self._wake_reader()
        current = threading.current_thread()
        if self._reader is not None and self._reader is not current:
            self._reader.join(timeout)
        if self._writer.is_alive() and self._writer is not current:
            self._writer.join(timeout)
        self._fail_all("client closed")
        if stream is not None:
            self._close_socket(stream, timeout)

    @property
    def connected(self) -> bool:
        """Whether a connection to the daemon is up (calls are sent, not failed fast)."""
        return self._connected

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until connected and the handshake (hello and re-registrations) is answered.

        Returns:
            whether it is, within ``timeout`` (default: the connection's timeout).
        """
        if self._out:
            self.flush()
        return self._handshake.wait(self.timeout if timeout is None else timeout)

    def counters(self) -> dict[str, Any]:
        """This connection's part of :class:`~.results.ClientStatistics`."""
        return {"connected": self._connected, "calls": self._calls_made,
                "pending": len(self._pending), "connection_losses": self._connection_losses,
                "reconnects": self._reconnects, "writes": self._writes,
                "caller_reads": self._caller_reads, **self._spin.statistics()._asdict()}

    # -- reading: the reader thread --------------------------------------------------------

    def _reader_main(self, stream: Stream) -> None:
        current: Stream | None = stream
        while current is not None:
            try:
                self._serve(current)
            except Exception as exc:  # a bug: do not leave the connection unread
                log.exception("client reader failed")
                self._stream_lost(current, f"client reader failed: {exc}")
            self._reader_ticking = False  # requests wake the writer thread again
            self._close_socket(current, _PARK_MAX)
            if self._closed.is_set() or not self._reconnect:
                return
            current = self._reconnect_loop()

    # -- regaining the connection ------------------------------------------------------------

    def _install(self, sock: socket.socket) -> Future[Any] | None:
        """Make ``sock`` current and send hello plus every module's registration."""
        futures: list[Future[Any]] = []
        with self._send_lock:
            if self._closed.is_set():
                sock.close()
                return None
            self._generation += 1
            stream = self._stream = Stream(sock, self._generation)
            self._connected = True
            self._server_error = None
            self._out = []
            self._out_size = 0
            hello = self._enqueue_locked(
                "hello", {"client": self.name, "pid": os.getpid(), "protocol": PROTOCOL_VERSION},
                self._on_hello)
            futures.append(hello)
            for module_id, params in self._rejoin():
                future = self._enqueue_locked("register", params, None)
                future.add_done_callback(functools.partial(log_reregistration, module_id))
                futures.append(future)
            generation = self._generation
        self.flush()
        hello.add_done_callback(functools.partial(self._check_hello, stream))
        remaining = [len(futures)]
        lock = threading.Lock()

        def one_done(_: Future[Any]) -> None:
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last and generation == self._generation and self._connected:
                self._handshake.set()

        for f in futures:
            f.add_done_callback(one_done)
        return hello

    def _on_hello(self, result: Any) -> Any:
        """Learn the daemon's limits from its hello answer.

        Raises:
            ProtocolVersionError: the daemon speaks another protocol version (fails the
                hello).
        """
        if isinstance(result, dict):
            version = result.get("version")
            if version != PROTOCOL_VERSION:
                raise version_mismatch(version, self.path)
            self.daemon_info = result
            max_frame = result.get("max_frame_bytes")
            if isinstance(max_frame, int) and max_frame > 0:
                self._max_frame = max_frame
        return result

    def _check_hello(self, stream: Stream, hello: Future[Any]) -> None:
        """A daemon speaking another protocol version (it refused our hello, or it names
        another version in its answer) cannot be talked to: drop the connection, naming
        both versions (pending calls fail with that reason; the reader reconnects, since
        the daemon may be restarted with the right version)."""
        refused = refused_hello(hello.exception(0), self.path)
        if refused is not None:
            self._stream_lost(stream, str(refused))

    def _reconnect_loop(self) -> Stream | None:
        delay = _BACKOFF_FIRST
        while not self._closed.wait(delay):
            delay = min(delay * 2, _BACKOFF_MAX)
            try:
                sock = self._open_socket()
            except NotRunningError:
                continue
            if self._install(sock) is None:
                return None
            self._reconnects += 1
            log.info("reconnected to the daemon at %s", self.path)
            return self._stream
        return None

