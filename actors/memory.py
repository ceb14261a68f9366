"""The memory manager: module activity sweeps and memory-pressure cleanup.

Two pieces:

- :class:`~modcoord.actors.shared.activity.ActivityTable` (shared, in ``context.shared``)
  is a thread-safe record of when each module was last active. The façade touches it on
  every publish, coordinate or call, in the I/O thread, without a message hop; the common
  path is one dict write and one set membership test.
- :class:`MemoryManagerActor` (``memory``) owns the table's maintenance. Every
  ``memory.cleanup_interval_ms`` it tells the cache to purge expired entries and *sweeps*
  the modules inactive longer than ``memory.inactive_after_ms``: the batcher is told to
  drop their subscriptions (the module stays registered and connected) and the table marks
  them swept. The next activity of a swept module makes :meth:`ActivityTable.touch` return
  ``True`` (exactly once), and the caller tells the actor :class:`Reactivate`, which
  subscribes the module again with its remembered sources.

  A live connection is activity: a module that only listens is active while connected.
  Before each sweep the actor asks ``shared.connection_states(stall_s)`` (the
  coordinator's: module id → whether its connection is open and takes its output, with
  ``stall_s = inactive_after_ms``) and touches every module whose connection is live
  (re-activating it if it was swept). So only modules whose connection is gone or
  *stalled* (output waiting, none of it taken for ``inactive_after_ms``), or in-process
  modules that make no calls, are swept. The daemon counts this rather than a client
  heartbeat because a heartbeat proves only that a client can write, while a stalled
  reader is exactly what must be caught; and it needs no cooperation from old clients.
  A swept module is told: ``shared.notify_swept(module_id, notice)`` sends a ``swept``
  event on its connection (queued behind what it has not read yet) and the sweep is
  logged with its reason; the client then registers the module again (which
  re-subscribes it, see :class:`Track`).

  Every ``memory.check_interval_ms`` it reads the daemon's resident memory. Above
  ``memory.max_rss_mb`` it runs a *pressure* cleanup, with hysteresis: it fires once and
  not again until the RSS has fallen below 90% of the limit and risen above it again.
  What a pressure (or forced) cleanup does depends on ``memory.strategy``:

  ============  ==================================================================
  conservative  purge expired cache entries, sweep inactive modules
  balanced      the above, cache ``Shrink(0.5)``, monitor ``Trim()``, the connections'
                idle buffers given back (``shared.release_buffers``), ``gc.collect()``
  aggressive    the above but cache ``Clear()`` instead of ``Shrink``
  ============  ==================================================================

  The interval cleanup always purges and sweeps only. With ``adaptive.resources``
  (HYBRID, FULLY_AUTO; never MANUAL) each check also runs
  :class:`~modcoord.actors.resources.ResourceAwareness`: under memory pressure the
  strategy in force escalates a step at a time and the cache is capped; under CPU
  pressure delays and windows widen; both relax with hysteresis (see that module).
  The actor never blocks on another actor for a timer-driven cleanup (it ``tell``\\ s);
  only :class:`ForceCleanup` waits briefly (:data:`FORCED_REPLY_TIMEOUT_S` per reply) so
  its report can carry the cache's counts.
"""

from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pykka
from loguru import logger

from modcoord.actors._base import ActorContext, ManagedActor, handles
from modcoord.actors.batcher import Subscribe, Unsubscribe
from modcoord.actors.cache import Clear, Purge, Shrink
from modcoord.actors.clock import TimerHandle
from modcoord.actors.errors import InvalidMessageError, ModcoordError
from modcoord.actors.memory_reports import CleanupReport, MemoryHandover, MemoryStatistics
from modcoord.actors.message import Message
from modcoord.actors.monitor import Trim
from modcoord.actors.resources import ResourceAwareness
from modcoord.actors.settings import AdaptiveSettings, MemorySettings, Tuned
from modcoord.actors.shared import RssReader
from modcoord.actors.shared.activity import ActivityTable

__all__ = [
    "CLEANUP_REASONS",
    "FORCED_REPLY_TIMEOUT_S",
    "REARM_FRACTION",
    "CleanupReport",
    "ForceCleanup",
    "Forget",
    "MemoryHandover",
    "MemoryManagerActor",
    "MemoryStatistics",
    "Reactivate",
    "Touch",
    "Track",
]

