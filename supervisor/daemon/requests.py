"""The request side of the daemon's socket server: what each inbound message does.

:class:`Requests` takes the messages decoded from one read of a connection
(:meth:`Requests.process`) and answers them; the I/O loop that reads and writes is
:mod:`modcoord.supervisor.daemon.server`. The rules:

- ``publish`` requests of one read go to ``coordinator.publish_many`` in one call, checked
  inline on a fast path (plain type tests equal to ``PublishParams``'s); a publish that
  fails them is decoded again to say exactly what is wrong. Their acknowledgements are
  encoded in one go.
- Any other message is split (:func:`~modcoord.supervisor.protocol.framing.split_inbound`),
  its parameters decoded by the call table, and handed to the handler of its call: a data
  call to its own ``_on_<name>``, a control call to the controller (``coordinator.call``) on a
  small pool of control threads.
- ``register``/``unregister`` run on one serial registration thread; the connection is
  paused meanwhile, so its later messages wait (in order) until that completes, and a
  pipelined publish after a register sees the module registered.
- While the daemon stops (:attr:`Requests.refusing`), every new request is answered with
  ``ActorStoppedError`` ("daemon: stopping"); callback responses are still taken.

Failures never escape to the I/O loop: a malformed message is answered with
``InvalidMessageError`` (counted in ``invalid_messages``), an unexpected exception with an
internal error (counted in ``internal_errors`` and logged); a message whose request id
cannot be read is broken framing, and the connection is closed once its output is flushed.
"""

from __future__ import annotations

import functools
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from queue import SimpleQueue
from typing import Any, cast

from loguru import logger

from modcoord.actors.errors import InvalidMessageError, ModcoordError
from modcoord.supervisor.daemon.connection import Connection, safe_reply
from modcoord.supervisor.daemon.engine import Accepted, ServerBackend
from modcoord.supervisor.protocol.calls import (
    CALLS,
    CONTROL,
    PROTOCOL_VERSION,
    CoordinateParams,
    HelloParams,
    ModuleIdParams,
    Params,
    PublishParams,
    RegisterParams,
    decode_params,
    publish_item,
)
from modcoord.supervisor.protocol.errors import ProtocolVersionError, error_to_wire
from modcoord.supervisor.protocol.framing import (
    CALLBACK_RESPONSE,
    REQUEST,
    RESPONSE,
    encode_acks,
    encode_frame,
    encode_frames,
    request_id_of,
    split_inbound,
)

__all__ = ["Requests"]

_log = logger.bind(actor="server")


class _Serial:
    """One thread running submitted jobs in order (registrations)."""

    def __init__(self, name: str) -> None:
        self._queue: SimpleQueue[Callable[[], None] | None] = SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._queue.put(job)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                job()
            except Exception:
                _log.opt(exception=True).error("registration job failed")

    def close(self, timeout: float) -> None:
        self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)


