"""The monitor: latency percentiles, module metrics, and plain-language insights.

The monitor (``monitor``) reads the shared :class:`~modcoord.actors.shared.metrics.MetricsRegistry`
(``context.shared.metrics``) that every part of the daemon records latencies into, keeps
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

The rules (:data:`~modcoord.actors.rules.RULES`, pure functions of a typed snapshot in
:mod:`modcoord.actors.rules`) each give an id, a severity, the observed value, the
threshold, the window, a message and a recommendation naming the config key to change; the
monitor's :class:`~modcoord.actors.monitor_insights.InsightLedger` keeps their state. A
rule that needs samples and has fewer than ``monitor.min_samples`` does not judge; it says
so. Rules do not flap: a fired rule stays active until its observed value recovers past the
threshold by ``HYSTERESIS`` (10%), and it is logged at most once per
``monitor.quiet_period_s`` (when it fires, and as a reminder once a quiet period has passed
while it stays active) unless it has worsened by ``WORSENING`` (25%) since it was last
logged. A rule that cannot judge (too few samples, a section missing) keeps its state: a
transient gap neither clears nor re-fires it.

Rules from plugins (``plugins.insight_rules``, entry-point group ``modcoord.insight_rules``)
run after the built-in ones, each through its guard (:mod:`modcoord.actors.plugins`): one
that raises, hangs past ``plugins.timeout_ms`` or returns something other than a
:class:`~modcoord.actors.rules.Reading` (or ``None``) is counted and logged and judges
nothing that evaluation; after ``plugins.max_failures`` in a row it is disabled. A plugin
rule whose id is a built-in's is refused the same way.

Gathering the peers' statistics and the snapshots (the one the rules read, the monitor's
own statistics and handover) are :mod:`modcoord.actors.monitor_snapshots`, re-exported
here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pykka
from loguru import logger

from modcoord.actors._base import ActorContext, ManagedActor, handles
from modcoord.actors.clock import TimerHandle
from modcoord.actors.errors import InvalidMessageError, ModcoordError
from modcoord.actors.message import Message
from modcoord.actors.monitor_insights import InsightLedger
from modcoord.actors.monitor_snapshots import (
    GATHER_TIMEOUT_S,
    PEERS,
    MonitorHandover,
    MonitorStatistics,
    adaptive_summaries,
    build_snapshot,
    collect_statistics,
)
from modcoord.actors.plugins import Loaded, PluginError
from modcoord.actors.rules import (
    RULES,
    InsightRule,
    LatencyWindow,
    Reading,
    number,
    rule_snapshot,
)
from modcoord.actors.rules_cluster import CLUSTER_RULES
from modcoord.actors.settings import MonitorSettings
from modcoord.actors.shared.cluster import ClusterView
from modcoord.actors.shared.metrics import MetricsRegistry
from modcoord.actors.tuning import AdaptiveSummary

__all__ = [
    "GATHER_TIMEOUT_S",
    "PEERS",
    "Evaluate",
    "ForgetModule",
    "Insights",
    "Latencies",
    "ModuleMetrics",
    "ModuleReport",
    "MonitorActor",
    "MonitorHandover",
    "MonitorStatistics",
    "Restarted",
    "Trim",
    "adaptive_summaries",
    "build_snapshot",
]

_log = logger.bind(actor="monitor")


# -- messages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluate(Message):
    """Evaluate the rules against ``snapshot`` (and the typed adaptive summaries); the
    reply is the insights dict."""

    snapshot: dict[str, Any]
    adaptive: tuple[AdaptiveSummary, ...] = ()


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


def _check_reading(reading: Any) -> str | None:
    """Why a plugin rule's verdict is unusable, or ``None``."""
    if reading is None or isinstance(reading, Reading):
        return None
    return f"read returned {type(reading).__name__}, not a Reading or None"


# -- the actor -----------------------------------------------------------------------------


