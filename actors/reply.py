"""The one reply convention of the daemon.

Whatever answers later — a cache flight's waiters, a coordination, the engine's
asynchronous calls, the server's answer to a request — answers through a :data:`Reply`:
a callable taking ``(value, None)`` on success or ``(None, error)`` on failure, called
exactly once, from any thread. Actor asks are the synchronous form of the same rule: the
reply is the handler's return value, a refusal is a raised
:class:`~modcoord.actors.errors.ModcoordError`. :class:`ReplyBox` turns a ``Reply`` back
into a blocking wait.

This module imports nothing but the error tree, so any layer may use it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from modcoord.actors.errors import CallTimeoutError

__all__ = ["Reply", "ReplyBox"]

Reply = Callable[[Any, "BaseException | None"], None]
"""``reply(value, None)`` or ``reply(None, error)``, exactly once, from any thread."""


class ReplyBox:
    """A :data:`Reply` that a thread can wait on.

    Pass the box where a ``Reply`` is expected, then call :meth:`wait`. Only the first
    reply counts (a second is ignored).
    """

    __slots__ = ("_error", "_event", "_value")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def __call__(self, value: Any, error: BaseException | None) -> None:
        if self._event.is_set():
            return
        self._value, self._error = value, error
        self._event.set()

    def wait(self, timeout: float, what: str) -> Any:
        """Wait for the reply and return its value.

        Raises:
            CallTimeoutError: no reply within ``timeout`` seconds (``what`` names the call).
            BaseException: the error the reply carried.
        """
        if not self._event.wait(timeout):
            raise CallTimeoutError(f"{what}: no result within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._value
