"""Resource awareness: memory and CPU pressure, with hysteresis (``adaptive.resources``).

:class:`ResourceGovernor` reads nothing and tells no one: the memory manager hands it, at
every ``memory.check_interval_ms``, the clock reading and the readings it made (resident
memory, the machine's available memory, the daemon's CPU seconds; any may be ``None``
when it could not be read, and is then not judged), and applies what it decides.

- **Memory.** Pressure is RSS above ``memory_enter_fraction`` × ``memory.max_rss_mb`` or
  available memory below ``available_enter_mb`` (when set). Each check under pressure
  raises the level one step (at most :data:`MAX_LEVEL`), but never sooner than
  ``hold_ms`` after the previous change (the first step is immediate). The level drops
  one step when RSS is below ``memory_exit_fraction`` × the limit and available memory
  above ``available_exit_mb``, again no sooner than ``hold_ms`` after the previous change.
  Between the two thresholds nothing changes: a reading hovering around either threshold
  cannot flap. Level *n* means the strategy *n* steps past the configured one (capped at
  ``aggressive``) and the cache's effective ``max_entries`` × ``cache_cap_fraction`` ** *n*.
- **CPU.** The daemon's CPU seconds over the last ``cpu_window_ms`` of wall time (clock),
  divided by the CPUs it may use, is its CPU fraction (judged once half a window is
  covered). Above ``cpu_enter_fraction`` debounce delays and batch windows are widened
  ``cpu_widen_factor`` times; below ``cpu_exit_fraction`` for ``hold_ms`` after the
  widening began they are not any more.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger

from modcoord.actors.settings import AdaptiveResourceSettings, AdaptiveSettings, MemorySettings
from modcoord.actors.shared import Shared
from modcoord.actors.tuning import AdaptiveParameter, ResourceSummary, frozen_parameter

__all__ = [
    "MAX_LEVEL",
    "STRATEGIES",
    "Decision",
    "ResourceAwareness",
    "ResourceGovernor",
    "escalated",
    "frozen_resources",
]

STRATEGIES: tuple[str, ...] = ("conservative", "balanced", "aggressive")
"""The memory strategies, mildest first: escalation moves right one step at a time."""
MAX_LEVEL = 2
"""Escalation steps at most (conservative → aggressive is two)."""
MB = 1024 * 1024


def escalated(strategy: str, level: int) -> str:
    """``strategy`` moved ``level`` steps toward ``aggressive`` (capped there)."""
    index = STRATEGIES.index(strategy) if strategy in STRATEGIES else 0
    return STRATEGIES[min(len(STRATEGIES) - 1, index + max(0, level))]


@dataclass(frozen=True)
class Decision:
    """What one check changed.

    Attributes:
        memory_step: +1 escalated, -1 relaxed, 0 unchanged.
        cpu_step: +1 widening began, -1 it ended, 0 unchanged.
    """

    memory_step: int = 0
    cpu_step: int = 0


class ResourceGovernor:
    """Memory level and CPU widening from readings (module doc).

    Args:
        settings: ``adaptive.resources``.
        capacity: the CPUs the daemon may use (at least 1).
        level: the memory level to start from (a predecessor's, on a restart).
    """

    def __init__(self, settings: AdaptiveResourceSettings, capacity: int,
                 level: int = 0) -> None:
        self.settings = settings
        self.capacity = max(1, capacity)
        self.level = min(MAX_LEVEL, max(0, level))
        self.widening = False
        self.memory_changed_at = -math.inf
        self.cpu_changed_at = -math.inf
        self.memory_reason = ""
        self.cpu_reason = ""
        self.cpu_fraction: float | None = None
        self.rss_bytes: int | None = None
        self.available_bytes: int | None = None
        self.escalations = 0
        self.relaxations = 0
        self._cpu: deque[tuple[float, float]] = deque()

    def reconfigure(self, settings: AdaptiveResourceSettings) -> None:
        """New thresholds; the level, widening and CPU samples stand."""
        self.settings = settings

    # -- the check --

    def observe(self, now: float, memory: MemorySettings, rss: int | None,
                available: int | None, cpu_seconds: float | None) -> Decision:
        """Judge one check's readings at ``now`` (seconds); return what changed."""
        self.rss_bytes, self.available_bytes = rss, available
        return Decision(self._memory(now, memory, rss, available), self._cpu_step(now,
                                                                                   cpu_seconds))

    def _memory(self, now: float, memory: MemorySettings, rss: int | None,
                available: int | None) -> int:
        s = self.settings
        limit = memory.max_rss_mb * MB
        enter_mb, exit_mb = s.available_enter_mb, s.available_exit_mb
        over, under = [], []
        if rss is not None:
            if rss > s.memory_enter_fraction * limit:
                over.append(f"rss {rss / MB:.1f} MB above {s.memory_enter_fraction:g} of "
                            f"memory.max_rss_mb {memory.max_rss_mb:g}")
            if rss < s.memory_exit_fraction * limit:
                under.append(f"rss {rss / MB:.1f} MB below {s.memory_exit_fraction:g} of "
                             f"memory.max_rss_mb {memory.max_rss_mb:g}")
        if enter_mb and available is not None:
            if available < enter_mb * MB:
                over.append(f"available memory {available / MB:.0f} MB below "
                            f"adaptive.resources.available_enter_mb {enter_mb:g}")
            if available > exit_mb * MB:
                under.append(f"available memory {available / MB:.0f} MB")
        rss_ok = rss is not None and rss < s.memory_exit_fraction * limit
        available_ok = not enter_mb or (available is not None and available > exit_mb * MB)
        relaxed = rss_ok and available_ok
        held = now - self.memory_changed_at >= s.hold_ms / 1000.0
        if over and self.level < MAX_LEVEL and held:
            self.level += 1
            self.escalations += 1
            self.memory_changed_at = now
            self.memory_reason = "; ".join(over)
            return 1
        if relaxed and not over and self.level > 0 and held:
            self.level -= 1
            self.relaxations += 1
            self.memory_changed_at = now
            self.memory_reason = "pressure gone: " + "; ".join(under)
            return -1
        if over:
            self.memory_reason = "; ".join(over)
        return 0

    def _cpu_step(self, now: float, cpu_seconds: float | None) -> int:
        s = self.settings
        if cpu_seconds is None:
            return 0
        window = s.cpu_window_ms / 1000.0
        samples = self._cpu
        if samples and cpu_seconds < samples[-1][1]:
            samples.clear()  # the reader went back (a new process): start over
        samples.append((now, cpu_seconds))
        while len(samples) >= 2 and samples[1][0] <= now - window:
            samples.popleft()
        t0, c0 = samples[0]
        span = now - t0
        if span < window / 2.0 or span <= 0.0:
            return 0
        fraction = (cpu_seconds - c0) / span / self.capacity
        self.cpu_fraction = round(fraction, 4)
        said = (f"daemon CPU {fraction * 100:.0f}% of {self.capacity} CPU"
                f"{'s' if self.capacity != 1 else ''} over {span:.1f} s")
        held = now - self.cpu_changed_at >= s.hold_ms / 1000.0
        if not self.widening and fraction > s.cpu_enter_fraction and held:
            self.widening = True
            self.cpu_changed_at = now
            self.cpu_reason = (f"{said}, above adaptive.resources.cpu_enter_fraction "
                               f"{s.cpu_enter_fraction:g}")
            return 1
        if self.widening and fraction < s.cpu_exit_fraction and held:
            self.widening = False
            self.cpu_changed_at = now
            self.cpu_reason = (f"pressure gone: {said}, below "
                               f"adaptive.resources.cpu_exit_fraction {s.cpu_exit_fraction:g}")
            return -1
        return 0

    # -- what is in force --

    @property
    def factor(self) -> float:
        """The widening factor in force (1.0 when not widened)."""
        return self.settings.cpu_widen_factor if self.widening else 1.0

    def strategy(self, configured: str) -> str:
        """The memory strategy in force for ``configured``."""
        return escalated(configured, self.level)

    def cache_cap(self, max_entries: int) -> int | None:
        """The cache's effective ``max_entries`` (``None``: no cap, the configured one)."""
        if self.level == 0:
            return None
        return max(1, int(max_entries * self.settings.cache_cap_fraction ** self.level))

    def summary(self, configured_strategy: str, max_entries: int,
                cache_evicted: int) -> ResourceSummary:
        """The typed summary for ``status`` and the rules."""
        cap = self.cache_cap(max_entries)
        level = self.level
        if level:
            steps = f"{level} step{'s' if level > 1 else ''}"
            why = f"memory pressure ({self.memory_reason})"
            strategy = AdaptiveParameter(configured_strategy,
                                         self.strategy(configured_strategy),
                                         f"{why}: escalated {steps} from memory.strategy")
            cache = AdaptiveParameter(
                max_entries, cap if cap is not None else max_entries,
                f"{why}: cache.max_entries x adaptive.resources.cache_cap_fraction "
                f"{self.settings.cache_cap_fraction:g} per step, {steps}")
        else:
            why = self.memory_reason or "no memory pressure"
            strategy = frozen_parameter(configured_strategy, why)
            cache = frozen_parameter(max_entries, why)
        if self.widening:
            widen = AdaptiveParameter(1.0, self.factor, f"{self.cpu_reason}: debounce delays "
                                      "and batch windows widened within their bounds")
        else:
            widen = frozen_parameter(1.0, self.cpu_reason or (
                "no CPU pressure" if self.cpu_fraction is not None
                else "measuring CPU (half of adaptive.resources.cpu_window_ms)"))
        return ResourceSummary(
            enabled=True,
            parameters={"memory.strategy": strategy, "cache.max_entries": cache,
                        "delays.widen": widen},
            memory_level=level, memory_reason=self.memory_reason, widening=self.widening,
            cpu_reason=self.cpu_reason, cpu_fraction=self.cpu_fraction,
            available_bytes=self.available_bytes, cache_evicted=cache_evicted,
            escalations=self.escalations, relaxations=self.relaxations,
        )


def frozen_resources(configured_strategy: str, max_entries: int, why: str) -> ResourceSummary:
    """The summary when resources are not watched (MANUAL, ``adaptive.enabled: false`` or
    ``adaptive.resources.enabled: false``): every value as configured, and why."""
    return ResourceSummary(enabled=False, parameters={
        "memory.strategy": frozen_parameter(configured_strategy, why),
        "cache.max_entries": frozen_parameter(max_entries, why),
        "delays.widen": frozen_parameter(1.0, why)})


class ResourceAwareness:
    """The memory manager's side of resource awareness: reads the machine's available
    memory and the daemon's CPU time, runs the :class:`ResourceGovernor`, applies the
    cache cap (``shared.cache_store``) and the widening (``shared.widening``), and logs
    each change once (what changed, from what to what, and why).

    A reader that raises is logged once per failure streak and its value left unjudged
    for that check; it never fails the check. Entries a cap evicts are counted
    (``cache_evicted`` here, ``evictions.size`` in the cache's statistics) and logged.

    Args:
        shared: the actors' shared context (readers, store, widening, CPU capacity).
        adaptive: the mode's ``adaptive`` section; nothing is watched unless both
            ``enabled`` and ``resources.enabled`` are true.
        level: a predecessor's memory level (see :meth:`restore`).
    """

    def __init__(self, shared: Shared, adaptive: AdaptiveSettings | None,
                 level: int = 0) -> None:
        self.shared = shared
        self.governor: ResourceGovernor | None = None
        self.cache_evicted = 0
        self._failing: set[str] = set()
        self._log = logger.bind(actor="memory", event="adaptive")
        self.reconfigure(adaptive, level)

    @staticmethod
    def watching(adaptive: AdaptiveSettings | None) -> bool:
        return adaptive is not None and adaptive.enabled and adaptive.resources.enabled

    def reconfigure(self, adaptive: AdaptiveSettings | None, level: int | None = None,
                    memory: MemorySettings | None = None) -> None:
        """Apply new ``adaptive`` settings: watching stops (everything released) or
        starts, or the thresholds change with the state kept."""
        self.adaptive = adaptive
        if not self.watching(adaptive):
            if self.governor is not None:
                self._log.info("resource awareness off: configured values restored",
                               why="adaptive.enabled or adaptive.resources.enabled false")
            self.governor = None
            self._release()
            return
        assert adaptive is not None
        if self.governor is None:
            self.governor = ResourceGovernor(adaptive.resources, self.shared.cpu_capacity,
                                             level or 0)
            # A fresh start (or a predecessor's level): what is in force follows it.
            self._apply_cap(memory)
            self.shared.widening.set(self.governor.factor, "")
        else:
            self.governor.reconfigure(adaptive.resources)

    def _release(self) -> None:
        self.shared.widening.set(1.0, "")
        if self.shared.cache_store.cap_limit is not None:
            self.shared.cache_store.cap(None)

    def _read(self, name: str, reader: Callable[[], float]) -> float | None:
        try:
            value = float(reader())
        except Exception as exc:  # not judged this check
            if name not in self._failing:
                self._failing.add(name)
                self._log.warning("cannot read a resource", resource=name, error=repr(exc))
            return None
        self._failing.discard(name)
        return value

    def check(self, now: float, memory: MemorySettings, rss: int | None) -> Decision:
        """One check (every ``memory.check_interval_ms``): read, judge, apply, log."""
        gov = self.governor
        if gov is None:
            return Decision()
        available = self._read("available memory", self.shared.available_reader)
        cpu = self._read("cpu time", self.shared.cpu_reader)
        before = gov.strategy(memory.strategy)
        decision = gov.observe(now, memory, rss, None if available is None else int(available),
                               cpu)
        # Every check: the cap follows the level and the cache.max_entries in force now
        # (a reload may have changed it after the previous check).
        evicted = self._apply_cap(memory)
        if decision.memory_step:
            cap = self.shared.cache_store.cap_limit
            log = self._log.bind(
                previous_strategy=before, strategy=gov.strategy(memory.strategy),
                configured_strategy=memory.strategy, pressure_level=gov.level,
                cache_cap=cap if cap is not None else "none", entries_evicted=evicted,
                why=gov.memory_reason)
            if decision.memory_step > 0:
                log.warning("memory pressure: strategy escalated, cache capped")
            else:
                log.info("memory pressure eased: strategy and cache cap relaxed a step")
        if decision.cpu_step:
            factor = gov.factor
            self.shared.widening.set(factor, gov.cpu_reason)
            log = self._log.bind(widen_factor=factor, cpu_fraction=gov.cpu_fraction,
                                 why=gov.cpu_reason)
            if decision.cpu_step > 0:
                log.warning("cpu pressure: debounce delays and batch windows widened")
            else:
                log.info("cpu pressure gone: delays and windows back to their tuned values")
        return decision

    def _apply_cap(self, memory: MemorySettings | None) -> int:
        """Apply the governor's cache cap to the store; count and log what it evicted."""
        gov = self.governor
        store = self.shared.cache_store
        cap = gov.cache_cap(store.settings.max_entries) if gov is not None else None
        if cap == store.cap_limit:
            return 0
        evicted = store.cap(cap)
        if evicted:
            self.cache_evicted += evicted
            self._log.bind(entries_evicted=evicted, cache_cap=cap,
                           configured_max_entries=store.settings.max_entries).warning(
                "cache capped under memory pressure: entries evicted")
        return evicted

    def refresh(self) -> None:
        """Re-apply the cap (``cache.max_entries`` may have been reloaded)."""
        if self.governor is not None and self.governor.level:
            self._apply_cap(None)

    def strategy(self, configured: str) -> str:
        """The memory strategy in force."""
        return configured if self.governor is None else self.governor.strategy(configured)

    @property
    def level(self) -> int:
        return 0 if self.governor is None else self.governor.level

    def summary(self, memory: MemorySettings) -> ResourceSummary:
        """The typed summary for the memory statistics."""
        max_entries = self.shared.cache_store.settings.max_entries
        if self.governor is None:
            a = self.adaptive
            why = ("adaptive.enabled: false (MANUAL never adapts)" if a is None or not a.enabled
                   else "adaptive.resources.enabled: false")
            return frozen_resources(memory.strategy, max_entries, why)
        return self.governor.summary(memory.strategy, max_entries, self.cache_evicted)
