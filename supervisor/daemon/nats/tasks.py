"""Ending the engine's asyncio tasks without swallowing the caller's own cancellation.

``task.cancel(); with suppress(BaseException): await task`` is the usual way to end a task,
and it is wrong: if the *caller* is cancelled while it waits (an ``asyncio.wait_for`` that
timed out, a bounded stop), the ``CancelledError`` meant for it is suppressed too, and the
caller carries on as if nothing happened; a bounded wait then never ends.
:func:`cancel_and_wait` ends the tasks and lets the caller's cancellation through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any] | None]) -> None:
    """Cancel every task (``None`` entries are skipped) and wait until each has ended.

    What the tasks raise is dropped (they were cancelled: their outcome is not wanted).

    Raises:
        asyncio.CancelledError: the caller itself was cancelled while waiting. It returns
            at once, even if a task is slow to end (every task was cancelled already).
    """
    pending = [task for task in tasks if task is not None and not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in pending:  # retrieved, so that asyncio never logs them as unretrieved
        if not task.cancelled():
            task.exception()