MB = 1024 * 1024
REARM_FRACTION = 0.9
"""After a pressure cleanup, RSS must fall below this fraction of the limit to re-arm."""
FORCED_REPLY_TIMEOUT_S = 0.5
"""How long a forced cleanup waits for each of the cache's replies (then counts 0)."""
CLEANUP_REASONS: tuple[str, ...] = ("interval", "pressure", "forced")

_log = logger.bind(actor="memory")


# -- messages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Track(Message):
    """A module registered: remember the sources it subscribes to, and touch it."""

    module_id: str
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class Forget(Message):
    """A module unregistered: drop its activity and sources."""

    module_id: str


@dataclass(frozen=True)
class Touch(Message):
    """Activity of a module (for callers without access to the shared table)."""

    module_id: str


@dataclass(frozen=True)
class Reactivate(Message):
    """A swept module became active: subscribe it again (sent after ``touch`` → True)."""

    module_id: str


@dataclass(frozen=True)
class ForceCleanup(Message):
    """Run a cleanup now with the strategy's full actions; the reply is a CleanupReport."""


@dataclass(frozen=True)
class _CleanupTick(Message):
    token: int = 0


@dataclass(frozen=True)
class _CheckTick(Message):
    token: int = 0


# -- the actor -----------------------------------------------------------------------------


_LIBC: Any = None


def _release_to_os() -> bool:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``), so a cleanup shows
    in RSS. Returns whether it ran; a no-op off glibc."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC is False:
        return False
    try:
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def _check_module_id(module_id: Any) -> str:
    if not isinstance(module_id, str) or not module_id:
        raise InvalidMessageError(f"memory: module_id must be a non-empty string, "
                                  f"not {module_id!r}")
    return module_id


