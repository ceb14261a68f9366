"""cancel_and_wait (supervisor/daemon/nats/tasks.py): it ends the tasks it is given, and a
caller cancelled while it waits is cancelled (the pattern it replaces swallowed that)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from modcoord.supervisor.daemon.nats.tasks import cancel_and_wait

pytestmark = pytest.mark.timeout(10)

#: Bound on every wait here (the waits end in microseconds when the code is right).
BOUND_S = 5.0


async def _stubborn(started: asyncio.Event, release: asyncio.Event) -> None:
    """Ends only when ``release`` is set, cancelled or not (a library stuck in a close)."""
    started.set()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        await release.wait()
        raise


def test_every_task_is_cancelled_and_ended_and_their_errors_are_dropped() -> None:
    async def main() -> list[bool]:
        async def forever() -> None:
            await asyncio.Event().wait()

        async def fails() -> None:
            raise RuntimeError("already failed")

        tasks = [asyncio.create_task(forever()), asyncio.create_task(fails())]
        await asyncio.sleep(0)  # both started; the second has failed
        await asyncio.wait_for(cancel_and_wait([*tasks, None]), BOUND_S)
        return [t.done() for t in tasks] + [tasks[0].cancelled()]

    assert asyncio.run(main()) == [True, True, True]


def test_a_caller_cancelled_while_waiting_is_cancelled_at_once() -> None:
    async def main() -> tuple[bool, bool]:
        started, release = asyncio.Event(), asyncio.Event()
        stubborn = asyncio.create_task(_stubborn(started, release))
        await asyncio.wait_for(started.wait(), BOUND_S)
        caller = asyncio.create_task(cancel_and_wait([stubborn]))
        await asyncio.sleep(0)  # the caller is waiting for the stubborn task
        caller.cancel()
        done, _ = await asyncio.wait({caller}, timeout=BOUND_S)
        cancelled = caller in done and caller.cancelled()
        still_running = not stubborn.done()
        release.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(stubborn, BOUND_S)
        return cancelled, still_running

    assert asyncio.run(main()) == (True, True)


def test_the_pattern_it_replaces_swallows_the_callers_cancellation() -> None:
    """What the test above guards against: suppress(BaseException) around ``await task``
    eats the caller's CancelledError, so the caller returns normally."""

    async def old_stop(task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task

    async def main() -> bool:
        started, release = asyncio.Event(), asyncio.Event()
        stubborn = asyncio.create_task(_stubborn(started, release))
        await asyncio.wait_for(started.wait(), BOUND_S)
        caller = asyncio.create_task(old_stop(stubborn))
        await asyncio.sleep(0)
        caller.cancel()
        await asyncio.sleep(0)
        release.set()
        await asyncio.wait({caller}, timeout=BOUND_S)
        return caller.cancelled()

    assert asyncio.run(main()) is False