class Requests:
    """Answers the requests of every connection of one server.

    Args:
        coordinator: the engine the requests go to.
        max_frame_bytes: the frame limit told to clients in ``hello``.
        control_workers: threads running control calls.
        count: adds to one of the server's counters (``count(name, n)``).
        resume: called (from the registration thread) once a paused connection may be
            read again.
        after_publishing: called after each ``publish_many`` for the connection it came
            from (flow control).

    :meth:`start` starts the control pool and the registration thread; :meth:`close`
    stops them. :attr:`io_ident` is the I/O thread's ident, set by the server's loop: a
    reply made on it is coalesced into the read's one ``send``.
    """

    def __init__(self, coordinator: ServerBackend, *, max_frame_bytes: int,
                 control_workers: int, count: Callable[..., None],
                 resume: Callable[[Connection], None],
                 after_publishing: Callable[[Connection], None]) -> None:
        self.coordinator = coordinator
        self.max_frame_bytes = max_frame_bytes
        self.refusing = False
        self.io_ident: int | None = None
        self._control_workers = max(1, control_workers)
        self._count = count
        self._resume = resume
        self._after_publishing = after_publishing
        self._control: ThreadPoolExecutor | None = None
        self._registrations: _Serial | None = None
        # One handler per call of the table: a data call by its own ``_on_<name>``, a
        # control call by the controller (``coordinator.call``) on a control thread.
        self._handlers: dict[str, Callable[[Connection, int, Any], None]] = {
            name: (functools.partial(self._on_control, name) if call.kind == CONTROL
                   else getattr(self, f"_on_{name}"))
            for name, call in CALLS.items()}

    def start(self) -> None:
        """Start the control threads and the registration thread."""
        self._control = ThreadPoolExecutor(self._control_workers,
                                           thread_name_prefix="modcoord-control")
        self._registrations = _Serial("modcoord-registrations")

    def close(self, timeout: float) -> None:
        """Stop taking control calls (queued ones are cancelled) and finish the
        registration jobs queued so far (waiting up to ``timeout`` seconds)."""
        if self._control is not None:
            self._control.shutdown(wait=False, cancel_futures=True)
        if self._registrations is not None:
            self._registrations.close(timeout=timeout)

    def unregister_all(self, conn: Connection, module_ids: Iterable[str]) -> None:
        """Unregister the modules of a closed connection, in order after any registration
        job of theirs still queued (failures are logged)."""
        if self._registrations is None:
            return
        for module_id in module_ids:
            self._registrations.submit(
                functools.partial(self.unregister_quietly, conn, module_id))

    def emit(self, conn: Connection, frame: bytes) -> None:
        """Send a frame, coalescing when called inside the I/O thread's processing."""
        if threading.get_ident() == self.io_ident and conn.coalesce is not None:
            conn.coalesce.append(frame)
        else:
            conn.send(frame)

    def _respond(self, conn: Connection, rid: int | None, result: Any) -> None:
        try:
            frame = encode_frame([RESPONSE, rid, None, result])
        except Exception as exc:
            self._count("internal_errors")
            _log.error("response cannot be encoded", request=rid, error=str(exc))
            frame = encode_frame([RESPONSE, rid,
                                  ["InternalError", f"result cannot be encoded: {exc}"], None])
        self.emit(conn, frame)

    def _respond_error(self, conn: Connection, rid: int | None, exc: BaseException) -> None:
        if isinstance(exc, InvalidMessageError):
            self._count("invalid_messages")
        elif not isinstance(exc, ModcoordError):
            self._count("internal_errors")
            _log.opt(exception=exc).error("internal error answering a request", request=rid)
        self.emit(conn, encode_frame([RESPONSE, rid, error_to_wire(exc), None]))

    # -- the messages of one read --------------------------------------------------------------

    def process(self, conn: Connection, messages: Iterable[Any]) -> None:
        pub_ids: list[int] = []
        pub_items: list[tuple[str, str, Any, str]] = []
        requests = 0
        module_ids = conn.module_ids
        try:
            for msg in messages:
                if conn.paused:
                    if not conn.close_when_flushed:
                        conn.backlog.append(msg)
                    continue
                requests += 1
                if self.refusing and not (type(msg) is list and msg
                                           and msg[0] == CALLBACK_RESPONSE):
                    rid = request_id_of(msg)
                    if rid is not None:
                        self.emit(conn, encode_frame(
                            [RESPONSE, rid, ["ActorStoppedError", "daemon: stopping"], None]))
                    continue
                if (type(msg) is list and len(msg) == 4 and msg[2] == "publish"
                        and msg[0] == REQUEST and type(msg[0]) is int):
                    rid = msg[1]
                    params = msg[3]
                    if type(rid) is int and type(params) is dict:
                        # The fast path: PublishParams's checks as plain type tests.
                        item = publish_item(params)
                        if item is not None and item[0] in module_ids:
                            pub_ids.append(rid)
                            pub_items.append(item)
                            continue
                        # Something is wrong with it: say exactly what.
                        try:
                            item = cast(PublishParams, decode_params("publish", params)).item()
                        except InvalidMessageError as exc:
                            self._respond_error(conn, rid, exc)
                            continue
                        if item[0] not in module_ids:
                            self._respond_error(conn, rid, InvalidMessageError(
                                f"publish: module_id {item[0]!r} is not registered on this "
                                "connection"))
                            continue
                        pub_ids.append(rid)
                        pub_items.append(item)
                        continue
                if pub_items:
                    self._publish(conn, pub_ids, pub_items)
                    pub_ids, pub_items = [], []
                self._dispatch(conn, msg)
        finally:
            if pub_items:
                self._publish(conn, pub_ids, pub_items)
            if requests:
                self._count("requests", requests)

    def _publish(self, conn: Connection, ids: list[int],
                 items: list[tuple[str, str, Any, str]]) -> None:
        try:
            results: Sequence[Any] = self.coordinator.publish_many(items)
        except Exception as exc:
            results = [exc] * len(items)
        self._after_publishing(conn)
        self._count("publishes", len(items))
        if any(type(r) is Accepted for r in results):
            results = self._settle_later(conn, ids, results)
            ids = [rid for rid, r in zip(ids, results, strict=True) if r is not None]
            results = [r for r in results if r is not None]
            if not ids:
                return
        try:
            data = encode_acks(ids, results)  # all accepted: one struct call each
        except (struct.error, TypeError, ValueError):
            data = self._publish_results(ids, results)
        self.emit(conn, data)

    def _settle_later(self, conn: Connection, ids: list[int],
                      results: Sequence[Any]) -> list[Any]:
        """Answer each :class:`Accepted` result when it settles (any thread: the frame is
        queued on the connection); the others are returned in place, the deferred ones
        as None."""
        now: list[Any] = []
        for rid, result in zip(ids, results, strict=True):
            if type(result) is not Accepted:
                now.append(result)
                continue
            now.append(None)

            def settled(value: Any, rid: int = rid) -> None:
                if isinstance(value, BaseException):
                    self._respond_error(conn, rid, value)
                else:
                    self._respond(conn, rid, value)

            result.on_settled(settled)
        return now

    def _publish_results(self, ids: list[int], results: Sequence[Any]) -> bytes:
        """Encode publish responses one by one (some are errors, or odd ids or values)."""
        if len(results) != len(ids):
            error = RuntimeError(f"publish_many returned {len(results)} results for "
                                 f"{len(ids)} items")
            results = [error] * len(ids)
        frames: list[Any] = []
        for rid, result in zip(ids, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, ModcoordError):
                    self._count("internal_errors")
                    _log.opt(exception=result).error("publish_many failed")
                elif isinstance(result, InvalidMessageError):
                    self._count("invalid_messages")
                frames.append([RESPONSE, rid, error_to_wire(result), None])
            else:
                frames.append([RESPONSE, rid, None, result])
        data: bytes
        try:
            data = encode_frames(frames)
        except Exception as exc:  # a coordinator returning something odd
            self._count("internal_errors")
            data = encode_frames([RESPONSE, rid, ["InternalError", str(exc)], None]
                                 for rid in ids)
        return data

    def _dispatch(self, conn: Connection, msg: Any) -> None:
        try:
            kind, rid, method, params = split_inbound(msg)
        except InvalidMessageError as exc:
            rid_or_none = request_id_of(msg)
            self._respond_error(conn, rid_or_none, exc)
            if rid_or_none is None:
                self._count("framing_errors")
                _log.warning("closing connection", connection=conn.conn_id, error=str(exc))
                conn.close_when_flushed = True
                conn.paused = True
            return
        if kind == CALLBACK_RESPONSE:
            self._on_callback_response(conn, rid, method, params)
            return
        try:
            value = decode_params(method, params)
        except InvalidMessageError as exc:
            self._respond_error(conn, rid, exc)
            return
        try:
            self._handlers[method](conn, rid, value)
        except Exception as exc:
            self._respond_error(conn, rid, exc)

    # -- one handler per call ------------------------------------------------------------------

    def _on_hello(self, conn: Connection, rid: int, params: HelloParams) -> None:
        conn.client_name = params.client
        if params.protocol and params.protocol != PROTOCOL_VERSION:
            _log.warning("refused a client speaking another protocol version",
                         connection=conn.conn_id, client=params.client or "unnamed client",
                         peer_pid=params.pid, theirs=params.protocol, ours=PROTOCOL_VERSION)
            raise ProtocolVersionError(
                f"hello: the client speaks protocol version {params.protocol} but this "
                f"daemon speaks version {PROTOCOL_VERSION}; use the same modcoord version "
                "for the modules and the daemon (restart the daemon after an upgrade)")
        brief = dict(self.coordinator.status_brief())
        brief.update(max_frame_bytes=self.max_frame_bytes, version=PROTOCOL_VERSION,
                     protocol=PROTOCOL_VERSION)
        self._respond(conn, rid, brief)

    def _on_register(self, conn: Connection, rid: int, params: RegisterParams) -> None:
        info = params.info()
        conn.paused = True
        assert self._registrations is not None

        def job() -> None:
            try:
                result = self.coordinator.register(info, conn)
            except Exception as exc:
                self._respond_error(conn, rid, exc)
            else:
                with conn.lock:
                    closed = conn.closed
                    if not closed:
                        conn.module_ids.add(info.module_id)
                if closed:
                    self.unregister_quietly(conn, info.module_id)
                else:
                    _log.bind(module=info.module_id).debug(
                        "module registered on a connection", connection=conn.conn_id)
                    self._respond(conn, rid, result)
            finally:
                self._resume(conn)

        self._registrations.submit(job)

    def _on_unregister(self, conn: Connection, rid: int, params: ModuleIdParams) -> None:
        module_id = params.module_id
        if module_id not in conn.module_ids:
            raise InvalidMessageError(
                f"unregister: module_id {module_id!r} is not registered on this connection")
        conn.paused = True
        assert self._registrations is not None

        def job() -> None:
            try:
                with conn.lock:
                    conn.module_ids.discard(module_id)
                self.coordinator.unregister(module_id, conn)
            except Exception as exc:
                self._respond_error(conn, rid, exc)
            else:
                self._respond(conn, rid, {"module_id": module_id})
            finally:
                self._resume(conn)

        self._registrations.submit(job)

    def _on_publish(self, conn: Connection, rid: int, params: PublishParams) -> None:
        item = params.item()
        if item[0] not in conn.module_ids:
            raise InvalidMessageError(
                f"publish: module_id {item[0]!r} is not registered on this connection")
        self._publish(conn, [rid], [item])

    def _on_coordinate(self, conn: Connection, rid: int, params: CoordinateParams) -> None:
        mode, context = params.mode, params.context or {}
        answered = [False]

        def reply(result: Any, exc: BaseException | None = None) -> None:
            if answered[0]:
                return
            answered[0] = True
            if exc is not None:
                self._respond_error(conn, rid, exc)
            else:
                self._respond(conn, rid, result)

        try:
            self.coordinator.coordinate(mode, context, reply, caller=tuple(conn.module_ids))
        except Exception as exc:
            reply(None, exc)

    def _on_control(self, method: str, conn: Connection, rid: int, params: Params) -> None:
        assert self._control is not None

        def job() -> None:
            try:
                result = self.coordinator.call(method, params)
            except Exception as exc:
                self._respond_error(conn, rid, exc)
            else:
                self._respond(conn, rid, result)

        try:
            self._control.submit(job)
        except RuntimeError:  # executor shut down: the server is stopping
            self._respond_error(conn, rid, ModcoordError("the daemon is stopping"))

    def _on_callback_response(self, conn: Connection, cid: int, error: Any,
                              result: Any) -> None:
        reply = conn.take_callback(cid)
        if reply is None:
            _log.debug("late or unknown callback response", callback=cid,
                       connection=conn.conn_id)
            return
        if error is None:
            safe_reply(reply, result, None)
        else:
            text = ": ".join(str(e) for e in error) if isinstance(error, list) else str(error)
            safe_reply(reply, None, text)

    def unregister_quietly(self, conn: Connection, module_id: str) -> None:
        try:
            self.coordinator.unregister(module_id, conn)
        except Exception:
            _log.bind(module=module_id).opt(exception=True).warning(
                "unregistering after the connection closed failed")
