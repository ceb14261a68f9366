"""The eventual answer of a call: :class:`Future`.

A future made by a client's connection (an *owned* future) belongs to whoever takes it out
of the connection's pending table: the reader that decodes its answer, or the thread that
fails every pending call when the connection is lost. A standalone future (no owner) is
settled under a module-wide lock. Waiting for an owned future is the owner's business (it
may read the socket in the waiting thread, see :mod:`.connection`); waiting for a
standalone one parks on a lock.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from modcoord.actors.errors import CallTimeoutError, InvalidMessageError, ModcoordError
from modcoord.supervisor.client._log import log

if TYPE_CHECKING:  # asyncio costs ~20 ms to import: only awaiting a future needs it
    import asyncio

__all__ = ["Future", "FutureOwner", "failed_future"]

T = TypeVar("T")

_allocate_lock = threading.Lock
_LockType = type(threading.Lock())
# Serialises *registering* waiters and done-callbacks (so that the list is created once);
# settling an owned future never takes it (see Future.resolve).
_REG_LOCK = threading.Lock()


class FutureOwner(Protocol):
    """What an owned future needs from the connection that answers it."""

    def claim(self, rid: int, future: Future[Any]) -> bool:
        """Take ``future`` (request ``rid``) out of the pending table; False if another
        thread already did (it settles the future)."""

    def wait_for(self, future: Future[Any], timeout: float) -> bool:
        """Wait until ``future`` is done (reading the connection if nobody else does);
        returns whether it is, within ``timeout`` seconds."""

    def flush(self) -> None:
        """Write the buffered requests now."""


class Future(Generic[T]):
    """The eventual answer of a call.

    ``get(timeout)`` waits for it; ``await future`` works in asyncio. Both default to the
    client's timeout (never infinite unless asked for with ``math.inf``). Waiting for a
    client's future first writes the client's buffered requests, then reads the connection
    in the waiting thread if no other thread does.

    ``resolve``, ``resolve_answer``, ``add_waiter``, ``remove_waiter`` and ``wait_unread``
    are for the connection that owns the future (see the module docstring); use
    :meth:`set_result` and :meth:`set_exception` otherwise.
    """

    __slots__ = ("_callbacks", "_convert", "_done", "_exc", "_owner", "_result", "_rid",
                 "_timeout")

    def __init__(self, timeout: float = 5.0, owner: FutureOwner | None = None,
                 convert: Callable[[Any], Any] | None = None, rid: int = 0) -> None:
        self._done = False
        self._result: Any = None
        self._exc: BaseException | None = None
        # Done-callbacks and waiters' locks, in order; each is taken out (list.pop, atomic)
        # by exactly one thread, which runs (or releases) it.
        self._callbacks: list[Any] | None = None
        self._timeout = timeout
        self._owner = owner  # the connection that answers it
        self._convert = convert
        self._rid = rid

    def __repr__(self) -> str:
        if not self._done:
            return "<Future pending>"
        if self._exc is not None:
            return f"<Future failed {type(self._exc).__name__}>"
        return f"<Future done {self._result!r:.60}>"

    # completion

    def resolve(self, result: Any, exc: BaseException | None) -> None:
        """Complete; only for the one thread entitled to (it took the future out of its
        owner's pending table, or made it and never published it)."""
        self._result = result
        self._exc = exc
        self._done = True
        # A registrant writes _callbacks, then reads _done; we wrote _done, now read
        # _callbacks: at least one of us sees the other, and pop() hands every item to one.
        if self._callbacks is not None:
            self._run_callbacks()

    def resolve_answer(self, result: Any) -> None:
        """Complete with a successful answer from the daemon, passed through the future's
        converter (like :meth:`resolve`, for the entitled thread only). A converter that
        raises fails the future instead: with its :class:`ModcoordError`, or an
        ``InvalidMessageError`` naming the malformed answer."""
        convert = self._convert
        if convert is not None:
            try:
                result = convert(result)
            except Exception as exc:
                self.resolve(None, exc if isinstance(exc, ModcoordError)
                             else InvalidMessageError(f"malformed answer: {exc}"))
                return
        self.resolve(result, None)

    def _settle(self, result: Any, exc: BaseException | None) -> bool:
        owner = self._owner
        if owner is not None:
            # An owned future belongs to whoever takes it out of the pending table.
            if not owner.claim(self._rid, self):
                return False
            self.resolve(result, exc)
            return True
        with _REG_LOCK:
            if self._done:
                return False
            self._result = result
            self._exc = exc
            self._done = True
        if self._callbacks is not None:
            self._run_callbacks()
        return True

    def set_result(self, result: T) -> bool:
        """Resolve with ``result``; returns False if already done (or, for a client's
        future, already being answered)."""
        return self._settle(result, None)

    def set_exception(self, exc: BaseException) -> bool:
        """Fail with ``exc``; returns False if already done (or being answered)."""
        return self._settle(None, exc)

    def _run_callbacks(self) -> None:
        callbacks = self._callbacks
        assert callbacks is not None
        while True:
            try:
                item = callbacks.pop(0)
            except IndexError:
                return
            if type(item) is _LockType:
                with contextlib.suppress(RuntimeError):  # its waiter was poked already
                    item.release()
            else:
                _run_done_callback(item, self)

    def add_waiter(self, item: Any) -> bool:
        """Add a done-callback or a waiter's (acquired) lock, released when done; False
        (not added) if already done."""
        with _REG_LOCK:
            if self._done:
                return False
            callbacks = self._callbacks
            if callbacks is None:
                callbacks = self._callbacks = []
            callbacks.append(item)
        if self._done:  # settled meanwhile, perhaps without seeing the item: run what's left
            self._run_callbacks()
        return True

    def remove_waiter(self, item: Any) -> None:
        """Take back what :meth:`add_waiter` added (if it is still there)."""
        callbacks = self._callbacks
        if callbacks is not None:
            with _REG_LOCK, contextlib.suppress(ValueError):
                callbacks.remove(item)

    # observation

    def done(self) -> bool:
        """Whether the answer (or an error) has arrived."""
        return self._done

    def wait_unread(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds without reading any connection (a standalone
        future, or a wait nested in a reading thread); returns whether it is done."""
        if self._done:
            return True
        waiter = _allocate_lock()
        waiter.acquire()
        if not self.add_waiter(waiter):
            return True
        try:
            waiter.acquire(timeout=-1 if math.isinf(timeout) else max(timeout, 0.0))
        finally:
            if not self._done:
                self.remove_waiter(waiter)
        return self._done

    def _wait_done(self, timeout: float | None) -> bool:
        if timeout is None:
            timeout = self._timeout
        owner = self._owner
        if owner is not None:
            return owner.wait_for(self, timeout)
        return self.wait_unread(timeout)

    def get(self, timeout: float | None = None) -> T:
        """Wait for the answer and return it.

        Args:
            timeout: seconds; ``None`` means the client's timeout, ``math.inf`` forever.

        Raises:
            CallTimeoutError: no answer within ``timeout`` (the call may still complete).
            ModcoordError: the call failed (remote error, connection lost, ...).
        """
        if not self._done and not self._wait_done(timeout):
            raise CallTimeoutError(
                f"no answer within {self._timeout if timeout is None else timeout} s")
        if self._exc is not None:
            raise self._exc
        return self._result  # type: ignore[no-any-return]

    def result(self, timeout: float | None = None) -> T:
        """Same as :meth:`get`."""
        return self.get(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait like :meth:`get`; return the error, or None on success.

        Raises:
            CallTimeoutError: no answer within ``timeout``.
        """
        if not self._done and not self._wait_done(timeout):
            raise CallTimeoutError(
                f"no answer within {self._timeout if timeout is None else timeout} s")
        return self._exc

    def add_done_callback(self, fn: Callable[[Future[T]], None]) -> None:
        """Call ``fn(future)`` when done: at once (in this thread) if already done, else in
        the thread that completes it (the reader thread or a waiting caller: keep ``fn``
        short, and do not wait for another future of the same client in it). Exceptions
        from ``fn`` are logged."""
        if not self.add_waiter(fn):
            _run_done_callback(fn, self)

    def __await__(self) -> Generator[Any, None, T]:
        """Await the answer in asyncio, with the same default timeout as :meth:`get`.

        Raises:
            CallTimeoutError: no answer within the client's timeout.
            ModcoordError: the call failed.
        """
        if not self._done:
            import asyncio

            owner = self._owner
            if owner is not None:
                owner.flush()
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()

            def wake(_: Future[T]) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    loop.call_soon_threadsafe(_resolve_waiter, waiter)

            self.add_done_callback(wake)
            handle = None
            if not math.isinf(self._timeout):
                handle = loop.call_later(self._timeout, _resolve_waiter, waiter)
            try:
                yield from waiter.__await__()
            finally:
                if handle is not None:
                    handle.cancel()
            if not self._done:
                raise CallTimeoutError(f"no answer within {self._timeout} s")
        if self._exc is not None:
            raise self._exc
        return self._result  # type: ignore[no-any-return]


def _resolve_waiter(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _run_done_callback(fn: Callable[[Any], None], future: Future[Any]) -> None:
    try:
        fn(future)
    except Exception:
        log.exception("future done-callback raised")


def failed_future(exc: BaseException, timeout: float = 5.0) -> Future[Any]:
    """A future already failed with ``exc``."""
    future: Future[Any] = Future(timeout)
    future.resolve(None, exc)
    return future
