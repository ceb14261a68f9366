"""The monitor's insight bookkeeping: which rules are active, how often each fired, and
when each was last logged (:class:`InsightLedger`).

The rules, given one evaluation's readings:

- a reading of ``None`` (the rule does not apply, for example the cache is off) clears the
  rule without a log line;
- a reading that could not judge (``observed`` is ``None``: too few samples, a section
  missing) leaves the rule's state as it is, so a transient gap neither clears nor
  re-fires it, and is reported as not enough data when nothing else is active;
- an inactive rule whose reading breaches its threshold becomes active (counted in
  ``insights_fired``); an active one clears (logged) once its reading has recovered past
  the threshold by the rule's hysteresis;
- an active rule is logged when it fires and then at most once per
  ``monitor.quiet_period_s``, unless it has worsened since it was last logged.

The result is ``{"insights": [...], "recommendations": [...], "status": ...}``: the active
insights by severity (``status`` ``issues``), else one ``not_enough_data`` item, else one
``all_clear`` item (``ok``). Nothing here catches: a rule whose ``worsened`` raises fails
the evaluation it is in (the actor runs every rule's ``read`` guarded before this).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from loguru import logger

from modcoord.actors.rules import SEVERITIES, InsightRule, Reading, insight
from modcoord.actors.settings import MonitorSettings

__all__ = ["InsightLedger"]

_LOG_LEVEL = {"info": "INFO", "warning": "WARNING", "critical": "ERROR"}


@dataclass
class _RuleState:
    active: bool = False
    logged_at: float | None = None
    logged_observed: float | None = None


class InsightLedger:
    """The rule state of one monitor across evaluations (see the module docstring).

    Args:
        rule_ids: the built-in rules' ids (plugin rules get their state when first seen).
        actor: the actor name the insight log lines are bound to.
    """

    def __init__(self, rule_ids: Iterable[str], actor: str) -> None:
        self._state: dict[str, _RuleState] = {r: _RuleState() for r in rule_ids}
        self._fired: dict[str, int] = {}
        self._log = logger.bind(actor=actor)

    def judge(self, judged: Sequence[tuple[InsightRule, Reading | None]],
              settings: MonitorSettings, now: float) -> dict[str, Any]:
        """Update the rule state from ``judged`` (each rule with its reading, in order),
        log what fired or cleared, and return the result (see the module docstring)."""
        insights: list[dict[str, Any]] = []
        lacking: list[Reading] = []
        for rule, reading in judged:
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
                self._log.bind(insight=rule.id, severity="info", event="cleared",
                               observed=reading.observed, threshold=reading.threshold).info(
                    "insight cleared")
            elif not state.active and reading.breached:
                state.active = True
                self._fired[rule.id] = self._fired.get(rule.id, 0) + 1
            if state.active:
                found = insight(rule, reading)
                insights.append(found)
                self._maybe_log(rule, reading, found, state, now, settings)
        order = {s: i for i, s in enumerate(SEVERITIES)}
        insights.sort(key=lambda i: order.get(i["severity"], len(order)))
        if insights:
            status = "issues"
        elif lacking:
            status = "not_enough_data"
            insights = [_not_enough_data(lacking, settings)]
        else:
            status = "ok"
            insights = [{
                "id": "all_clear", "severity": "info", "observed": None, "threshold": None,
                "window_s": settings.window_s, "message": "No issues detected",
                "recommendation": "",
            }]
        recommendations: list[str] = []
        if status == "issues":
            for item in insights:
                if item["recommendation"] not in recommendations:
                    recommendations.append(item["recommendation"])
        return {"insights": insights, "recommendations": recommendations, "status": status}

    def _maybe_log(self, rule: InsightRule, reading: Reading, insight: dict[str, Any],
                   state: _RuleState, now: float, settings: MonitorSettings) -> None:
        """Log an active insight unless it was logged within the quiet period (and has not
        worsened since)."""
        observed = reading.observed
        assert observed is not None
        if state.logged_at is not None and state.logged_observed is not None:
            quiet = now - state.logged_at < settings.quiet_period_s
            if quiet and not rule.worsened(observed, state.logged_observed):
                return
        state.logged_at = now
        state.logged_observed = observed
        severity = insight["severity"]
        self._log.bind(insight=rule.id, severity=severity, event="fired", observed=observed,
                       threshold=reading.threshold, window_s=reading.window_s,
                       summary=insight["message"], recommendation=insight["recommendation"]
                       ).log(_LOG_LEVEL.get(severity, "INFO"), "insight fired")

    # -- snapshots and handover --

    def active(self) -> tuple[str, ...]:
        """The ids of the rules active now, sorted."""
        return tuple(sorted(r for r, s in self._state.items() if s.active))

    def fired(self) -> tuple[tuple[str, int], ...]:
        """``(rule id, times it became active)``, sorted by id."""
        return tuple(sorted(self._fired.items()))

    def last_logged(self) -> tuple[tuple[str, float, float], ...]:
        """``(rule id, clock time, observed value)`` of each rule's last log, sorted by id."""
        return tuple(
            (r, s.logged_at, s.logged_observed) for r, s in sorted(self._state.items())
            if s.logged_at is not None and s.logged_observed is not None
        )

    def restore(self, active: Iterable[str], last_logged: Iterable[tuple[str, float, float]],
                fired: Iterable[tuple[str, int]]) -> None:
        """Take over a predecessor's rule state (its :meth:`active`, :meth:`last_logged`
        and :meth:`fired`); fired counts add to this ledger's."""
        for rule_id in active:
            self._state.setdefault(rule_id, _RuleState()).active = True
        for rule_id, at, observed in last_logged:
            state = self._state.setdefault(rule_id, _RuleState())
            state.logged_at, state.logged_observed = at, observed
        for rule_id, count in fired:
            self._fired[rule_id] = self._fired.get(rule_id, 0) + count


def _not_enough_data(lacking: list[Reading], settings: MonitorSettings) -> dict[str, Any]:
    counted = [r.samples for r in lacking if r.samples is not None]
    return {
        "id": "not_enough_data",
        "severity": "info",
        "observed": min(counted) if counted else None,
        "threshold": settings.min_samples,
        "window_s": settings.window_s,
        "message": "Not enough data yet: " + "; ".join(str(r.lacking) for r in lacking),
        "recommendation": (
            "Wait for more activity; rules judge once they have monitor.min_samples "
            "samples"
        ),
    }
