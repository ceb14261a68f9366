"""Single flight: one computation in flight for a cache key, and the callers waiting on it.

Rules: a :class:`Flight` is resolved exactly once, by the store
(:meth:`~modcoord.actors.shared.cache_store.CacheStore.complete` or
:meth:`~modcoord.actors.shared.cache_store.CacheStore.fail`); a later resolution is
refused (``settle`` returns False). Waiter callbacks run in the resolving thread, outside
every lock, each exactly once.

On failure: a waiter that raises is logged (``single-flight waiter failed``) and the others
still run; :meth:`Flight.wait` raises :class:`~modcoord.actors.errors.CallTimeoutError`
when nobody resolves the flight within its timeout, or the leader's error.
"""

from __future__ import annotations

import threading
from typing import Any

from loguru import logger

from modcoord.actors.errors import CallTimeoutError
from modcoord.actors.reply import Reply

__all__ = ["Flight", "Waiter"]

Waiter = Reply
"""A single-flight waiter: called once with ``(value, None)`` or ``(None, error)``."""


class Flight:
    """One computation in flight for a key; the callers that joined it wait on it.

    A flight is resolved exactly once, by :meth:`CacheStore.complete` or
    :meth:`CacheStore.fail`. Waiter callbacks run in the resolving thread, outside every
    lock; one that raises is logged and the others still run.
    """

    __slots__ = ("_done", "_error", "_event", "_lock", "_value", "_waiters", "key", "storable")

    def __init__(self, key: str) -> None:
        self.key = key
        self.storable = True  # cleared by invalidate()/clear() while in flight
        self._lock = threading.Lock()
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._waiters: list[Waiter] = []
        self._event: threading.Event | None = None

    @property
    def done(self) -> bool:
        """Whether the flight has been resolved."""
        return self._done

    def add_waiter(self, callback: Waiter) -> None:
        """Call ``callback(value, None)`` or ``callback(None, error)`` on completion.

        If the flight is already resolved, the callback runs now, in this thread. An
        exception raised by the callback is logged, never propagated.
        """
        with self._lock:
            if not self._done:
                self._waiters.append(callback)
                return
            value, error = self._value, self._error
        _call_waiter(callback, value, error)

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the flight is resolved and return its value.

        Raises:
            CallTimeoutError: not resolved within ``timeout`` seconds.
            BaseException: the error the leader passed to :meth:`CacheStore.fail`, if any
                (with no error, ``fail``'s value is returned).
        """
        with self._lock:
            if not self._done:
                if self._event is None:
                    self._event = threading.Event()
                event: threading.Event | None = self._event
            else:
                event = None
        if event is not None and not event.wait(timeout):
            raise CallTimeoutError(f"cache: no result for {self.key!r:.80} within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._value

    def settle(self, value: Any, error: BaseException | None) -> bool:
        """Resolve the flight (the store's :meth:`CacheStore.complete` and
        :meth:`CacheStore.fail` only); returns False if it was already resolved."""
        with self._lock:
            if self._done:
                return False
            self._value, self._error, self._done = value, error, True
            waiters, self._waiters = self._waiters, []
            event = self._event
        if event is not None:
            event.set()
        for callback in waiters:
            _call_waiter(callback, value, error)
        return True


def _call_waiter(callback: Waiter, value: Any, error: BaseException | None) -> None:
    try:
        callback(value, error)
    except Exception:
        logger.bind(actor="cache").opt(exception=True).error("single-flight waiter failed")
