"""The monitor: latency percentiles, module metrics, and plain-language insights.

The monitor (``monitor``) reads the shared :class:`~modcoord.actors.metrics.MetricsRegistry`
(``context.extras["metrics"]``) that every part of the daemon records latencies into, keeps
each module's own ``get_performance_metrics()``, and evaluates *insight rules* against a
snapshot of the other actors' statistics.

A snapshot (see :func:`build_snapshot`) is a dict of sections::

    {"cache": {"hits", "misses", "hit_rate", "size", "max_size", ...},
     "batcher": {"queue_depth", "rejected", "max_queue", ...},
     "memory": {"rss_bytes", "max_rss_bytes", ...},
     "debouncer": {...},
     "restarts": {actor: restarts within the window}}

Every ``monitor.evaluate_interval_ms`` the monitor gathers ``Statistics()`` from ``cache``,
``batcher``, ``memory`` and ``debouncer`` (a bounded ``ask`` each; the one actor allowed to
block on others, and nothing asks the monitor from an actor thread), builds the snapshot and
evaluates it.

Rules (:data:`RULES`) each give an id, a severity, the observed value, the threshold, the
window, a message and a recommendation naming the config key to change. A rule that needs
samples and has fewer than ``monitor.min_samples`` does not judge; it says so. Rules do not
flap: a fired rule stays active until its observed value recovers past the threshold by
:data:`HYSTERESIS` (10%), and it is logged at most once per ``monitor.quiet_period_s``
(when it fires, and as a reminder once a quiet period has passed while it stays active)
unless it has worsened by :data:`WORSENING` (25%) since it was last logged. A rule that
cannot judge (too few samples, a section missing) keeps its state: a transient gap
neither clears nor re-fires it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import pykka
from loguru import logger

from modcoord.actors._base import ActorContext, ManagedActor, Statistics, handles
from modcoord.actors.clock import TimerHandle
from modcoord.actors.errors import InvalidMessageError, ModcoordError
from modcoord.actors.message import Message
from modcoord.actors.metrics import MetricsRegistry
from modcoord.actors.settings import MonitorSettings

__all__ = [
    "GATHER_TIMEOUT_S",
    "HYSTERESIS",
    "PEERS",
    "RULES",
    "SEVERITIES",
    "WORSENING",
    "CacheHitRateRule",
    "CoordinationLatencyRule",
    "DebounceLatenessRule",
    "Evaluate",
    "ForgetModule",
    "InsightRule",
    "Insights",
    "Latencies",
    "MemoryNearLimitRule",
    "ModuleMetrics",
    "ModuleReport",
    "MonitorActor",
    "MonitorHandover",
    "MonitorStatistics",
    "QueueNearFullRule",
    "Reading",
    "RestartChurnRule",
    "Restarted",
    "RuleInput",
    "Trim",
    "build_snapshot",
]

HYSTERESIS = 0.10
"""A fired rule clears only once its value is this fraction past the threshold."""
WORSENING = 0.25
"""An active rule is logged again within the quiet period if it worsened this much."""
GATHER_TIMEOUT_S = 1.0
"""How long the periodic evaluation waits for the peers' statistics."""
PEERS: tuple[str, ...] = ("cache", "batcher", "memory", "debouncer")
"""Actors whose statistics a periodic evaluation gathers."""
SEVERITIES: tuple[str, ...] = ("critical", "warning", "info")
"""Severities, most severe first."""

_LOG_LEVEL = {"info": "INFO", "warning": "WARNING", "critical": "ERROR"}
_log = logger.bind(actor="monitor")


# -- messages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluate(Message):
    """Evaluate the rules against ``snapshot``; the reply is the insights dict."""

    snapshot: dict[str, Any]


@dataclass(frozen=True)
class Insights(Message):
    """Gather the peers' statistics now and evaluate; the reply is the insights dict."""


@dataclass(frozen=True)
class Trim(Message):
    """Memory cleanup: forget recent histogram windows and stored module metrics."""


@dataclass(frozen=True)
class ModuleMetrics(Message):
    """A module's ``get_performance_metrics()`` result (replaces its previous one)."""

    module_id: str
    metrics: dict[str, Any]


