"""Checks of ``modcoord metrics`` and the HTTP endpoint with Prometheus's own tools.

:func:`parse_text` and :func:`parse_openmetrics` parse with ``prometheus_client``'s parsers
(they raise on anything malformed); :func:`check_conventions` checks every ``modcoord_*``
family against the table :data:`~modcoord.supervisor.daemon.exposition.METRICS` (type,
labels, unit suffix), that no gauge carries a ``quantile`` label, and that histograms are
cumulative with ``+Inf == _count``. :func:`promtool` finds ``promtool`` (``$PROMTOOL``,
``PATH``, or ``.cache/tools`` where ``scripts/get-tools`` puts it; see ``tools.py``).
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from tools import find_tool, tool_or_skip

from modcoord.actors.histogram import PROMETHEUS_BUCKETS_S
from modcoord.supervisor.daemon.exposition import METRICS

__all__ = ["check_conventions", "check_histogram", "parse_openmetrics", "parse_text",
           "promtool", "promtool_check", "promtool_or_skip", "spec_for", "value_of"]

REPO = Path(__file__).resolve().parent.parent
UNITS = ("seconds", "bytes", "ratio")
PROCESS_FAMILIES = {"process_resident_memory_bytes", "process_cpu_seconds",
                    "process_start_time_seconds", "process_open_fds", "process_max_fds",
                    "process_virtual_memory_bytes"}


def parse_text(text: str) -> dict[str, Metric]:
    """Families of the text format, by name (counters without ``_total``)."""
    out: dict[str, Metric] = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in out, f"family {family.name} appears twice"
        out[family.name] = family
    return out


def parse_openmetrics(text: str) -> dict[str, Metric]:
    """Families of the OpenMetrics format, by name (raises unless it ends ``# EOF``)."""
    return {f.name: f for f in openmetrics_families(text)}  # type: ignore[no-untyped-call]


def spec_for(family: Metric, openmetrics: bool) -> str:
    """The :data:`METRICS` name of a parsed family."""
    for name, spec in METRICS.items():
        base = name
        if spec.kind == "counter":
            base = name[:-len("_total")]
        elif spec.kind == "info" and openmetrics:
            base = name[:-len("_info")]
        if family.name == base:
            return name
    raise AssertionError(f"family {family.name} is not in the METRICS table")


def check_histogram(family: Metric) -> tuple[dict[tuple[tuple[str, str], ...],
                                                  list[tuple[float, float]]], float]:
    """Check a histogram family; return its buckets by label set, and its total count."""
    buckets: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    counts: dict[tuple[tuple[str, str], ...], float] = {}
    for s in family.samples:
        key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        if s.name.endswith("_bucket"):
            buckets.setdefault(key, []).append((float(s.labels["le"]), s.value))
        elif s.name.endswith("_count"):
            counts[key] = s.value
        elif s.name.endswith("_sum"):
            assert s.value >= 0, s
    total = 0.0
    for key, series in buckets.items():
        bounds = [le for le, _ in series]
        assert bounds == [*PROMETHEUS_BUCKETS_S, math.inf], (family.name, key, bounds)
        values = [n for _, n in series]
        assert values == sorted(values), f"{family.name}{key} buckets are not cumulative"
        assert values[-1] == counts[key], f"{family.name}{key}: +Inf != _count"
        total += counts[key]
    return buckets, total


def check_conventions(families: dict[str, Metric], openmetrics: bool = False) -> None:
    """Every family is a known ``modcoord_*`` one (or ``process_*``), typed, labelled and
    named as the table says; no gauge has a ``quantile`` label."""
    for family in families.values():
        if family.name.startswith("process_"):
            continue
        spec = METRICS[spec_for(family, openmetrics)]
        kind = "gauge" if spec.kind == "info" and not openmetrics else spec.kind
        assert family.type == kind, (family.name, family.type, spec.kind)
        if spec.unit:
            assert spec.name.removesuffix("_total").endswith("_" + spec.unit), spec.name
            if openmetrics:
                assert family.unit == spec.unit, (family.name, family.unit)
        for unit in UNITS:  # a unit in the name is declared
            if f"_{unit}" in spec.name.removesuffix("_total"):
                assert spec.unit == unit, spec.name
        for s in family.samples:
            labels = set(s.labels) - {"le", "quantile"}
            assert labels == set(spec.labels), (s.name, s.labels, spec.labels)
            if "quantile" in s.labels:
                assert family.type == "summary", f"{s.name} has a quantile label"
        if family.type == "histogram":
            check_histogram(family)
    assert {f.name for f in families.values()} >= PROCESS_FAMILIES, "process_* metrics"


def value_of(families: dict[str, Metric], family: str, sample: str | None = None,
             **labels: str) -> float:
    """The value of the one sample of ``family`` (named ``sample``, default the family's
    own name or ``<name>_total``) with exactly ``labels``."""
    found = [s.value for s in families[family].samples
             if (sample is None or s.name == sample) and s.labels == labels
             and (sample is not None or not s.name.endswith(("_created", "_bucket")))]
    assert len(found) == 1, (family, sample, labels, found)
    return found[0]


def promtool() -> str | None:
    """The path of ``promtool``, or None if it is not installed here."""
    return find_tool("promtool")


def promtool_or_skip() -> str:
    """``promtool``'s path; skips (or fails, where the run requires it) without it."""
    return tool_or_skip("promtool")


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    """Run ``promtool check metrics`` on ``text`` (skips without promtool)."""
    tool = promtool_or_skip()
    return subprocess.run([tool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)
