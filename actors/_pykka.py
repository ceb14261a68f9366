"""Every reach into pykka's private parts, in one place.

modcoord's actors need three things pykka does not offer publicly: building inbox items
(so a restart can buffer messages, asks included, and replay them in order), telling a
stop request apart from other inbox items (so a drained inbox keeps its stop replies), and
replacing the actor's message loop (so a ``BaseException`` crashes one actor instead of
stopping them all, and a timer's wake-up can jump the inbox). Each reach is marked
``PRIVATE pykka API`` below, with what breaks if it changes. Nothing else in modcoord
touches a pykka name starting with ``_``.

All of them were checked against pykka ``>=4.1,<5`` (:data:`PYKKA_RANGE`, the range
``setup.cfg`` allows; last read in 4.5.0). :func:`verify` checks they are still there;
``tests/unit/test_actors_package.py`` runs it, so an upgrade that removes one fails loudly in
the test suite, not at run time in a daemon.
"""

from __future__ import annotations

import inspect
import queue
from typing import Any

import pykka
from pykka import messages as _pykka_messages

# PRIVATE pykka API (pykka>=4.1,<5): ``pykka._envelope.Envelope(message, reply_to=None)``,
# the item type of every actor inbox, with the attributes ``message`` and ``reply_to``.
# If it moves or changes shape, this import (or :func:`envelope`) fails, and with it every
# handle's tell/ask and the restart buffer.
from pykka._envelope import Envelope

__all__ = [
    "PYKKA_RANGE",
    "Envelope",
    "LoopActor",
    "UrgentInbox",
    "envelope",
    "is_stop_request",
    "verify",
]

PYKKA_RANGE = ">=4.1,<5"
"""The pykka versions the private reaches below were checked against."""


def envelope(message: Any, reply_to: pykka.Future[Any] | None = None) -> Envelope[Any]:
    """Wrap ``message`` as a pykka inbox item (``reply_to``: the future an ask waits on)."""
    return Envelope(message, reply_to=reply_to)


def is_stop_request(message: Any) -> bool:
    """Whether ``message`` is pykka's own stop request (``ActorRef.stop()``).

    PRIVATE pykka API (pykka>=4.1,<5): ``pykka.messages._ActorStop``. If it is renamed,
    :func:`verify` fails; at run time a drained inbox would then replay a stop request to
    the successor (stopping it) instead of answering it.
    """
    return isinstance(message, _pykka_messages._ActorStop)


class UrgentInbox(queue.Queue):  # type: ignore[type-arg]
    """An actor inbox where a timer's wake-up can jump the queue (:meth:`put_urgent`).

    A debounce deadline must not wait behind thousands of queued publishes: that is the
    difference between a timer that fires on time under load and one that fires late.
    """

    def put_urgent(self, item: Any) -> None:
        """Put ``item`` at the front of the inbox (callable from any thread).

        Uses ``queue.Queue``'s own lock, condition and deque (``not_empty``, ``queue``,
        ``unfinished_tasks``): CPython's implementation, stable since Python 3.0; not pykka.
        """
        with self.not_empty:
            self.queue.appendleft(item)
            self.unfinished_tasks += 1
            self.not_empty.notify()


class LoopActor(pykka.ThreadingActor):
    """pykka's threading actor with its private hooks given public names.

    Subclasses implement :meth:`run_loop` (the whole message loop, called once in the
    actor's thread after ``on_start``) and call :meth:`receive` for each message's pykka
    handling (stop requests, proxy calls, then ``on_receive``).
    """

    @staticmethod
    def _create_actor_inbox() -> Any:
        # PRIVATE pykka API (pykka>=4.1,<5): ``Actor._create_actor_inbox()``, the factory
        # of ``self.actor_inbox``. If pykka stops calling it, inboxes are plain queues:
        # ``UrgentInbox.put_urgent`` is then missing and timer wake-ups fail (loudly,
        # with AttributeError in ``ManagedActor.tell_urgent``).
        return UrgentInbox()

    def _actor_loop_running(self) -> None:
        # PRIVATE pykka API (pykka>=4.1,<5): ``Actor._actor_loop_running()``, the loop
        # between ``on_start`` and the teardown. If pykka stops calling it, its own loop
        # runs instead: a BaseException would stop every actor and crashes would not be
        # reported to the supervisor (``verify`` checks that ``_actor_loop`` calls it).
        self.run_loop()

    # PRIVATE pykka API (pykka>=4.1,<5): ``Actor._handle_receive(message)``, pykka's
    # handling of one message (a stop request stops the actor, proxy calls run, anything
    # else reaches ``on_receive``; exceptions propagate to :meth:`run_loop`). Bound here
    # as ``receive`` without a wrapper frame: it runs for every message. If it is renamed,
    # importing this module fails at once with an AttributeError naming it.
    receive = pykka.ThreadingActor._handle_receive

    def run_loop(self) -> None:
        """The message loop: take envelopes from ``self.actor_inbox`` until stopped."""
        raise NotImplementedError


def verify() -> list[str]:
    """Check that every private pykka name used here still exists and is still used by
    pykka the way this module relies on.

    Returns:
        The problems found (empty when all is well); each names the private API, the
        range it was checked against and what would break.
    """
    problems: list[str] = []
    actor = pykka.ThreadingActor
    for name in ("_create_actor_inbox", "_actor_loop_running", "_handle_receive",
                 "_actor_loop"):
        if not callable(getattr(actor, name, None)):
            problems.append(f"pykka.ThreadingActor.{name} is missing (checked for pykka"
                            f"{PYKKA_RANGE}): modcoord's actor loop cannot be installed")
    loop = getattr(actor, "_actor_loop", None)
    if loop is not None:
        try:
            source = inspect.getsource(loop)
        except (OSError, TypeError):
            source = "_actor_loop_running"  # no source to read: trust the names above
        if "_actor_loop_running" not in source:
            problems.append("pykka's _actor_loop no longer calls _actor_loop_running: "
                            "modcoord's crash containment would not run")
    if not isinstance(getattr(_pykka_messages, "_ActorStop", None), type):
        problems.append(f"pykka.messages._ActorStop is missing (checked for pykka"
                        f"{PYKKA_RANGE}): drained inboxes cannot answer stop requests")
    probe = Envelope("probe", reply_to=None)
    if getattr(probe, "message", None) != "probe" or not hasattr(probe, "reply_to"):
        problems.append("pykka._envelope.Envelope lost its message/reply_to attributes: "
                        "handles cannot buffer or replay messages")
    return problems
