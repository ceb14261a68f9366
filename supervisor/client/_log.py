"""The client's log: the standard :mod:`logging` logger ``modcoord.client``, imported on
first use (a module process that never logs does not pay for importing :mod:`logging`).

Records name the module they concern in the ``module_id`` extra field when there is one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging

__all__ = ["LOGGER_NAME", "log"]

LOGGER_NAME = "modcoord.client"


class _LazyLogger:
    """The methods of :class:`logging.Logger` the client uses, resolved on first call."""

    __slots__ = ("_logger",)

    def __init__(self) -> None:
        self._logger: logging.Logger | None = None

    def _get(self) -> logging.Logger:
        logger = self._logger
        if logger is None:
            import logging

            logger = self._logger = logging.getLogger(LOGGER_NAME)
        return logger

    # stacklevel=2: the record names the caller, not this shim.

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._get().info(msg, *args, stacklevel=2, **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._get().warning(msg, *args, stacklevel=2, **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._get().error(msg, *args, stacklevel=2, **kwargs)

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at ERROR with the exception being handled."""
        self._get().error(msg, *args, exc_info=True, stacklevel=2, **kwargs)


log = _LazyLogger()
"""The client's logger."""