class MonitorActor(ManagedActor):
    """The ``monitor`` actor. See the module docstring.

    Uses ``context.shared.metrics`` (the latency histograms) and
    ``context.shared.queue_gauge`` (its ``max_queue`` supplies the batch queue limit when
    the batcher's statistics do not carry it). The rules are
    :data:`~modcoord.actors.rules.RULES`, then
    :data:`~modcoord.actors.rules_cluster.CLUSTER_RULES` (they judge
    ``context.shared.cluster``, the cluster when another engine set its source).
    """

    actor_name = "monitor"
    settings_type = MonitorSettings
    settings: MonitorSettings
    rules: tuple[InsightRule, ...] = (*RULES, *CLUSTER_RULES)

    def __init__(self, settings: Any, context: ActorContext, takeover: Any = None) -> None:
        super().__init__(settings, context, takeover)
        self.metrics: MetricsRegistry = context.shared.metrics
        self._histograms = tuple(sorted({h for r in self.rules for h in r.histograms}))
        self._builtin_ids = frozenset(r.id for r in self.rules)
        self._ledger = InsightLedger((r.id for r in self.rules), self.actor_name)
        self._evaluations = 0
        self._trims = 0
        self._last_status = ""
        self._module_metrics: dict[str, dict[str, Any]] = {}
        self._restarts: deque[tuple[float, str]] = deque()
        self._cache_history: deque[tuple[float, int, int]] = deque()
        self._last_rejected: int | None = None
        self._lag_history: deque[tuple[float, dict[int, int]]] = deque()
        self._last_refused: int | None = None
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
        self.evaluate(*self.gather())

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

    def gather(self) -> tuple[dict[str, Any], tuple[AdaptiveSummary, ...]]:
        """Ask the peers for statistics (bounded); build the snapshot and keep the typed
        adaptive summaries.

        Peers that are absent, stopped, crashing or slower than :data:`GATHER_TIMEOUT_S`
        are left out of the snapshot (see :func:`collect_statistics`).
        """
        stats = collect_statistics(self.context.handles, self.actor_name)
        max_queue = self.context.shared.queue_gauge.max_queue
        return (build_snapshot(stats, self.restart_counts(), max_queue),
                adaptive_summaries(stats))

    # -- evaluation --

    def _cache_window(self, snapshot: Mapping[str, Any]) -> tuple[int, int] | None:
        """(hits, misses) within ``window_s``, from the cache's cumulative counters.

        The baseline is the latest reading at or before the window's start; until the
        monitor has one (it has watched for less than a window, or the counters went back
        because the cache restarted), the counters since start are used.
        """
        cache = snapshot.get("cache")
        hits, misses = number(cache, "hits"), number(cache, "misses")
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

    def _latencies(self) -> dict[str, LatencyWindow]:
        """The recent windows of the histograms the rules read (absent: not recorded)."""
        histograms = self.metrics.histograms()
        out: dict[str, LatencyWindow] = {}
        extra = {h for p in self.context.shared.plugins.insight_rules() if p.obj is not None
                 for h in getattr(p.obj, "histograms", ()) if isinstance(h, str)}
        for name in (*self._histograms, *sorted(extra.difference(self._histograms))):
            hist = histograms.get(name)
            if hist is not None:
                out[name] = LatencyWindow(hist.recent(), hist.window_s)
        return out

    def _rejections(self, snapshot: Mapping[str, Any]) -> int:
        rejected = number(snapshot.get("batcher"), "rejected")
        if rejected is None:
            return 0
        current = int(rejected)
        last, self._last_rejected = self._last_rejected, current
        if last is None or current < last:
            return current  # first look, or the counter restarted
        return current - last

    def _cluster(self) -> ClusterView | None:
        """The cluster view (``None`` without a cluster, or when the probe raised:
        logged, and the cluster rules do not judge): the probe's snapshot, each owned
        partition's lag growth within ``window_s`` and the refusals since the last look."""
        try:
            got = self.context.shared.cluster.read()
        except Exception:
            _log.opt(exception=True).error("the cluster could not be read")
            return None
        if got is None:
            return None
        now = self.clock.monotonic()
        history = self._lag_history
        history.append((now, dict(got.lag)))
        edge = now - self.settings.window_s
        while len(history) >= 2 and history[1][0] <= edge:
            history.popleft()
        t0, first = history[0]
        growth = tuple((p, max(0, lag - first.get(p, lag))) for p, lag in got.lag)
        last, self._last_refused = self._last_refused, got.refused
        refusals = got.refused if last is None or got.refused < last else got.refused - last
        return ClusterView(got, growth, round(now - t0, 3), refusals)

    def evaluate(self, snapshot: Mapping[str, Any],
                 adaptive: tuple[AdaptiveSummary, ...] = ()) -> dict[str, Any]:
        """Run every rule on ``snapshot`` (and ``adaptive``, the typed summaries), update
        rule state, log, and return the result.

        A rule that raises is logged and counted as lacking data; it never fails the
        evaluation.

        Returns:
            ``{"insights": [...], "recommendations": [...], "status": ...}``; see the
            module docstring.
        """
        if not isinstance(snapshot, Mapping):
            raise InvalidMessageError("monitor: the snapshot must be a mapping of sections")
        now = self.clock.monotonic()
        data = rule_snapshot(
            snapshot, self._latencies(), self.metrics.window_s,
            cache_lookups=self._cache_window(snapshot),
            new_rejections=self._rejections(snapshot),
            adaptive=adaptive,
        )
        cluster = self._cluster()
        if cluster is not None:
            data = dataclasses.replace(data, cluster=cluster)
        settings = self.settings
        judged: list[tuple[InsightRule, Reading | None]] = []
        for rule in self.rules:
            try:
                reading = rule.read(data, settings)
            except Exception:  # one broken rule must not hide the others
                _log.bind(insight=rule.id).opt(exception=True).error("insight rule failed")
                reading = rule.lacking(0.0, f"{rule.id} could not be evaluated")
            judged.append((rule, reading))
        for loaded in self.context.shared.plugins.insight_rules():
            got = self._plugin_reading(loaded, data)
            if got is not None:
                judged.append(got)
        result = self._ledger.judge(judged, settings, now)
        self._evaluations += 1
        self._last_status = result["status"]
        return result

    def _plugin_reading(self, loaded: Loaded, data: Any
                        ) -> tuple[InsightRule, Reading | None] | None:
        """A plugin rule's verdict through its guard, or ``None`` when it judged nothing
        (disabled, failed, or its id is a built-in's: counted and logged)."""
        rule, guard = loaded.obj, loaded.guard
        if rule is None or guard.disabled:
            return None
        if not isinstance(rule, InsightRule):
            guard.failed(f"{type(rule).__name__} is not an InsightRule (subclass "
                         "modcoord.actors.rules.InsightRule)")
            return None
        rule_id = getattr(rule, "id", None)
        if not isinstance(rule_id, str) or not rule_id or rule_id in self._builtin_ids:
            guard.failed(f"rule id {rule_id!r} is missing or a built-in rule's id")
            return None
        try:
            reading = guard.call(rule.read, data, self.settings, check=_check_reading)
        except PluginError:
            return None
        return rule, reading

    # -- handlers --

    @handles(Evaluate)
    def _on_evaluate(self, message: Evaluate) -> dict[str, Any]:
        return self.evaluate(message.snapshot, message.adaptive)

    @handles(Insights)
    def _on_insights(self, message: Insights) -> dict[str, Any]:
        return self.evaluate(*self.gather())

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
            insights_fired=self._ledger.fired(),
            active=self._ledger.active(),
            last_status=self._last_status,
            modules_reporting=len(self._module_metrics),
            trims=self._trims,
        )

    def export_pending(self) -> MonitorHandover:
        return MonitorHandover(
            active=self._ledger.active(),
            last_logged=self._ledger.last_logged(),
            fired=self._ledger.fired(),
            evaluations=self._evaluations,
            restarts=tuple(self._restarts),
            module_metrics=tuple((m, dict(v)) for m, v in self._module_metrics.items()),
        )

    def restore(self, pending: Any) -> None:
        """Take over a predecessor's rule state, restart history and module metrics.

        Anything but a :class:`MonitorHandover` is logged and ignored.
        """
        if not isinstance(pending, MonitorHandover):
            _log.error("ignoring a handover of an unknown type", type=type(pending).__name__)
            return
        self._ledger.restore(pending.active, pending.last_logged, pending.fired)
        self._evaluations += pending.evaluations
        self._restarts.extend(pending.restarts)
        for module_id, metrics in pending.module_metrics:
            self._module_metrics.setdefault(module_id, dict(metrics))
