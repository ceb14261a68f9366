"""The debouncer actor: per-key latest-wins delays, with a fast path for critical updates.

Every update is keyed by ``(module_id, key)``. A publish schedules delivery at
``now + delay(priority)`` (``critical_delay_ms`` for ``critical``, ``delay_ms`` otherwise).
A later publish for the same key replaces the pending payload (latest wins) and restarts the
timer, but never beyond ``first_pending_publish + max_wait_ms``, so a continuous stream
still gets through. The pending entry keeps the highest priority seen among the publishes
it collapsed; a publish of higher priority than the pending one only ever pulls the
deadline in, never pushes it out.

Scheduling uses one heap of ``(deadline, counter, key)`` for every key, invalidated lazily
(an item is live only while its ``counter`` is the entry's current one), and exactly one
armed clock timer, for the earliest deadline. On a wake every due key is emitted, in
deadline then arrival order, to the batcher as one :class:`~modcoord.actors.batcher.Enqueue`
message, and the timer is re-armed for the next deadline. Emitted, flushed and cancelled
keys are forgotten (their dict entries deleted). The keys and their heap are a
:class:`~modcoord.actors.debouncer_pending.PendingTable`; the statistics and the handover
are :mod:`modcoord.actors.debouncer_reports` (re-exported here).

With ``debounce.enabled: false`` updates pass straight through: each publish message is
forwarded at once as one ``Enqueue``.

With ``adaptive.enabled: true`` (HYBRID, FULLY_AUTO; never MANUAL) the delay of a
non-critical publish is the one :class:`~modcoord.actors.adaptive.DebounceTuner` learnt for
its key from the gaps between that key's publishes (its module's while the key is new),
measured on ``Update.published_at`` (the clock reading at acceptance; the debouncer's own
reading for an update without one). Critical publishes keep ``critical_delay_ms`` and are
not observed. With ``adaptive.enabled: false`` the code path is exactly the fixed one.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
from dataclasses import dataclass
from typing import Any

from loguru import logger

from modcoord.actors._base import ActorContext, ManagedActor, handles
from modcoord.actors.adaptive import DebounceTuner
from modcoord.actors.batcher import Enqueue
from modcoord.actors.clock import TimerHandle
from modcoord.actors.debouncer_pending import PendingTable, Slot
from modcoord.actors.debouncer_reports import (
    DebouncerHandover,
    DebouncerStatistics,
    PendingEntry,
)
from modcoord.actors.errors import InvalidMessageError, ModcoordError
from modcoord.actors.histogram import LatencyHistogram
from modcoord.actors.message import Message
from modcoord.actors.settings import AdaptiveSettings, DebounceSettings, Tuned
from modcoord.actors.shared.admission import Backlog
from modcoord.actors.tuning import DebounceSummary, frozen_parameter
from modcoord.actors.update import PRIORITY_RANK, Update

__all__ = [
    "Cancel",
    "DebouncerActor",
    "DebouncerHandover",
    "DebouncerStatistics",
    "Flush",
    "Pending",
    "PendingEntry",
    "Publish",
    "PublishMany",
]

_CRITICAL = PRIORITY_RANK["critical"]
_TIMER_TOKENS = itertools.count(1)  # unique across actor instances (successors included)


# -- messages ------------------------------------------------------------------------------



@dataclass(frozen=True)
class PublishMany(Message):
    """Debounce these updates (the hot path: the façade sends one per socket read).

    Refused with :class:`InvalidMessageError` — and none of the updates accepted — if an
    item is not an :class:`Update` or has an unknown priority.
    """

    updates: tuple[Update, ...]


@dataclass(frozen=True)
class Publish(Message):
    """Debounce one update (same rules and refusals as :class:`PublishMany`)."""

    update: Update


@dataclass(frozen=True)
class Flush(Message):
    """Deliver pending updates now; the reply is how many were delivered.

    Both ``None``: everything pending. ``module_id`` only: every key of that module.
    Both given: that one ``(module_id, key)``. (``key`` only: that key of every module.)
    """

    module_id: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class Cancel(Message):
    """Drop the pending update of ``(module_id, key)``; the reply says whether there was one."""

    module_id: str
    key: str


@dataclass(frozen=True)
class Pending(Message):
    """Ask how many keys have an update pending."""


@dataclass(frozen=True)
class _Wake(Message):
    """Private: the debouncer's clock timer fired (``token`` names which timer)."""

    token: int = 0


# -- the actor -------------------------------------------------------------------------------