@dataclass(frozen=True)
class ForgetModule(Message):
    """A module unregistered: drop its stored metrics."""

    module_id: str


@dataclass(frozen=True)
class ModuleReport(Message):
    """Ask for every module's latest metrics: ``{module_id: metrics}``."""


@dataclass(frozen=True)
class Latencies(Message):
    """Ask for histogram summaries: ``{name: {"recent": {...}, "total": {...}}}`` (ms)."""


@dataclass(frozen=True)
class Restarted(Message):
    """The supervisor restarted ``actor`` (counted for the ``restart_churn`` rule)."""

    actor: str


@dataclass(frozen=True)
class _EvaluateTick(Message):
    token: int = 0


# -- snapshots -----------------------------------------------------------------------------


def _plain(obj: Any) -> dict[str, Any] | None:
    """A statistics object as a plain dict, or ``None`` if it is not one."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return dict(obj)
    as_dict = getattr(obj, "as_dict", None)
    if callable(as_dict):
        out = as_dict()
        return dict(out) if isinstance(out, Mapping) else None
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return None


def build_snapshot(stats_by_actor: Mapping[str, Any], restarts: Mapping[str, int],
                   max_queue: int | None = None) -> dict[str, Any]:
    """Build the snapshot :class:`Evaluate` takes from the actors' statistics.

    Args:
        stats_by_actor: actor name → its ``statistics()`` (an object with ``as_dict()``, a
            dataclass, or a mapping). Missing actors and objects of another kind are left
            out; the rules that need them report not enough data.
        restarts: actor name → restarts within the window.
        max_queue: ``batch.max_queue``, added to the ``batcher`` section if that section
            exists and does not carry it already.

    Returns:
        ``{"cache": {...}, "batcher": {...}, "memory": {...}, "debouncer": {...},
        "restarts": {...}}`` with only the sections available.
    """
    snapshot: dict[str, Any] = {}
    for name, stats in stats_by_actor.items():
        section = _plain(stats)
        if section is not None:
            snapshot[name] = section
    batcher = snapshot.get("batcher")
    if batcher is not None and batcher.get("max_queue") is None and max_queue is not None:
        batcher["max_queue"] = max_queue
    snapshot["restarts"] = {str(k): int(v) for k, v in restarts.items()}
    return snapshot


def _number(section: Any, *keys: str) -> float | None:
    """The first of ``keys`` in ``section`` holding a real number, else ``None``."""
    if not isinstance(section, Mapping):
        return None
    for key in keys:
        value = section.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


# -- rules ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleInput:
    """What a rule reads.

    Attributes:
        snapshot: the sections (see :func:`build_snapshot`).
        metrics: the shared registry (latency histograms).
        settings: the monitor's settings (thresholds).
        cache_lookups: ``(hits, misses)`` within the window, or ``None`` if unknown.
        new_rejections: batch rejections since the previous evaluation.
    """

    snapshot: Mapping[str, Any]
    metrics: MetricsRegistry
    settings: MonitorSettings
    cache_lookups: tuple[int, int] | None = None
    new_rejections: int = 0


@dataclass(frozen=True)
class Reading:
    """One rule's verdict on one snapshot.

    Attributes:
        observed: the value compared, or ``None`` when the rule could not judge.
        threshold: the value it is compared against.
        breached: the rule would fire now.
        recovered: an active rule clears now (past the threshold by the margin).
        window_s: the window the value covers.
        lacking: why the rule could not judge (``"coordination latency (3 of 20
            samples)"``), when ``observed`` is ``None``.
        samples: samples available, for rules that need them.
        severity: overrides the rule's default severity.
        recommendation: overrides the rule's default recommendation.
    """

    observed: float | None
    threshold: float
    breached: bool = False
    recovered: bool = True
    window_s: float = 0.0
    lacking: str | None = None
    samples: int | None = None
    severity: str | None = None
    recommendation: str | None = None


class InsightRule:
    """Base of an insight rule: constants, and the threshold comparison with hysteresis.

    Subclasses set the class attributes and implement :meth:`read`, which returns ``None``
    when the rule does not apply at all (for example the cache is disabled).
    """

    id: ClassVar[str]
    severity: ClassVar[str] = "warning"
    message: ClassVar[str]
    recommendation: ClassVar[str]
    higher_is_worse: ClassVar[bool] = True
    inclusive: ClassVar[bool] = False
    """Whether a value equal to the threshold breaches it."""

    def read(self, data: RuleInput) -> Reading | None:
        """Judge ``data``. Raises nothing for missing or odd data: it reports ``lacking``."""
        raise NotImplementedError

    def compare(self, observed: float, threshold: float, window_s: float,
                samples: int | None = None, **extra: Any) -> Reading:
        """Return the reading of ``observed`` against ``threshold`` (with the margin)."""
        if self.higher_is_worse:
            breached = observed >= threshold if self.inclusive else observed > threshold
            recovered = observed < threshold * (1.0 - HYSTERESIS)
        else:
            breached = observed <= threshold if self.inclusive else observed < threshold
            recovered = observed > threshold * (1.0 + HYSTERESIS)
        return Reading(observed=observed, threshold=threshold, breached=breached,
                       recovered=recovered, window_s=window_s, samples=samples, **extra)

    def worsened(self, observed: float, last: float) -> bool:
        """Whether ``observed`` is at least :data:`WORSENING` worse than ``last``."""
        if self.higher_is_worse:
            return observed >= last * (1.0 + WORSENING) if last > 0 else observed > 0
        return last > 0 and observed <= last * (1.0 - WORSENING)

    @staticmethod
    def lacking(threshold: float, what: str, window_s: float = 0.0,
                samples: int | None = None) -> Reading:
        return Reading(observed=None, threshold=threshold, window_s=window_s,
                       lacking=what, samples=samples)


class _HistogramRule(InsightRule):
    """A percentile of a recent histogram window above a threshold (needs samples)."""

    histogram: ClassVar[str]
    percentile: ClassVar[str]
    label: ClassVar[str]

    def threshold_ms(self, settings: MonitorSettings) -> float:
        raise NotImplementedError

    def read(self, data: RuleInput) -> Reading | None:
        threshold = self.threshold_ms(data.settings)
        hist = data.metrics.histograms().get(self.histogram)
        window = hist.window_s if hist is not None else data.metrics.window_s
        summary = hist.recent() if hist is not None else None
        samples = summary.count if summary is not None else 0
        needed = data.settings.min_samples
        if summary is None or samples < needed:
            return self.lacking(threshold, f"{self.label} ({samples} of {needed} samples)",
                                window, samples)
        observed = float(getattr(summary, self.percentile))
        return self.compare(round(observed, 3), threshold, window, samples)


class CoordinationLatencyRule(_HistogramRule):
    """p95 coordination latency over the recent window above ``coordination_latency_ms``."""

    id = "high_coordination_latency"
    severity = "warning"
    message = "High coordination latency detected - consider optimizing module communication"
    recommendation = (
        "Raise cache.ttl_ms so more coordinations are answered from the cache, or raise "
        "debounce.delay_ms so modules are asked less often; check for modules whose "
        "on_mode_change is slow"
    )
    histogram = "coordination"
    percentile = "p95"
    label = "coordination latency"

    def threshold_ms(self, settings: MonitorSettings) -> float:
        return settings.coordination_latency_ms


class DebounceLatenessRule(_HistogramRule):
    """p99 debounce timer lateness over the recent window above ``debounce_lateness_ms``."""

    id = "late_debounce_timers"
    severity = "warning"
    message = "Debounce timers are firing late - the daemon is overloaded or starved of CPU"
    recommendation = (
        "Raise debounce.delay_ms (fewer timers fire) or batch.window_ms (fewer deliveries), "
        "or reduce the publish rate; CPU-bound work on the host delays every timer"
    )
    histogram = "debounce_lateness"
    percentile = "p99"
    label = "debounce timer lateness"

    def threshold_ms(self, settings: MonitorSettings) -> float:
        return settings.debounce_lateness_ms


class CacheHitRateRule(InsightRule):
    """Cache hit rate over the window below ``cache_hit_rate_min`` (needs lookups)."""

    id = "low_cache_hit_rate"
    severity = "warning"
    message = "Low cache hit rate - consider adjusting cache TTL or strategy"
    recommendation = (
        "Raise cache.ttl_ms so results live until they are reused, or cache.max_entries "
        "so they are not evicted first"
    )
    higher_is_worse = False

    def read(self, data: RuleInput) -> Reading | None:
        threshold = data.settings.cache_hit_rate_min
        window = data.settings.window_s
        cache = data.snapshot.get("cache")
        if not isinstance(cache, Mapping):
            return self.lacking(threshold, "cache statistics unavailable", window)
        if cache.get("enabled") is False:
            return None  # cache.enabled: false — nothing to judge
        if data.cache_lookups is None:
            return self.lacking(threshold, "cache hit and miss counts unavailable", window)
        hits, misses = data.cache_lookups
        lookups = hits + misses
        needed = data.settings.min_samples
        if lookups < needed:
            return self.lacking(threshold, f"cache lookups ({lookups} of {needed} samples)",
                                window, lookups)
        return self.compare(round(hits / lookups, 4), threshold, window, lookups)


class QueueNearFullRule(InsightRule):
    """Batch queue depth at ``queue_near_full_fraction`` of ``max_queue``, or rejections."""

    id = "queue_near_full"
    severity = "warning"
    message = "Batch queue near full - publishers are being slowed or rejected"
    recommendation = (
        "Raise batch.max_queue, or lower batch.window_ms so queued updates go out sooner"
    )
    inclusive = True

    def read(self, data: RuleInput) -> Reading | None:
        fraction = data.settings.queue_near_full_fraction
        window = data.settings.evaluate_interval_ms / 1000.0
        batcher = data.snapshot.get("batcher")
        if not isinstance(batcher, Mapping):
            return self.lacking(fraction, "batcher statistics unavailable", window)
        depth = _number(batcher, "queue_depth", "pending")
        max_queue = _number(batcher, "max_queue")
        rejected = data.new_rejections
        if depth is None or not max_queue:
            if rejected > 0:
                return Reading(observed=1.0, threshold=fraction, breached=True,
                               recovered=False, window_s=window, severity="critical")
            return self.lacking(fraction, "batch queue depth or limit unavailable", window)
        reading = self.compare(round(depth / max_queue, 4), fraction, window)
        if rejected > 0:
            return dataclasses.replace(reading, breached=True, recovered=False,
                                       severity="critical")
        return reading


class RestartChurnRule(InsightRule):
    """Some actor restarted ``restart_churn_max`` times or more within the window."""

    id = "restart_churn"
    severity = "critical"
    message = "Actor restart churn detected - an actor keeps failing and restarting"
    recommendation = (
        "Find the failing actor's errors with `modcoord logs --level ERROR`; if the "
        "restarts are expected, raise monitor.restart_churn_max"
    )
    inclusive = True

    def read(self, data: RuleInput) -> Reading | None:
        threshold = float(data.settings.restart_churn_max)
        window = data.settings.window_s
        restarts = data.snapshot.get("restarts")
        if not isinstance(restarts, Mapping):
            return self.lacking(threshold, "restart counts unavailable", window)
        counts = {str(k): int(v) for k, v in restarts.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
        worst = max(counts.values(), default=0)
        reading = self.compare(float(worst), threshold, window)
        if reading.breached:
            churning = ", ".join(f"{a} ({n})" for a, n in sorted(counts.items())
                                 if n >= threshold)
            reading = dataclasses.replace(
                reading, recommendation=f"Restarting: {churning}. {self.recommendation}"
            )
        return reading


class MemoryNearLimitRule(InsightRule):
    """Resident memory at ``memory_near_limit_fraction`` of ``memory.max_rss_mb`` (MB)."""

    id = "memory_near_limit"
    severity = "warning"
    message = "Memory usage near its limit - cleanup may not be keeping up"
    recommendation = (
        "Raise memory.max_rss_mb, or set memory.strategy to balanced or aggressive so "
        "pressure cleanups reclaim more"
    )
    inclusive = True

    def read(self, data: RuleInput) -> Reading | None:
        fraction = data.settings.memory_near_limit_fraction
        memory = data.snapshot.get("memory")
        rss = _number(memory, "rss_bytes")
        limit = _number(memory, "max_rss_bytes")
        if rss is None or not limit:
            return self.lacking(fraction, "memory statistics unavailable")
        mb = 1024.0 * 1024.0
        reading = self.compare(round(rss / mb, 2), round(fraction * limit / mb, 2), 0.0)
        if rss >= limit:
            reading = dataclasses.replace(reading, severity="critical")
        if isinstance(memory, Mapping) and memory.get("strategy") == "aggressive":
            reading = dataclasses.replace(
                reading, recommendation="Raise memory.max_rss_mb (memory.strategy is already "
                "aggressive), or reduce cache.max_entries"
            )
        return reading


RULES: tuple[InsightRule, ...] = (
    CoordinationLatencyRule(),
    CacheHitRateRule(),
    QueueNearFullRule(),
    RestartChurnRule(),
    MemoryNearLimitRule(),
    DebounceLatenessRule(),
)
"""The rules every evaluation runs, in this order."""


# -- state and snapshots -------------------------------------------------------------------


@dataclass
class _RuleState:
    active: bool = False
    logged_at: float | None = None
    logged_observed: float | None = None


@dataclass(frozen=True)
class MonitorStatistics:
    """Snapshot of the monitor.

    Attributes:
        evaluations: evaluations run (periodic and on request).
        insights_fired: ``(rule id, times it became active)``.
        active: ids of the rules active now.
        last_status: ``ok``, ``issues``, ``not_enough_data`` or ``""`` before the first.
        modules_reporting: modules with stored metrics.
        trims: ``Trim`` messages handled.
    """

    evaluations: int
    insights_fired: tuple[tuple[str, int], ...]
    active: tuple[str, ...]
    last_status: str
    modules_reporting: int
    trims: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "evaluations": self.evaluations, "insights_fired": dict(self.insights_fired),
            "active": list(self.active), "last_status": self.last_status,
            "modules_reporting": self.modules_reporting, "trims": self.trims,
        }


@dataclass(frozen=True)
class MonitorHandover:
    """The monitor's rule state, for its successor's :meth:`MonitorActor.restore`.

    Attributes:
        active: ids of the active rules.
        last_logged: ``(rule id, clock time, observed value)`` of each rule's last log.
        fired: ``(rule id, count)``.
        evaluations: evaluations so far.
        restarts: ``(clock time, actor)`` of restarts still within the window.
        module_metrics: ``(module id, metrics)``.
    """

    active: tuple[str, ...]
    last_logged: tuple[tuple[str, float, float], ...]
    fired: tuple[tuple[str, int], ...] = ()
    evaluations: int = 0
    restarts: tuple[tuple[float, str], ...] = ()
    module_metrics: tuple[tuple[str, dict[str, Any]], ...] = ()


# -- the actor -----------------------------------------------------------------------------


class MonitorActor(ManagedActor):
    """The ``monitor`` actor. See the module docstring.

    Uses ``context.extras["metrics"]`` (a :class:`MetricsRegistry`; one is created with
    ``monitor.window_s`` and put there if absent). ``context.extras["queue_gauge"]``, if it
    has an integer ``max_queue``, supplies the batch queue limit when the batcher's
    statistics do not carry it.
    """

    actor_name = "monitor"
    settings_type = MonitorSettings
    settings: MonitorSettings
    rules: tuple[InsightRule, ...] = RULES

    def __init__(self, settings: Any, context: ActorContext, takeover: Any = None) -> None:
        super().__init__(settings, context, takeover)
        metrics = context.extras.get("metrics")
        if metrics is None:
            metrics = MetricsRegistry(context.clock, self.settings.window_s)
            context.extras["metrics"] = metrics
        self.metrics: MetricsRegistry = metrics
        self._state: dict[str, _RuleState] = {r.id: _RuleState() for r in self.rules}
        self._fired: dict[str, int] = {}
        self._evaluations = 0
        self._trims = 0
        self._last_status = ""
        self._module_metrics: dict[str, dict[str, Any]] = {}
        self._restarts: deque[tuple[float, str]] = deque()
        self._cache_history: deque[tuple[float, int, int]] = deque()
        self._last_rejected: int | None = None
        self._timer: TimerHandle | None = None
        self._deadline = 0.0
        self._token = 0

    # -- lifecycle and timer --

    def started(self) -> None:
        self._arm()

    def on_stop(self) -> None:
        super().on_stop()
        if self._timer is not None:
            self._timer.cancel()

    def apply_settings(self, old: Any, new: Any) -> None:
        """Re-arm the evaluation timer if its interval changed; thresholds apply at once.

        ``window_s`` applies to restart and cache-hit windows at once; the histograms keep
        the window the shared registry was created with.
        """
        if old.evaluate_interval_ms != new.evaluate_interval_ms:
            self._arm()

    def _post(self, message: Message) -> None:
        with contextlib.suppress(pykka.ActorDeadError, ModcoordError):
            self.actor_ref.tell(message)

    def _arm(self, deadline: float | None = None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._token += 1
        interval = self.settings.evaluate_interval_ms / 1000.0
        if deadline is None:
            deadline = self.clock.monotonic() + interval
        self._deadline = deadline
        self._timer = self.clock.call_at(
            deadline, functools.partial(self._post, _EvaluateTick(self._token))
        )

    @handles(_EvaluateTick)
    def _on_tick(self, message: _EvaluateTick) -> None:
        if message.token != self._token:
            return
        interval = self.settings.evaluate_interval_ms / 1000.0
        now = self.clock.monotonic()
        deadline = self._deadline + interval
        self._arm(deadline if deadline > now else now + interval)
        self.evaluate(self.gather())

    # -- gathering --

    def restart_counts(self) -> dict[str, int]:
        """Return restarts per actor within ``window_s`` (from :class:`Restarted`)."""
        edge = self.clock.monotonic() - self.settings.window_s
        while self._restarts and self._restarts[0][0] < edge:
            self._restarts.popleft()
        counts: dict[str, int] = {}
        for _, actor in self._restarts:
            counts[actor] = counts.get(actor, 0) + 1
        return counts

    def gather(self) -> dict[str, Any]:
        """Ask the peers for statistics (bounded) and build the snapshot.

        Peers that are absent, stopped, crashing or slower than :data:`GATHER_TIMEOUT_S`
        are left out of the snapshot.
        """
        futures: dict[str, Any] = {}
        for name in PEERS:
            handle = self.context.handles.get(name)
            if handle is None or name == self.actor_name:
                continue
            try:
                futures[name] = handle.ask_future(Statistics())
            except ModcoordError as exc:
                _log.debug("no statistics from {}: {}", name, exc)
        # A real wait, so real time: the injected clock may be a MockClock standing still.
        deadline = time.monotonic() + GATHER_TIMEOUT_S
        stats: dict[str, Any] = {}
        for name, future in futures.items():
            try:
                stats[name] = future.get(timeout=max(0.0, deadline - time.monotonic()))
            except Exception as exc:  # a missing section is reported
                _log.debug("no statistics from {}: {!r}", name, exc)
        gauge = self.context.extras.get("queue_gauge")
        max_queue = getattr(gauge, "max_queue", None)
        if not isinstance(max_queue, int) or isinstance(max_queue, bool):
            max_queue = None
        return build_snapshot(stats, self.restart_counts(), max_queue)

    # -- evaluation --

    def _cache_window(self, snapshot: Mapping[str, Any]) -> tuple[int, int] | None:
        """(hits, misses) within ``window_s``, from the cache's cumulative counters.

        The baseline is the latest reading at or before the window's start; until the
        monitor has one (it has watched for less than a window, or the counters went back
        because the cache restarted), the counters since start are used.
        """
        cache = snapshot.get("cache")
        hits, misses = _number(cache, "hits"), _number(cache, "misses")
        if hits is None or misses is None:
            return None
        now = self.clock.monotonic()
        h, m = int(hits), int(misses)
        history = self._cache_history
        if history and (h < history[-1][1] or m < history[-1][2]):
            history.clear()
        history.append((now, h, m))
        edge = now - self.settings.window_s
        while len(history) >= 2 and history[1][0] <= edge:
            history.popleft()
        t0, h0, m0 = history[0]
        if len(history) == 1 or t0 > edge:
            return h, m
        return h - h0, m - m0

    def _rejections(self, snapshot: Mapping[str, Any]) -> int:
        rejected = _number(snapshot.get("batcher"), "rejected")
        if rejected is None:
            return 0
        current = int(rejected)
        last, self._last_rejected = self._last_rejected, current
        if last is None or current < last:
            return current  # first look, or the counter restarted
        return current - last

    def evaluate(self, snapshot: Mapping[str, Any]) -> dict[str, Any]:
        """Run every rule on ``snapshot``, update rule state, log, and return the result.

        A rule that raises is logged and counted as lacking data; it never fails the
        evaluation.

        Returns:
            ``{"insights": [...], "recommendations": [...], "status": ...}``; see the
            module docstring.
        """
        if not isinstance(snapshot, Mapping):
            raise InvalidMessageError("monitor: the snapshot must be a mapping of sections")
        now = self.clock.monotonic()
        data = RuleInput(
            snapshot=snapshot, metrics=self.metrics, settings=self.settings,
            cache_lookups=self._cache_window(snapshot),
            new_rejections=self._rejections(snapshot),
        )
        insights: list[dict[str, Any]] = []
        lacking: list[Reading] = []
        for rule in self.rules:
            try:
                reading = rule.read(data)
            except Exception:  # one broken rule must not hide the others
                _log.opt(exception=True).error("insight rule {} failed", rule.id)
                reading = rule.lacking(0.0, f"{rule.id} could not be evaluated")
            state = self._state.setdefault(rule.id, _RuleState())
            if reading is None:
                state.active = False  # does not apply (for example the cache is off)
                continue
            if reading.observed is None:
                # Not judged: the rule's state stands (a transient gap, such as a peer
                # restarting during the gather, neither clears nor re-fires it).
                lacking.append(reading)
                continue
            if state.active and reading.recovered:
                state.active = False
                _log.bind(insight=rule.id, severity="info", event="cleared").info(
                    "insight cleared: {} (observed {}, threshold {})",
                    rule.id, reading.observed, reading.threshold,
                )
            elif not state.active and reading.breached:
                state.active = True
                self._fired[rule.id] = self._fired.get(rule.id, 0) + 1
            if state.active:
                insight = self._insight(rule, reading)
                insights.append(insight)
                self._maybe_log(rule, reading, insight, state, now)
        self._evaluations += 1
        order = {s: i for i, s in enumerate(SEVERITIES)}
        insights.sort(key=lambda i: order.get(i["severity"], len(order)))
        if insights:
            status = "issues"
        elif lacking:
            status = "not_enough_data"
            insights = [self._not_enough_data(lacking)]
        else:
            status = "ok"
            insights = [{
                "id": "all_clear", "severity": "info", "observed": None, "threshold": None,
                "window_s": self.settings.window_s, "message": "No issues detected",
                "recommendation": "",
            }]
        recommendations: list[str] = []
        if status == "issues":
            for insight in insights:
                if insight["recommendation"] not in recommendations:
                    recommendations.append(insight["recommendation"])
        self._last_status = status
        return {"insights": insights, "recommendations": recommendations, "status": status}

    @staticmethod
    def _insight(rule: InsightRule, reading: Reading) -> dict[str, Any]:
        return {
            "id": rule.id,
            "severity": reading.severity or rule.severity,
            "observed": reading.observed,
            "threshold": reading.threshold,
            "window_s": reading.window_s,
            "message": rule.message,
            "recommendation": reading.recommendation or rule.recommendation,
        }

    def _not_enough_data(self, lacking: list[Reading]) -> dict[str, Any]:
        counted = [r.samples for r in lacking if r.samples is not None]
        return {
            "id": "not_enough_data",
            "severity": "info",
            "observed": min(counted) if counted else None,
            "threshold": self.settings.min_samples,
            "window_s": self.settings.window_s,
            "message": "Not enough data yet: " + "; ".join(str(r.lacking) for r in lacking),
            "recommendation": (
                "Wait for more activity; rules judge once they have monitor.min_samples "
                "samples"
            ),
        }

    def _maybe_log(self, rule: InsightRule, reading: Reading, insight: dict[str, Any],
                   state: _RuleState, now: float) -> None:
        """Log an active insight unless it was logged within the quiet period (and has not
        worsened since)."""
        observed = reading.observed
        assert observed is not None
        if state.logged_at is not None and state.logged_observed is not None:
            quiet = now - state.logged_at < self.settings.quiet_period_s
            if quiet and not rule.worsened(observed, state.logged_observed):
                return
        state.logged_at = now
        state.logged_observed = observed
        severity = insight["severity"]
        _log.bind(insight=rule.id, severity=severity, event="fired", observed=observed,
                  threshold=reading.threshold).log(
            _LOG_LEVEL.get(severity, "INFO"),
            "{} (observed {}, threshold {}, window {} s). {}",
            insight["message"], observed, reading.threshold, reading.window_s,
            insight["recommendation"],
        )

    # -- handlers --

    @handles(Evaluate)
    def _on_evaluate(self, message: Evaluate) -> dict[str, Any]:
        return self.evaluate(message.snapshot)

    @handles(Insights)
    def _on_insights(self, message: Insights) -> dict[str, Any]:
        return self.evaluate(self.gather())

    @handles(Trim)
    def _on_trim(self, message: Trim) -> None:
        self.metrics.trim()
        self._module_metrics.clear()
        if self._cache_history:
            last = self._cache_history[-1]
            self._cache_history.clear()
            self._cache_history.append(last)
        self.restart_counts()  # drops restarts older than the window
        self._trims += 1
        _log.debug("histories trimmed")

    @handles(ModuleMetrics)
    def _on_module_metrics(self, message: ModuleMetrics) -> None:
        if not isinstance(message.module_id, str) or not message.module_id:
            raise InvalidMessageError("monitor: module_id must be a non-empty string")
        if not isinstance(message.metrics, Mapping):
            raise InvalidMessageError("monitor: module metrics must be a mapping")
        self._module_metrics[message.module_id] = dict(message.metrics)

    @handles(ForgetModule)
    def _on_forget_module(self, message: ForgetModule) -> None:
        self._module_metrics.pop(message.module_id, None)

    @handles(ModuleReport)
    def _on_module_report(self, message: ModuleReport) -> dict[str, dict[str, Any]]:
        return {m: dict(v) for m, v in self._module_metrics.items()}

    @handles(Latencies)
    def _on_latencies(self, message: Latencies) -> dict[str, dict[str, dict[str, Any]]]:
        return {
            name: {"recent": h.recent().as_dict(), "total": h.total().as_dict()}
            for name, h in sorted(self.metrics.histograms().items())
        }

    @handles(Restarted)
    def _on_restarted(self, message: Restarted) -> None:
        self._restarts.append((self.clock.monotonic(), str(message.actor)))

    # -- snapshots --

    def statistics(self) -> MonitorStatistics:
        return MonitorStatistics(
            evaluations=self._evaluations,
            insights_fired=tuple(sorted(self._fired.items())),
            active=tuple(sorted(r for r, s in self._state.items() if s.active)),
            last_status=self._last_status,
            modules_reporting=len(self._module_metrics),
            trims=self._trims,
        )

    def export_pending(self) -> MonitorHandover:
        return MonitorHandover(
            active=tuple(sorted(r for r, s in self._state.items() if s.active)),
            last_logged=tuple(
                (r, s.logged_at, s.logged_observed) for r, s in sorted(self._state.items())
                if s.logged_at is not None and s.logged_observed is not None
            ),
            fired=tuple(sorted(self._fired.items())),
            evaluations=self._evaluations,
            restarts=tuple(self._restarts),
            module_metrics=tuple((m, dict(v)) for m, v in self._module_metrics.items()),
        )

    def restore(self, pending: Any) -> None:
        """Take over a predecessor's rule state, restart history and module metrics.

        Anything but a :class:`MonitorHandover` is logged and ignored.
        """
        if not isinstance(pending, MonitorHandover):
            _log.error("ignoring handover of type {}", type(pending).__name__)
            return
        for rule_id in pending.active:
            self._state.setdefault(rule_id, _RuleState()).active = True
        for rule_id, at, observed in pending.last_logged:
            state = self._state.setdefault(rule_id, _RuleState())
            state.logged_at, state.logged_observed = at, observed
        for rule_id, count in pending.fired:
            self._fired[rule_id] = self._fired.get(rule_id, 0) + count
        self._evaluations += pending.evaluations
        self._restarts.extend(pending.restarts)
        for module_id, metrics in pending.module_metrics:
            self._module_metrics.setdefault(module_id, dict(metrics))
