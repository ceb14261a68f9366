"""Publish intake: updates checked, admitted to the batch queue and handed to the debouncer.

Rules: admission is decided once per call (``publish_many``): as many updates as fit in the
batch queue (``batch.max_queue``) are accepted, in order, each getting the next sequence
number; the accepted ones go to the debouncer in one message, counted in the backlog
until it takes them in, and their modules count as active. Only deliverable updates are
accepted: a known priority, a registered module, and a payload that encodes and whose
update fits one delivery frame (``daemon.max_frame_bytes``). An accepted update carries
its payload encoded (:mod:`modcoord.actors.payload`), by the same pack that measured it.

On failure: nothing is dropped silently: each refused update gets its own error in the
result, in its place: :class:`~modcoord.actors.errors.InvalidMessageError` naming the
priority, the module or the limit
(:func:`~modcoord.supervisor.protocol.delivery.encode_payload`), or
:class:`~modcoord.actors.errors.QueueFullError` naming ``batch.max_queue`` (counted as
rejected by the queue gauge); the updates that were accepted stay accepted.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from modcoord.actors._base import ActorHandle
from modcoord.actors.clock import Clock
from modcoord.actors.debouncer import PublishMany
from modcoord.actors.errors import InvalidMessageError, ModcoordError, QueueFullError
from modcoord.actors.shared.admission import Backlog, QueueGauge
from modcoord.actors.update import PRIORITY_RANK, Update
from modcoord.supervisor.daemon.engine import PublishItem
from modcoord.supervisor.protocol.delivery import encode_payload, payload_packer
from modcoord.supervisor.protocol.module import ModuleInfo

__all__ = ["Intake"]


class Intake:
    """The publish intake of one engine.

    Args:
        clock: stamps each accepted update and reads the debounce deadlines.
        infos: the registered modules (the engine's live table, read without copying).
        max_frame_bytes: ``daemon.max_frame_bytes``: every accepted update fits one frame.
        queue_gauge: the batch queue's admission.
        backlog: accepted updates the debouncer has not taken in yet.
        handles: the actors' handles; accepted updates go to ``handles["debouncer"]``.
        touch: called with the id of each module that published.
    """

    def __init__(self, *, clock: Clock, infos: Mapping[str, ModuleInfo], max_frame_bytes: int,
                 queue_gauge: QueueGauge, backlog: Backlog,
                 handles: Mapping[str, ActorHandle],
                 touch: Callable[[str], None]) -> None:
        self._clock = clock
        self._infos = infos
        self.max_frame_bytes = max_frame_bytes
        self._queue_gauge = queue_gauge
        self._backlog = backlog
        self._handles = handles
        self._touch = touch
        self._seq = itertools.count(1)

    def publish_many(self, items: Iterable[PublishItem]) -> list[int | ModcoordError]:
        """Publish several updates in one hop; per item, its seq or the error refusing it.

        Admission is decided once for the whole call: as many as fit in the batch queue
        are accepted, in order; the rest get :class:`QueueFullError` (and are counted).
        Only deliverable updates are accepted: a payload nested too deeply, that cannot be
        encoded, or whose update would not fit one delivery frame gets
        :class:`InvalidMessageError` naming the limit (:func:`~modcoord.supervisor.protocol.
        delivery.encode_payload`).
        """
        now = self._clock.monotonic()
        out, valid, items, encoded = self.check(items)
        if not valid:
            return out
        take = self._queue_gauge.admit_up_to(len(valid))
        seq = self._seq
        accepted: list[Update] = []
        touched: set[str] = set()
        for n, i in enumerate(valid):
            if n >= take:
                out[i] = QueueFullError(
                    f"batch queue full ({self._queue_gauge.max_queue} updates): publish "
                    "later, or raise batch.max_queue")
                continue
            module_id, key, _, priority = items[i]
            number = next(seq)
            accepted.append(Update(module_id, key, encoded[n], priority, number, now))
            out[i] = number
            touched.add(module_id)
        if accepted:
            self._backlog.add(len(accepted))
            self._handles["debouncer"].tell(PublishMany(tuple(accepted)))
        for module_id in touched:
            self._touch(module_id)
        return out

    def check(self, items: Iterable[PublishItem]
              ) -> tuple[list[Any], list[int], list[PublishItem], list[Any]]:
        """The checks of :meth:`publish_many` without admission: per item None (it may be
        accepted) or the :class:`InvalidMessageError` refusing it, the indices of the
        acceptable ones, the items as a list, and per acceptable item its payload's
        encoding (:func:`~modcoord.supervisor.protocol.delivery.encode_payload`). Another
        intake (the NATS agent's) uses it, so that both refuse exactly the same updates."""
        infos = self._infos
        max_frame = self.max_frame_bytes
        pack = payload_packer()
        out: list[Any] = []
        valid: list[int] = []
        encoded: list[Any] = []
        for i, (module_id, key, payload, priority) in enumerate(items := list(items)):
            if priority not in PRIORITY_RANK:
                out.append(InvalidMessageError(
                    f"priority must be one of critical, high, medium, low (got {priority!r})"))
            elif module_id not in infos:
                out.append(InvalidMessageError(f"module {module_id!r} is not registered"))
            else:
                try:
                    encoded.append(encode_payload(module_id, key, payload, max_frame, pack))
                except InvalidMessageError as exc:
                    out.append(exc)
                    continue
                out.append(None)
                valid.append(i)
        return out, valid, items, encoded

    def timers_overdue(self, grace: float = 0.0005) -> bool:
        """Whether a debounce deadline passed more than ``grace`` seconds ago unserved.

        The server holds publishers back while this is true: timers come before intake.
        """
        deadline = self._backlog.next_deadline
        return deadline is not None and self._clock.monotonic() - deadline > grace