class DebouncerActor(ManagedActor):
    """Debounces updates per ``(module_id, key)`` and hands due ones to the batcher.

    Args:
        settings: a :class:`DebounceSettings` (or its dict).
        context: clock, peer handles (``batcher`` is required), failure reporting, and
            ``shared`` (``backlog`` is kept current, lateness goes to ``metrics`` too,
            updates sent to the batcher count in ``queue_gauge``).
        takeover: a predecessor's :class:`DebouncerHandover`, restored before any message.
    """

    actor_name = "debouncer"
    settings_type = DebounceSettings

    def __init__(self, settings: Any, context: ActorContext, takeover: Any = None) -> None:
        super().__init__(settings, context, takeover)
        self._pending = PendingTable()
        self._collected_inline = 0
        self._backlog: Backlog = context.shared.backlog
        self._timer: TimerHandle | None = None
        self._armed_deadline: float | None = None
        self._token = 0
        self._received = 0
        self._emitted = 0
        self._collapsed = 0
        self._cancelled = 0
        self._undelivered = 0
        self._lateness = LatencyHistogram(context.clock)
        self._enabled = True
        self._delay = 0.0
        self._critical_delay = 0.0
        self._max_wait = 0.0
        self._tuner: DebounceTuner | None = None
        self._load(self.settings)

    def _coerce(self, settings: Any) -> Any:
        """Take ``debounce`` alone (never adapts) or a :class:`Tuned` pair; keeps the
        ``adaptive`` part aside and returns the section."""
        self._adaptive: AdaptiveSettings | None
        settings, self._adaptive = Tuned.split(settings)
        return super()._coerce(settings)

    def _load(self, settings: DebounceSettings) -> None:
        self._enabled = settings.enabled
        self._delay = settings.delay_ms / 1000.0
        self._critical_delay = settings.critical_delay_ms / 1000.0
        self._max_wait = settings.max_wait_ms / 1000.0
        adaptive = self._adaptive
        if adaptive is not None and adaptive.enabled and settings.enabled:
            self._tuner = DebounceTuner(settings, adaptive, self.actor_name,
                                        self.context.shared.widening)
        else:
            self._tuner = None

    # -- handlers --

    @handles(PublishMany)
    def _on_publish_many(self, message: PublishMany) -> None:
        self._backlog.sub(len(message.updates))
        self._accept(message.updates)

    @handles(Publish)
    def _on_publish(self, message: Publish) -> None:
        self._accept((message.update,))

    @handles(Flush)
    def _on_flush(self, message: Flush) -> int:
        return self._flush(message.module_id, message.key, reraise=True)

    @handles(Cancel)
    def _on_cancel(self, message: Cancel) -> bool:
        entry = self._pending.entries.pop((message.module_id, message.key), None)
        if entry is None:
            return False
        self._cancelled += 1
        self._rearm()
        return True

    @handles(Pending)
    def _on_pending(self, message: Pending) -> int:
        return len(self._pending.entries)

    @handles(_Wake)
    def _on_wake(self, message: _Wake) -> None:
        if message.token == self._token:  # our armed timer fired; otherwise a stale one
            self._timer = None
            self._armed_at = None
        self._fire_due()

    def _fire_due(self) -> None:
        """Emit every key due now (one Enqueue), record the fire's lateness, re-arm."""
        clock = self.clock
        pending = self._pending
        now = clock.monotonic()
        out: list[Update] = []
        late: list[float] = []
        while True:  # each round pops at least one heap item, so this ends
            pending.collect_due(now, out, late)
            heap = pending.heap
            if not heap:
                break
            now = clock.monotonic()
            if heap[0][0] > now:
                break  # else time moved on while we worked: take what fell due meanwhile
        if out:
            self._record_lateness(late)
            self._deliver(out)
        self._rearm()

    # -- the hot path --

    def _accept(self, updates: tuple[Update, ...]) -> None:
        """Debounce ``updates`` (all or none).

        Raises:
            InvalidMessageError: an item is not an Update or has an unknown priority;
                nothing is accepted then.
        """
        rank_of = PRIORITY_RANK
        for u in updates:
            if type(u) is not Update or u.priority not in rank_of:
                raise InvalidMessageError(
                    f"debouncer: not a valid update: {u!r:.120}"
                )
        n = len(updates)
        if not n:
            return
        self._received += n
        if not self._enabled:
            self._deliver(list(updates))
            return
        now = self.clock.monotonic()
        pending = self._pending
        entries = pending.entries
        heap = pending.heap
        push = heapq.heappush
        counter = pending.counter
        delay = self._delay
        critical_delay = self._critical_delay
        max_wait = self._max_wait
        earliest = math.inf
        collapsed = 0
        clock = self.clock
        tune = None if self._tuner is None else self._tuner.delay_for
        for i, u in enumerate(updates):
            if not i & 63 and self._armed_at is not None \
                    and clock.monotonic() >= self._armed_at:
                # A long batch of publishes must not hold up a deadline that passed
                # while we work through it: fire inline, as the timer would have.
                self._collected_inline += 1
                self._fire_due()
                if earliest != math.inf and (self._armed_at is None
                                             or earliest < self._armed_at):
                    self._arm(earliest)
                now = clock.monotonic()
            rank = rank_of[u.priority]
            key = (u.module_id, u.key)
            if tune is not None and rank != _CRITICAL:
                delay = tune(u.module_id, u.key, u.published_at or now)
            entry = entries.get(key)
            if entry is None:
                deadline = now + (critical_delay if rank == _CRITICAL else delay)
                seq = next(counter)
                entries[key] = Slot(u, rank, now, deadline, seq)
                push(heap, (deadline, seq, key))
            else:
                collapsed += 1
                entry.update = u
                if rank < entry.rank:  # higher priority: only ever pull the deadline in
                    entry.rank = rank
                    deadline = now + (critical_delay if rank == _CRITICAL else delay)
                    if deadline >= entry.deadline:
                        continue
                else:  # restart the timer, capped at first + max_wait
                    deadline = now + (critical_delay if entry.rank == _CRITICAL else delay)
                    cap = entry.first_at + max_wait
                    if deadline > cap:
                        deadline = cap
                    if deadline >= entry.deadline:
                        # Later (the usual restart): no new heap item. The live item
                        # stays where it is; when it comes up early it is pushed again
                        # at the real deadline (see _collect_due). Streams of publishes
                        # to one key cost no heap work.
                        entry.deadline = deadline
                        continue
                seq = next(counter)
                entry.deadline = deadline
                entry.seq = seq
                push(heap, (deadline, seq, key))
            if deadline < earliest:
                earliest = deadline
        self._collapsed += collapsed
        if earliest != math.inf and (self._armed_at is None or earliest < self._armed_at):
            self._arm(earliest)
        if len(heap) > 2 * len(entries) + 1024:
            pending.rebuild()

    # -- scheduling --

    def _rearm(self) -> None:
        """Arm the one timer for the earliest live deadline (or disarm when none).

        Re-arms only when that deadline is earlier than the armed one; a timer armed too
        early just wakes the actor once for nothing.
        """
        top = self._pending.earliest()
        if top is None:
            self._disarm()
            return
        if self._armed_at is None or top < self._armed_at:
            self._arm(top)

    @property
    def _armed_at(self) -> float | None:
        return self._armed_deadline

    @_armed_at.setter
    def _armed_at(self, deadline: float | None) -> None:
        self._armed_deadline = deadline
        self._backlog.next_deadline = deadline  # the server reads it (timers_overdue)

    def _arm(self, deadline: float) -> None:
        """Replace the armed timer with one at ``deadline`` that tells us ``_Wake``."""
        if self._timer is not None:
            self._timer.cancel()
        token = next(_TIMER_TOKENS)
        self._token = token
        tell_urgent = self.tell_urgent

        def fire() -> None:
            # Jumps the inbox so a deadline never waits behind queued publishes. If this
            # actor is gone, its successor has armed its own timer.
            tell_urgent(_Wake(token))

        self._armed_at = deadline
        self._timer = self.clock.call_at(deadline, fire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._armed_at = None

    # -- delivery --

    def _emit(self, updates: tuple[Update, ...]) -> None:
        """Send ``updates`` to the batcher as one ``Enqueue``.

        Raises:
            ModcoordError: the batcher's handle refused it (stopped for good).
        """
        self.peer("batcher").tell(Enqueue(updates=updates))
        # In transit to the batcher: counts for admission.
        self.context.shared.queue_gauge.sent(len(updates))

    def _deliver(self, updates: list[Update], reraise: bool = False) -> bool:
        """Emit ``updates`` and count them; return whether the batcher took them.

        On a refusal the updates are counted as ``undelivered`` and logged as an error.

        Raises:
            ModcoordError: the batcher refused them and ``reraise`` is set.
        """
        try:
            self._emit(tuple(updates))
        except ModcoordError as exc:
            self._undelivered += len(updates)
            logger.bind(actor=self.actor_name).error(
                "could not hand updates to the batcher", updates=len(updates), error=str(exc))
            if reraise:
                raise
            return False
        self._emitted += len(updates)
        return True

    def _record_lateness(self, late: list[float]) -> None:
        """Record how late this timer fire was: the lateness of the most overdue key.

        One sample per fire (not per key): a wake that emits 10,000 keys is one timer
        firing, and recording per key would cost more than the emission itself.
        """
        seconds = max(late)
        self._lateness.record(seconds)
        self.context.shared.metrics.record("debounce_lateness", seconds)

    def _flush(self, module_id: str | None, key: str | None, reraise: bool = False) -> int:
        """Deliver the matching pending updates now (deadline, then arrival order).

        Returns:
            How many were handed to the batcher (0 if nothing matched or it refused).

        Raises:
            ModcoordError: the batcher refused them and ``reraise`` is set.
        """
        selected = self._pending.take(module_id, key)
        self._rearm()
        if not selected:
            return 0
        updates = [e.final() for e in selected]
        return len(updates) if self._deliver(updates, reraise=reraise) else 0

    # -- ManagedActor hooks --

    def statistics(self) -> DebouncerStatistics:
        """Return an immutable snapshot of the counters and the lateness percentiles."""
        late = self._lateness.total()
        return DebouncerStatistics(
            received=self._received,
            emitted=self._emitted,
            collapsed=self._collapsed,
            cancelled=self._cancelled,
            pending=len(self._pending.entries),
            lateness_p50_ms=late.p50,
            lateness_p99_ms=late.p99,
            lateness_max_ms=late.max,
            undelivered=self._undelivered,
            adaptive=self._adaptive_summary(),
        )

    def _adaptive_summary(self) -> DebounceSummary:
        tuner = self._tuner
        if tuner is not None:
            return tuner.summary(self.clock.monotonic())
        if self._adaptive is None or not self._adaptive.enabled:
            why = "adaptive.enabled: false (MANUAL never adapts)"
        else:
            why = "debounce.enabled: false"
        return DebounceSummary(enabled=False, parameters={
            "debounce.delay_ms": frozen_parameter(self.settings.delay_ms, why)})

    def apply_settings(self, old: Any, new: Any) -> None:
        """Apply new settings, keeping pending work.

        Disabled now: everything pending is flushed. Delays or ``max_wait`` shrunk:
        pending deadlines are pulled in to ``now + new delay`` (and ``first + new
        max_wait``), never pushed out. Otherwise scheduled deadlines stay as they are.
        """
        before = (self._delay, self._critical_delay, self._max_wait)
        tuner = self._tuner
        self._load(new)
        if tuner is not None and self._tuner is not None \
                and self._tuner_config(tuner) == self._tuner_config(self._tuner):
            self._tuner = tuner  # same tuning: keep what was learnt
        if not self._enabled:
            self._flush(None, None)
            return
        if not self._pending.entries:
            return
        after = (self._delay, self._critical_delay, self._max_wait)
        if not any(a < b for a, b in zip(after, before, strict=True)):
            return
        now = self.clock.monotonic()
        for entry in self._pending.entries.values():
            pulled = min(
                entry.deadline,
                now + (self._critical_delay if entry.rank == _CRITICAL else self._delay),
                max(now, entry.first_at + self._max_wait),
            )
            entry.deadline = pulled
        self._pending.rebuild()
        self._rearm()

    @staticmethod
    def _tuner_config(tuner: DebounceTuner) -> tuple[Any, ...]:
        return (tuner.configured_ms, tuner.min_ms, tuner.max_ms, tuner.quantile,
                tuner.margin, tuner.min_samples, tuner.half_life, tuner.forget_after_s,
                tuner.max_keys, tuner.top_n, tuner.log_change)

    def export_pending(self) -> DebouncerHandover:
        """Return the pending work in emission order.

        When called because this actor has ended (a crash or a handover), its timer is
        cancelled too, so only the successor's timer remains.
        """
        ordered = self._pending.ordered()
        if self.actor_stopped.is_set() or getattr(self, "_handed_over", False):
            self._disarm()  # this actor is ending (crash or handover: see ManagedActor)
        return DebouncerHandover(
            entries=tuple(PendingEntry(e.final(), e.first_at, e.deadline) for e in ordered)
        )

    def restore(self, pending: Any) -> None:
        """Re-insert a predecessor's pending entries and arm the timer.

        Entries keep their ``first_at`` and deadline (a deadline already past is emitted
        at the first wake, its lateness counted). Anything but a
        :class:`DebouncerHandover` (or ``None``) is logged as an error and ignored.
        """
        if pending is None:
            return
        if not isinstance(pending, DebouncerHandover):
            logger.bind(actor=self.actor_name).error(
                "cannot restore pending work of an unknown type", type=type(pending).__name__)
            return
        for item in pending.entries:
            update = item.update
            rank = PRIORITY_RANK.get(update.priority)
            if rank is None:  # not ours to judge now: keep it, as a normal update
                update = dataclasses.replace(update, priority="medium")
                rank = PRIORITY_RANK["medium"]
            self._pending.entries[update.dedup_key] = Slot(
                update, rank, item.first_at, item.deadline, next(self._pending.counter)
            )
        self._pending.rebuild()
        self._rearm()

    def flush_pending(self) -> None:
        """Deliver everything pending now and cancel the timer (called on stop)."""
        n = self._flush(None, None)
        self._disarm()
        if n:
            logger.bind(actor=self.actor_name).info("flushed pending updates on stop",
                                                          updates=n)
