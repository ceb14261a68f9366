"""Shared by every part of the bench: constants, the error, statistics, result rows, the plan."""

from __future__ import annotations

import math
import os
import statistics
import struct
from dataclasses import dataclass
from typing import Any

HEADER = struct.Struct(">I")
MB = 1024 * 1024
MODES = ["MANUAL", "HYBRID", "FULLY_AUTO"]
PUBLISH_PAYLOAD = {"n": 0, "text": "the quick brown fox"}
COORD_CONTEXT = {"bench": "cached", "user": 7}
CLI_TIMEOUT = 60.0
AUTHKEY = b"modcoord-bench"


class BenchError(Exception):
    """A measurement could not be made (a task failed, a wait timed out, a daemon died)."""


# -- statistics ------------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile of ``samples`` (``q`` in [0, 1]).

    Raises:
        BenchError: ``samples`` is empty.
    """
    if not samples:
        raise BenchError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: list[float]) -> float:
    """The median of ``values``.

    Raises:
        BenchError: ``values`` is empty.
    """
    if not values:
        raise BenchError("no values")
    return float(statistics.median(values))


# -- results and the plan ------------------------------------------------------------------------


@dataclass
class Result:
    """One row of the output (see the module docstring for the semantics)."""

    name: str
    value: float | None
    unit: str
    baseline: float | None
    ratio: float | None
    target: str
    met: bool
    notes: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "unit": self.unit,
                "baseline": self.baseline, "ratio": self.ratio, "target": self.target,
                "met": self.met}


@dataclass(frozen=True)
class Plan:
    """How much to measure (``--quick`` or full)."""

    rounds: int
    latency_rounds: int
    coord_n: int
    pipelined_n: int
    delivered_n: int
    uncached_n: int
    cached_n: int
    priority_n: int
    lateness_s: float
    flush_n: int
    many_cached_n: int
    many_rounds: int
    extra_starts: int
    startup_rounds: int

    @classmethod
    def of(cls, quick: bool) -> Plan:
        if quick:
            return cls(rounds=5, latency_rounds=10, coord_n=500, pipelined_n=15_000,
                       delivered_n=10_000, uncached_n=200, cached_n=1000, priority_n=30,
                       lateness_s=2.0, flush_n=5_000, many_cached_n=1500, many_rounds=2,
                       extra_starts=0, startup_rounds=7)
        return cls(rounds=11, latency_rounds=40, coord_n=1000, pipelined_n=30_000,
                   delivered_n=30_000, uncached_n=500, cached_n=3000, priority_n=150,
                   lateness_s=8.0, flush_n=20_000, many_cached_n=5000, many_rounds=3,
                   extra_starts=7, startup_rounds=21)


def row(name: str, value: float, unit: str, target: str, baseline: float | None = None,
        notes: str = "") -> Result:
    """Build a row from already rounded numbers.

    ``ratio`` is ``value / baseline`` (None without a baseline); ``met`` evaluates
    ``target``: ``"<= 1.0x"`` bounds the ratio, ``"<= 50 MB"`` or ``">= 0.90"`` the value.

    Raises:
        BenchError: a ratio target without a positive baseline, or a malformed target.
    """
    ratio = round(value / baseline, 3) if baseline else None
    op, _, rest = target.partition(" ")
    bound_text = rest.split()[0] if rest.split() else ""
    try:
        bound = float(bound_text.rstrip("x"))
    except ValueError:
        raise BenchError(f"malformed target {target!r}") from None
    compared = ratio if bound_text.endswith("x") else value
    if compared is None:
        raise BenchError(f"{name}: target {target!r} needs a positive baseline")
    if op not in ("<=", ">="):
        raise BenchError(f"malformed target {target!r}")
    met = compared <= bound if op == "<=" else compared >= bound
    return Result(name, value, unit, baseline, ratio, target, met, notes)


def us(seconds: float) -> float:
    return round(seconds * 1e6, 1)


def user_env() -> dict[str, str]:
    """The environment of the runs of figures 12, 13 and 14 (``modcoord start``, the client
    import, ``status --json``): this one, but with byte-code caching
    as a user has it (``PYTHONDONTWRITEBYTECODE`` dropped, so that the warm-up run writes
    the ``.pyc`` files the measured runs then read; with it set, a module changed since
    its cache was written would be compiled again on every run)."""
    env = os.environ.copy()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env
