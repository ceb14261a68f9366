"""Adaptive tuning: the estimators the debouncer and the batcher tune themselves with.

Neither tuner reads time or talks to anyone: the actor hands it clock readings (seconds)
and asks for the effective value. Both are bounded in memory and explain themselves: each
effective value carries the configured one and the reason, for ``status`` (see
:meth:`DebounceTuner.summary`, :meth:`BatchTuner.summary`).

- :class:`DebounceTuner` learns, per ``(module, key)``, the distribution of gaps between
  publishes in a :class:`DecayedGapHistogram` (older gaps weigh less: a half-life counted
  in samples) and sets the delay to a high quantile of the gaps times a margin — just long
  enough to collapse a burst — clamped to ``[adaptive.debounce.min_ms, max_ms]`` and never
  past ``debounce.max_wait_ms``. A gap of ``max_ms`` or more is a pause between bursts (no
  allowed delay could collapse it) and is not counted. While a key has fewer than
  ``min_samples`` gaps its module's estimate (all the module's keys' gaps) is used, and
  while the module has too few too, the configured ``debounce.delay_ms``. Keys and
  modules idle longer than ``forget_after_ms`` are forgotten; at most ``max_keys`` keys
  are tracked (a key beyond the cap uses its module's estimate, counted as ``untracked``
  and logged once each time the cap is reached).
- :class:`BatchTuner` keeps a decayed arrival rate (:class:`DecayedRate`) and makes the
  batch window follow it: ``load`` = rate × ``batch.window_ms`` / ``batch.max_size``,
  window = ``batch.window_ms`` × load clamped to ``[adaptive.batch.min_window_ms,
  batch.window_ms]``, with a dead band (``hysteresis``) so the window does not jitter
  (a bound is always reached).
"""

from __future__ import annotations

import math
from array import array

from loguru import logger

from modcoord.actors.settings import AdaptiveSettings, BatchSettings, DebounceSettings
from modcoord.actors.shared.pressure import Widening
from modcoord.actors.tuning import (
    AdaptiveParameter,
    AdaptiveSubject,
    BatchSummary,
    DebounceSummary,
    frozen_parameter,
)

__all__ = [
    "GAP_BUCKETS",
    "GAP_MIN_MS",
    "GAP_RATIO",
    "LOG_INTERVAL_S",
    "RECOMPUTE_INTERVAL_S",
    "BatchTuner",
    "DebounceTuner",
    "DecayedGapHistogram",
    "DecayedRate",
    "bucket",
    "frozen_parameter",
]

GAP_MIN_MS = 1.0
"""The first histogram bucket holds the gaps below ``GAP_MIN_MS × GAP_RATIO``."""
GAP_RATIO = 1.12
"""Each bucket is this much wider than the one before (quantiles are interpolated)."""
GAP_BUCKETS = 80
"""Buckets per histogram: the last starts at ``GAP_MIN_MS × GAP_RATIO ** 79`` (~7.7 s)."""
RECOMPUTE_INTERVAL_S = 0.05
"""A key's (module's) delay is recomputed at its ``min_samples``-th gap, then at a gap at
least this long after the last recomputation (a fast stream costs no quantile per publish)."""
LOG_INTERVAL_S = 10.0
"""A module's delay (the batch window) is logged at most once per this many seconds: a
change beyond ``adaptive.log_change_fraction`` of the last logged value is logged once."""
_RESCALE_AT = 1e100  # growing sample weights are scaled back to 1 past this
_LOG_RATIO = math.log(GAP_RATIO)
_FIRST_EDGE = GAP_MIN_MS * GAP_RATIO
_EDGES = [0.0] + [GAP_MIN_MS * GAP_RATIO ** i for i in range(1, GAP_BUCKETS + 1)]


