"""The modcoord error tree.

Every error modcoord raises derives from :class:`ModcoordError`, so callers can catch one
root. The tree is split by cause, in the manner of trio's ``ClosedResourceError`` (you
closed it) versus ``BrokenResourceError`` (it broke):

- :class:`ActorStoppedError` — the actor was stopped on purpose (you, or a shutdown).
- :class:`ActorCrashedError` — the actor failed while handling *your* message.
- :class:`NotRunningError` — no daemon listens on the runtime directory.
- :class:`ConnectionLostError` — the daemon went away while a call was in flight.
- :class:`CallTimeoutError` — no answer within the caller's timeout.
- :class:`RemoteError` — the daemon answered with an error (carries the remote type).
- :class:`InvalidMessageError` — a message failed validation.
- :class:`QueueFullError` — backpressure: the batch queue is full, publish later.
- :class:`ConfigError` — a config file is invalid (names the file, the key, the problem).
"""

from __future__ import annotations

__all__ = [
    "ActorCrashedError",
    "ActorError",
    "ActorStoppedError",
    "CallTimeoutError",
    "ConfigError",
    "ConnectionLostError",
    "InvalidMessageError",
    "ModcoordError",
    "NotRunningError",
    "QueueFullError",
    "RemoteError",
]


class ModcoordError(Exception):
    """Root of every error modcoord raises."""


class ActorError(ModcoordError):
    """An actor could not handle a message.

    Attributes:
        actor: the name of the actor concerned (``debouncer``, ``cache``, ...).
    """

    def __init__(self, actor: str, message: str) -> None:
        super().__init__(f"{actor}: {message}")
        self.actor = actor


class ActorCrashedError(ActorError):
    """The actor failed while handling this message; the message is not retried.

    The supervisor restarts the actor (its pending work is kept); send again if the
    operation should be repeated.
    """


class ActorStoppedError(ActorError):
    """The actor was stopped on purpose (shutdown, or not restarted by its policy)."""


class NotRunningError(ModcoordError):
    """No daemon is running on the runtime directory. Start one with ``modcoord start``."""


class ConnectionLostError(ModcoordError):
    """The connection to the daemon closed while the call was in flight."""


class CallTimeoutError(ModcoordError, TimeoutError):
    """No answer arrived within the timeout."""


class RemoteError(ModcoordError):
    """The daemon answered the call with an error.

    Attributes:
        remote_type: the name of the exception type raised in the daemon.
        remote_message: its message.
    """

    def __init__(self, remote_type: str, remote_message: str) -> None:
        super().__init__(f"{remote_type}: {remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message


class InvalidMessageError(ModcoordError, ValueError):
    """A message failed validation; it never reached an actor."""


class QueueFullError(ModcoordError):
    """The batch queue is full (``batch.max_queue``); the update was not accepted.

    Publish again later, or raise ``batch.max_queue`` / lower ``batch.window_ms``.
    """


class ConfigError(ModcoordError, ValueError):
    """A configuration file is invalid.

    Attributes:
        file: the path of the offending file.
        key: the dotted key concerned (``debounce.delay_ms``), or ``""`` for the whole file.
        problem: what is wrong with it.
    """

    def __init__(self, file: str, key: str, problem: str) -> None:
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {problem}")
        self.file = file
        self.key = key
        self.problem = problem