class MemoryManagerActor(ManagedActor):
    """The ``memory`` actor. See the module docstring for what it does.

    Uses ``context.shared``: ``activity`` (the :class:`ActivityTable`), ``rss_reader``
    (resident bytes; psutil by default), ``connection_states`` and ``notify_swept``. A
    failing ``rss_reader`` is logged once and the check skipped; it never crashes the actor.

    Peers: ``cache`` (``Purge``, ``Shrink``, ``Clear``), ``batcher`` (``Subscribe``,
    ``Unsubscribe``), ``monitor`` (``Trim``). A missing or stopped peer is skipped.
    """

    actor_name = "memory"
    settings_type = MemorySettings
    settings: MemorySettings

    def __init__(self, settings: Any, context: ActorContext, takeover: Any = None) -> None:
        super().__init__(settings, context, takeover)
        self.activity: ActivityTable = context.shared.activity
        self._read_rss: RssReader = context.shared.rss_reader
        self._sources: dict[str, tuple[str, ...]] = {}
        self._unsubscribed: set[str] = set()
        self._armed = True
        self._cleanups: dict[str, int] = dict.fromkeys(CLEANUP_REASONS, 0)
        self._last_rss: int | None = None
        self._rss_failing = False
        self._sweeps_total = 0
        self._reactivations_total = 0
        self._cleanup_timer: TimerHandle | None = None
        self._cleanup_deadline = 0.0
        self._cleanup_token = 0
        self._check_timer: TimerHandle | None = None
        self._check_deadline = 0.0
        self._check_token = 0
        self._resources = ResourceAwareness(context.shared, self._adaptive)

    def _coerce(self, settings: Any) -> Any:
        """Take ``memory`` alone (no resource awareness) or a :class:`Tuned` pair; keeps
        the ``adaptive`` part aside and returns the section."""
        self._adaptive: AdaptiveSettings | None
        settings, self._adaptive = Tuned.split(settings)
        return super()._coerce(settings)

    # -- lifecycle --

    def started(self) -> None:
        self._arm_cleanup()
        self._arm_check()

    def on_stop(self) -> None:
        super().on_stop()
        for timer in (self._cleanup_timer, self._check_timer):
            if timer is not None:
                timer.cancel()

    def apply_settings(self, old: Any, new: Any) -> None:
        """Re-arm the timers whose interval changed; strategy and limits apply at once."""
        if old.cleanup_interval_ms != new.cleanup_interval_ms:
            self._arm_cleanup()
        if old.check_interval_ms != new.check_interval_ms:
            self._arm_check()
        if old.strategy != new.strategy:
            _log.info("memory strategy changed", previous=old.strategy, strategy=new.strategy)
        self._resources.reconfigure(self._adaptive, memory=new)
        self._resources.refresh()

    # -- timers --

    def _post(self, message: Message) -> None:
        """Timer callback: tell this actor a tick; ignored if the actor is gone."""
        with contextlib.suppress(pykka.ActorDeadError, ModcoordError):
            self.actor_ref.tell(message)

    def _arm_cleanup(self, deadline: float | None = None) -> None:
        if self._cleanup_timer is not None:
            self._cleanup_timer.cancel()
        self._cleanup_token += 1
        if deadline is None:
            deadline = self.clock.monotonic() + self.settings.cleanup_interval_ms / 1000.0
        self._cleanup_deadline = deadline
        self._cleanup_timer = self.clock.call_at(
            deadline, functools.partial(self._post, _CleanupTick(self._cleanup_token))
        )

    def _arm_check(self, deadline: float | None = None) -> None:
        if self._check_timer is not None:
            self._check_timer.cancel()
        self._check_token += 1
        if deadline is None:
            deadline = self.clock.monotonic() + self.settings.check_interval_ms / 1000.0
        self._check_deadline = deadline
        self._check_timer = self.clock.call_at(
            deadline, functools.partial(self._post, _CheckTick(self._check_token))
        )

    def _next_deadline(self, previous: float, interval_ms: float) -> float:
        """The next tick on the original schedule, or a full interval from now if late."""
        interval = interval_ms / 1000.0
        now = self.clock.monotonic()
        deadline = previous + interval
        return deadline if deadline > now else now + interval

    @handles(_CleanupTick)
    def _on_cleanup_tick(self, message: _CleanupTick) -> None:
        if message.token != self._cleanup_token:
            return  # a timer replaced by a reconfigure
        self._arm_cleanup(
            self._next_deadline(self._cleanup_deadline, self.settings.cleanup_interval_ms)
        )
        self._cleanup("interval")

    @handles(_CheckTick)
    def _on_check_tick(self, message: _CheckTick) -> None:
        if message.token != self._check_token:
            return
        self._arm_check(
            self._next_deadline(self._check_deadline, self.settings.check_interval_ms)
        )
        self._check_pressure()

    # -- module tracking --

    @handles(Track)
    def _on_track(self, message: Track) -> None:
        module_id = _check_module_id(message.module_id)
        sources = message.sources
        if not isinstance(sources, (tuple, list)) or not all(isinstance(s, str) for s in sources):
            raise InvalidMessageError("memory: sources must be a sequence of strings")
        self._sources[module_id] = tuple(sources)
        # A (re-)registration subscribes the module anew: it is no longer swept.
        if module_id in self._unsubscribed:
            self._unsubscribed.discard(module_id)
            self._reactivations_total += 1
            _log.bind(module=module_id).info(
                "module registered again: subscriptions restored")
        self.activity.touch(module_id)
        self.activity.unmark_swept(module_id)

    @handles(Forget)
    def _on_forget(self, message: Forget) -> None:
        module_id = _check_module_id(message.module_id)
        self._sources.pop(module_id, None)
        self._unsubscribed.discard(module_id)
        self.activity.forget(module_id)

    @handles(Touch)
    def _on_touch(self, message: Touch) -> None:
        module_id = _check_module_id(message.module_id)
        if self.activity.touch(module_id) or module_id in self._unsubscribed:
            self._reactivate(module_id)

    @handles(Reactivate)
    def _on_reactivate(self, message: Reactivate) -> None:
        self._reactivate(_check_module_id(message.module_id))

    def _reactivate(self, module_id: str, why: str = "") -> None:
        self.activity.unmark_swept(module_id)
        if module_id not in self._unsubscribed:
            return  # already active (duplicate notice) or not tracked
        self._unsubscribed.discard(module_id)
        sources = self._sources.get(module_id)
        if sources is None:
            return
        self._tell("batcher", Subscribe(module_id, sources))
        self._reactivations_total += 1
        _log.bind(module=module_id, **({"why": why} if why else {})).info(
            "module active again: subscriptions restored")

    # -- cleanup --

    def _tell(self, peer: str, message: Message) -> None:
        handle = self.context.handles.get(peer)
        if handle is None:
            return
        try:
            handle.tell(message)
        except ModcoordError as exc:
            _log.debug("could not tell a peer", peer=peer, error=str(exc))

    def _ask_count(self, peer: str, message: Message) -> int:
        """Ask a peer for a count, waiting at most FORCED_REPLY_TIMEOUT_S; 0 on failure."""
        handle = self.context.handles.get(peer)
        if handle is None:
            return 0
        try:
            result = handle.ask(message, timeout=FORCED_REPLY_TIMEOUT_S)
        except Exception as exc:  # the cleanup goes on without the count
            _log.debug("no count from a peer", peer=peer, error=repr(exc))
            return 0
        return result if isinstance(result, int) and not isinstance(result, bool) else 0

    def _cache_op(self, message: Message, wait: bool) -> int:
        if wait:
            return self._ask_count("cache", message)
        self._tell("cache", message)
        return 0

    def _connection_states(self, stall_s: float) -> dict[str, bool]:
        """Module id → whether its connection is live (empty if nobody can tell)."""
        try:
            return dict(self.context.shared.connection_states(stall_s))
        except Exception as exc:  # sweep as if no connection could tell
            _log.warning("connection states unavailable", error=repr(exc))
            return {}

    def _sweep(self) -> list[str]:
        """Touch the modules whose connection is live; unsubscribe (and tell) the tracked
        modules inactive longer than ``inactive_after_ms``."""
        now = self.clock.monotonic()
        inactive_s = self.settings.inactive_after_ms / 1000.0
        cutoff = now - inactive_s
        states = self._connection_states(inactive_s)
        for module_id, live in states.items():
            if live and module_id in self._sources and (
                    self.activity.touch(module_id) or module_id in self._unsubscribed):
                self._reactivate(module_id, "its connection reads again")
        swept: list[str] = []
        for module_id in self.activity.inactive_since(cutoff):
            if module_id not in self._sources:
                self.activity.forget(module_id)  # activity of an unregistered module
                continue
            if not self.activity.mark_swept(module_id, cutoff):
                continue
            self._unsubscribed.add(module_id)
            self._tell("batcher", Unsubscribe(module_id))
            swept.append(module_id)
            last = self.activity.last_seen(module_id)
            idle = now - last if last is not None else inactive_s
            if module_id in states:  # not live, or it would have been touched
                reason = (f"its connection has taken none of its output for "
                          f"{inactive_s:g} s or more")
            else:
                reason = "no publish, coordinate or call"
            _log.bind(module=module_id, idle_s=round(idle, 1), reason=reason).info(
                "module inactive: subscriptions removed")
            self._notify(module_id, {"reason": reason, "idle_s": round(idle, 3),
                                     "inactive_after_ms": self.settings.inactive_after_ms})
        self._sweeps_total += len(swept)
        return swept

    def _notify(self, module_id: str, notice: dict[str, Any]) -> None:
        try:
            self.context.shared.notify_swept(module_id, notice)
        except Exception as exc:  # the sweep stands; the module learns at its next call
            _log.bind(module=module_id, error=repr(exc)).warning(
                "could not tell the module it was swept")

    def _cleanup(self, reason: str, rss_before: int | None = None) -> CleanupReport:
        """Run one cleanup (see the module docstring) with the strategy in force; log and
        count it."""
        strategy = self._resources.strategy(self.settings.strategy)
        full = reason != "interval"
        wait = reason == "forced"
        if rss_before is None:
            rss_before = self._rss()
        actions = ["purge", "sweep"]
        purged = self._cache_op(Purge(), wait)
        swept = self._sweep()
        shrunk = 0
        gc_collected: int | None = None
        if full and strategy in ("balanced", "aggressive"):
            if strategy == "balanced":
                shrunk = self._cache_op(Shrink(0.5), wait)
                actions.append("shrink")
            else:
                shrunk = self._cache_op(Clear(), wait)
                actions.append("clear")
            self._tell("monitor", Trim())
            actions.append("trim")
            try:
                self.context.shared.release_buffers()
                actions.append("buffers")
            except Exception as exc:  # the cleanup goes on without it
                _log.bind(error=repr(exc)).warning("connections' buffers not released")
            gc_collected = gc.collect()
            actions.append("gc")
            if _release_to_os():
                actions.append("malloc_trim")
        if gc_collected is None and reason == "interval":
            # The daemon defers automatic full collections (they stop every thread for
            # tens of ms with a large heap); this is where the cyclic garbage goes.
            gc_collected = gc.collect()
            actions.append("gc")
        rss_after = self._rss() if full else rss_before
        self._cleanups[reason] = self._cleanups.get(reason, 0) + 1
        report = CleanupReport(
            reason=reason, strategy=strategy, expired_purged=purged,
            modules_swept=len(swept), cache_shrunk=shrunk, rss_before=rss_before,
            rss_after=rss_after, gc_collected=gc_collected, actions=tuple(actions),
            swept=tuple(swept),
        )
        # A routine interval cleanup that swept nothing is not worth an INFO line every
        # cleanup_interval_ms (the cache logs its own purges when it removes something).
        level = "DEBUG" if reason == "interval" and not swept else "INFO"
        _log.bind(reason=reason, strategy=strategy, actions="+".join(actions),
                  swept=len(swept), rss_before_mb=_mb(rss_before),
                  rss_after_mb=_mb(rss_after)).log(level, "cleanup done")
        return report

    @handles(ForceCleanup)
    def _on_force_cleanup(self, message: ForceCleanup) -> CleanupReport:
        return self._cleanup("forced")

    # -- pressure --

    def _rss(self) -> int | None:
        """Read resident memory; ``None`` (logged once per failure streak) on failure."""
        try:
            rss = int(self._read_rss())
        except Exception as exc:  # a failed reading skips one check
            if not self._rss_failing:
                _log.warning("cannot read resident memory", error=repr(exc))
            self._rss_failing = True
            return None
        self._rss_failing = False
        self._last_rss = rss
        return rss

    def _check_pressure(self) -> None:
        rss = self._rss()
        self._resources.check(self.clock.monotonic(), self.settings, rss)
        if rss is None:
            return
        limit = self.settings.max_rss_mb * MB
        if self._armed and rss > limit:
            self._armed = False
            _log.warning("memory pressure: rss above the limit", rss_mb=_mb(rss),
                         limit_mb=_mb(int(limit)))
            self._cleanup("pressure", rss_before=rss)
        elif not self._armed and rss < REARM_FRACTION * limit:
            self._armed = True
            _log.info("memory back under the limit: pressure cleanup re-armed", rss_mb=_mb(rss))

    # -- snapshots --

    def statistics(self) -> MemoryStatistics:
        rss = self._last_rss if self._last_rss is not None else self._rss()
        cutoff = self.clock.monotonic() - self.settings.inactive_after_ms / 1000.0
        inactive = sum(
            1 for m in self.activity.inactive_since(cutoff, include_swept=True)
            if m in self._sources
        )
        return MemoryStatistics(
            rss_bytes=rss or 0,
            max_rss_bytes=int(self.settings.max_rss_mb * MB),
            cleanups=tuple(self._cleanups.items()),
            modules_tracked=len(self._sources),
            modules_inactive=inactive,
            modules_swept=len(self._unsubscribed),
            pressure_armed=self._armed,
            strategy=self._resources.strategy(self.settings.strategy),
            sweeps_total=self._sweeps_total,
            reactivations_total=self._reactivations_total,
            resources=self._resources.summary(self.settings),
        )

    def export_pending(self) -> MemoryHandover:
        return MemoryHandover(
            modules=tuple(sorted(self._sources.items())),
            swept=tuple(sorted(self._unsubscribed)),
            pressure_armed=self._armed,
            cleanups=tuple(self._cleanups.items()),
            sweeps_total=self._sweeps_total,
            reactivations_total=self._reactivations_total,
            pressure_level=self._resources.level,
        )

    def restore(self, pending: Any) -> None:
        """Take over a predecessor's tracked modules, swept set and hysteresis state.

        Accepts a :class:`MemoryHandover` or its :meth:`~MemoryHandover.as_dict`. Anything
        else is logged and ignored (the actor starts empty rather than failing).
        """
        if isinstance(pending, Mapping):
            try:
                pending = MemoryHandover.from_dict(pending)
            except InvalidMessageError as exc:
                _log.error("ignoring a handover", error=str(exc))
                return
        if not isinstance(pending, MemoryHandover):
            _log.error("ignoring a handover of an unknown type", type=type(pending).__name__)
            return
        self._sources.update((m, tuple(s)) for m, s in pending.modules)
        for module_id, _ in pending.modules:
            if self.activity.last_seen(module_id) is None:
                self.activity.touch(module_id)  # unknown activity: a fresh full period
        self._unsubscribed.update(m for m in pending.swept if m in self._sources)
        for module_id in self._unsubscribed:
            self.activity.mark_swept(module_id)
        self._armed = pending.pressure_armed
        for reason, count in pending.cleanups:
            self._cleanups[reason] = self._cleanups.get(reason, 0) + count
        self._sweeps_total += pending.sweeps_total
        self._reactivations_total += pending.reactivations_total
        if pending.pressure_level:
            self._resources.reconfigure(None)  # start again from the predecessor's level
            self._resources.reconfigure(self._adaptive, pending.pressure_level, self.settings)


def _mb(value: int | None) -> str:
    return "?" if value is None else f"{value / MB:.1f}"