class DecayedGapHistogram:
    """An exponentially decayed histogram of gaps (ms) on geometric buckets.

    Instead of decaying every bucket at each sample, each new sample weighs
    ``growth`` times the previous one (``growth = 2 ** (1 / half_life)``), which is the same
    distribution at O(1) per sample; the weights are scaled back before they overflow.
    """

    __slots__ = ("counts", "growth", "samples", "top", "total", "weight")

    def __init__(self, half_life_samples: float) -> None:
        self.counts = array("d", bytes(8 * GAP_BUCKETS))
        self.growth = 2.0 ** (1.0 / half_life_samples)
        self.weight = 1.0
        self.total = 0.0
        self.samples = 0
        self.top = 0  # the highest bucket ever used: quantiles are searched from it down

    def add(self, gap_ms: float) -> None:
        """Count one gap (negative gaps count as 0)."""
        self.add_bucket(bucket(gap_ms))

    def add_bucket(self, index: int) -> None:
        """Count one gap in bucket ``index`` (see :func:`bucket`)."""
        w = self.weight * self.growth
        self.counts[index] += w
        self.total += w
        self.samples += 1
        if index > self.top:
            self.top = index
        if w > _RESCALE_AT:
            counts = self.counts
            for i in range(GAP_BUCKETS):
                counts[i] /= w
            self.total /= w
            w = 1.0
        self.weight = w

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (ms), interpolated within its bucket; 0.0 when empty.

        Searched from the highest bucket down (a high quantile is a few buckets away)."""
        if self.total <= 0.0:
            return 0.0
        above = (1.0 - q) * self.total  # the weight that lies above the quantile
        cumulative = 0.0
        counts = self.counts
        for i in range(self.top, -1, -1):
            c = counts[i]
            if c > 0.0 and cumulative + c >= above:
                lo, hi = _EDGES[i], _EDGES[i + 1]
                return hi - (hi - lo) * max(0.0, (above - cumulative) / c)
            cumulative += c
        return 0.0


def bucket(gap_ms: float) -> int:
    """The histogram bucket of a gap (ms)."""
    if gap_ms < _FIRST_EDGE:
        return 0
    return min(int(math.log(gap_ms / GAP_MIN_MS) / _LOG_RATIO), GAP_BUCKETS - 1)


class _Track:
    """What a tuner knows about one key or one module (its histogram is made at its first
    gap: a key published once costs no histogram)."""

    __slots__ = ("computed_at", "delay_s", "effective_ms", "gap_ms", "hist", "last_at",
                 "logged_at", "logged_ms", "pinned")

    def __init__(self, now: float, configured_ms: float) -> None:
        self.hist: DecayedGapHistogram | None = None
        self.last_at = now
        self.effective_ms = configured_ms
        self.delay_s = configured_ms / 1000.0
        self.gap_ms = 0.0
        self.pinned: str | None = None
        self.logged_ms = configured_ms
        self.logged_at = -math.inf
        self.computed_at = -math.inf

    @property
    def samples(self) -> int:
        return 0 if self.hist is None else self.hist.samples


class DebounceTuner:
    """The debounce delay per key from the gaps between its publishes (module doc).

    Args:
        section: ``debounce`` (``delay_ms`` is the configured delay, ``max_wait_ms`` caps).
        adaptive: ``adaptive`` (its ``debounce`` bounds and estimator settings).
        actor: the actor name the log lines are bound to.
        widening: the shared CPU-pressure factor (``adaptive.resources``): every delay
            is multiplied by it, up to ``max_ms``; ``None``: never widened.
    """

    def __init__(self, section: DebounceSettings, adaptive: AdaptiveSettings,
                 actor: str = "debouncer", widening: Widening | None = None) -> None:
        a = adaptive.debounce
        self.configured_ms = section.delay_ms
        self.min_ms = min(a.min_ms, section.max_wait_ms)
        self.max_ms = min(a.max_ms, section.max_wait_ms)
        self.max_key = ("adaptive.debounce.max_ms" if a.max_ms <= section.max_wait_ms
                        else "debounce.max_wait_ms")
        self.quantile = a.quantile
        self.margin = a.margin
        self.min_samples = a.min_samples
        self.half_life = a.half_life_samples
        self.forget_after_s = a.forget_after_ms / 1000.0
        self.max_keys = a.max_keys
        self.top_n = adaptive.summary_top_n
        self.log_change = adaptive.log_change_fraction
        self.keys: dict[tuple[str, str], _Track] = {}
        self.modules: dict[str, _Track] = {}
        self.untracked = 0
        self.forgotten = 0
        self._at_cap = False
        self._next_sweep = -math.inf
        self._log = logger.bind(actor=actor)
        self._configured_s = self.configured_ms / 1000.0
        self._widening = widening if widening is not None else Widening()
        self._max_s = self.max_ms / 1000.0

    # -- the hot path --

    def delay_for(self, module: str, key: str, now: float) -> float:
        """Observe a publish of ``(module, key)`` at ``now``; return the delay (seconds),
        widened by the CPU-pressure factor (never past ``max_ms``)."""
        delay = self._learn(module, key, now)
        factor = self._widening.factor
        if factor != 1.0:
            return min(delay * factor, max(self._max_s, delay))
        return delay

    def _learn(self, module: str, key: str, now: float) -> float:
        if now >= self._next_sweep:
            self.sweep(now)
        mod = self.modules.get(module)
        if mod is None:
            mod = self.modules[module] = _Track(now, self.configured_ms)
        track = self.keys.get((module, key))
        if track is None:
            if len(self.keys) >= self.max_keys:  # (idle ones go at the periodic sweep)
                self.untracked += 1
                if not self._at_cap:
                    self._at_cap = True
                    self._log.warning(
                        "adaptive debounce at its key cap (adaptive.debounce.max_keys): "
                        "further keys use their module's delay (counted as untracked); "
                        "raise adaptive.debounce.max_keys", max_keys=self.max_keys)
                mod.last_at = now
                return mod.delay_s
            self.keys[(module, key)] = _Track(now, mod.effective_ms)
            mod.last_at = now
            return mod.delay_s
        gap_ms = (now - track.last_at) * 1000.0
        track.last_at = now
        mod.last_at = now
        least = self.min_samples
        hist = track.hist
        if 0.0 <= gap_ms < self.max_ms:
            index = 0 if gap_ms < _FIRST_EDGE else min(
                int(math.log(gap_ms / GAP_MIN_MS) / _LOG_RATIO), GAP_BUCKETS - 1)
            if hist is None:
                hist = track.hist = DecayedGapHistogram(self.half_life)
            hist.add_bucket(index)
            n = hist.samples
            if n == least or (n > least and now - track.computed_at >= RECOMPUTE_INTERVAL_S):
                self._recompute(track, None, now)
            mhist = mod.hist
            if mhist is None:
                mhist = mod.hist = DecayedGapHistogram(self.half_life)
            mhist.add_bucket(index)
            n = mhist.samples
            if n == least or (n > least and now - mod.computed_at >= RECOMPUTE_INTERVAL_S):
                self._recompute(mod, module, now)
        if hist is not None and hist.samples >= least:
            return track.delay_s
        return mod.delay_s

    def _recompute(self, track: _Track, module: str | None, now: float) -> None:
        assert track.hist is not None  # called after a gap was counted
        track.computed_at = now
        gap = track.hist.quantile(self.quantile)
        raw = gap * self.margin
        pinned = None
        if raw > self.max_ms:
            effective, pinned = self.max_ms, "max"
        elif raw < self.min_ms:
            effective, pinned = self.min_ms, "min"
        else:
            effective = raw
        track.gap_ms = gap
        track.pinned = pinned
        track.effective_ms = effective
        track.delay_s = effective / 1000.0
        if module is not None:
            last = track.logged_ms
            if abs(effective - last) > self.log_change * max(last, 1e-9) \
                    and now - track.logged_at >= LOG_INTERVAL_S:
                track.logged_ms = effective
                track.logged_at = now
                self._log.bind(module=module, event="adaptive").info(
                    "debounce delay adapted", previous_ms=round(last, 1),
                    delay_ms=round(effective, 1), why=self._reason(track))

    # -- memory --

    def sweep(self, now: float) -> int:
        """Forget keys and modules idle for ``forget_after_ms``; return how many keys."""
        self._next_sweep = now + self.forget_after_s / 4.0
        edge = now - self.forget_after_s
        idle = [k for k, t in self.keys.items() if t.last_at < edge]
        for k in idle:
            del self.keys[k]
        for m in [m for m, t in self.modules.items() if t.last_at < edge]:
            del self.modules[m]
        self.forgotten += len(idle)
        if len(self.keys) < self.max_keys:
            self._at_cap = False
        return len(idle)

    # -- visibility --

    def _reason(self, track: _Track) -> str:
        if track.samples < self.min_samples:
            return (f"learning ({track.samples} of {self.min_samples} gaps): "
                    "configured delay")
        text = (f"publish gap p{self.quantile * 100:g} {track.gap_ms:.0f} ms "
                f"x {self.margin:g}")
        if track.pinned == "max":
            text += f", pinned at {self.max_key} {self.max_ms:g}"
        elif track.pinned == "min":
            text += f", pinned at adaptive.debounce.min_ms {self.min_ms:g}"
        return text

    def _item(self, track: _Track, module: str, key: str | None = None) -> AdaptiveSubject:
        ready = track.samples >= self.min_samples
        pinned = None
        if ready and track.pinned == "max":
            pinned = self.max_key
        elif ready and track.pinned == "min":
            pinned = "adaptive.debounce.min_ms"
        return AdaptiveSubject(
            module=module, key=key, configured=self.configured_ms,
            effective=round(track.effective_ms if ready else self.configured_ms, 1),
            reason=self._reason(track), gaps=track.samples, pinned=pinned)

    def summary(self, now: float) -> DebounceSummary:
        """The bounded summary for ``status``: the parameter, the ``summary_top_n`` most
        recently active modules and keys, and the counters. The parameter's effective
        value includes the CPU-pressure widening (the subjects' do not)."""
        self.sweep(now)
        top = self.top_n
        modules = sorted(self.modules.items(), key=lambda kv: -kv[1].last_at)[:top]
        keys = sorted(self.keys.items(), key=lambda kv: -kv[1].last_at)[:top]
        mods = [self._item(t, m) for m, t in modules]
        ready = sorted((m for m in mods if m.gaps >= self.min_samples),
                       key=lambda m: m.effective)
        if not ready:
            effective = self.configured_ms
            why = "no module has enough publish gaps yet" if not mods else mods[0].reason
        else:
            mid = ready[len(ready) // 2]
            effective = mid.effective
            why = mid.reason if len(ready) == 1 else (
                f"median of {len(ready)} modules; {mid.module}: {mid.reason}")
        factor = self._widening.factor
        if factor != 1.0:
            widened = round(min(effective * factor, max(self.max_ms, effective)), 1)
            why += f"; widened x{factor:g} to {widened:g} under CPU pressure"
            effective = widened
        return DebounceSummary(
            enabled=True,
            parameters={"debounce.delay_ms": AdaptiveParameter(
                self.configured_ms, effective, why)},
            modules=tuple(mods),
            keys=tuple(self._item(t, k[0], k[1]) for k, t in keys),
            tracked_keys=len(self.keys),
            tracked_modules=len(self.modules),
            untracked=self.untracked,
            forgotten=self.forgotten,
            bounds_ms=(self.min_ms, self.max_ms),
        )


class DecayedRate:
    """An exponentially decayed event rate (events per second), half-life in seconds."""

    __slots__ = ("last", "rate", "tau")

    def __init__(self, half_life_s: float, now: float) -> None:
        self.tau = half_life_s / math.log(2.0)
        self.rate = 0.0
        self.last = now

    def add(self, n: int, now: float) -> float:
        """Count ``n`` events at ``now``; return the rate."""
        self.rate = self.at(now) + n / self.tau
        self.last = max(self.last, now)
        return self.rate

    def at(self, now: float) -> float:
        """The rate as of ``now`` (decayed since the last event)."""
        dt = now - self.last
        return self.rate * math.exp(-dt / self.tau) if dt > 0 else self.rate


class BatchTuner:
    """The batch window following the arrival rate (module doc).

    Args:
        section: ``batch`` (``window_ms`` is the largest window, ``max_size`` the cap).
        adaptive: ``adaptive`` (``batch.min_window_ms``, ``rate_half_life_ms``,
            ``hysteresis``).
        now: the clock reading the rate starts from.
        widening: the shared CPU-pressure factor: the window is multiplied by it, up to
            ``batch.window_ms``; ``None``: never widened.
    """

    def __init__(self, section: BatchSettings, adaptive: AdaptiveSettings, now: float,
                 actor: str = "batcher", widening: Widening | None = None) -> None:
        a = adaptive.batch
        self.configured_ms = section.window_ms
        self.max_size = section.max_size
        self.min_ms = min(a.min_window_ms, section.window_ms)
        self.hysteresis = a.hysteresis
        self.log_change = adaptive.log_change_fraction
        self.rate = DecayedRate(a.rate_half_life_ms / 1000.0, now)
        self.window_ms = section.window_ms
        self.load = 0.0
        self.pinned: str | None = None
        self._logged_ms = section.window_ms
        self._logged_at = -math.inf
        self._log = logger.bind(actor=actor)
        self._widening = widening if widening is not None else Widening()

    def window_s(self, arrivals: int, now: float) -> float:
        """Count ``arrivals`` at ``now``; return the window (seconds) to open now (widened
        by the CPU-pressure factor, never past ``batch.window_ms``)."""
        window = self._follow(arrivals, now)
        factor = self._widening.factor
        if factor != 1.0:
            return min(window * factor, max(self.configured_ms, window)) / 1000.0
        return window / 1000.0

    def _follow(self, arrivals: int, now: float) -> float:
        rate = self.rate.add(arrivals, now) if arrivals else self.rate.at(now)
        load = rate * (self.configured_ms / 1000.0) / self.max_size
        raw = self.configured_ms * load
        target = min(max(raw, self.min_ms), self.configured_ms)
        self.load = load
        self.pinned = "batch.window_ms" if raw > self.configured_ms * 1.25 else None
        current = self.window_ms
        at_bound = target in (self.min_ms, self.configured_ms) and target != current
        if at_bound or abs(target - current) > self.hysteresis * current:
            self.window_ms = target
            if abs(target - self._logged_ms) > self.log_change * self._logged_ms \
                    and now - self._logged_at >= LOG_INTERVAL_S:
                self._logged_at = now
                self._log.bind(event="adaptive").info(
                    "batch window adapted", previous_ms=round(self._logged_ms, 1),
                    window_ms=round(target, 1), why=self.reason(now))
                self._logged_ms = target
        return self.window_ms

    def reason(self, now: float) -> str:
        text = (f"arrival rate {self.rate.at(now):.1f}/s: {self.load * 100:.0f}% of a "
                f"batch of {self.max_size} per {self.configured_ms:g} ms window")
        if self.pinned:
            text += ", pinned at batch.window_ms"
        return text

    def summary(self, now: float) -> BatchSummary:
        """The parameters for ``status`` (the window includes the CPU-pressure widening)."""
        effective, why = self.window_ms, self.reason(now)
        factor = self._widening.factor
        if factor != 1.0:
            effective = min(effective * factor, max(self.configured_ms, effective))
            why += f"; widened x{factor:g} under CPU pressure"
        return BatchSummary(
            enabled=True,
            parameters={
                "batch.window_ms": AdaptiveParameter(
                    self.configured_ms, round(effective, 1), why, self.pinned),
                "batch.max_size": frozen_parameter(
                    self.max_size, "the cap, not tuned: batches fill toward it as the "
                    "window grows with the load"),
            },
            arrival_rate_per_s=round(self.rate.at(now), 2),
            bounds_ms=(self.min_ms, self.configured_ms),
        )
