"""Typed settings of every actor: one pydantic model per config section.

A mode file (``configs/hybrid.yaml``) maps section names to these models; it is validated
once into a frozen :class:`ModeSettings` and the actors receive the typed sections.
Unknown keys and wrong types are rejected (``extra="forbid"``, strict numbers), and values
are range-checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

__all__ = [
    "ADAPTIVE_SECTIONS",
    "AdaptiveBatchSettings",
    "AdaptiveDebounceSettings",
    "AdaptiveResourceSettings",
    "AdaptiveSettings",
    "BatchSettings",
    "CacheSettings",
    "DebounceSettings",
    "ExporterSpec",
    "MemorySettings",
    "ModeSettings",
    "MonitorSettings",
    "PluginSettings",
    "PrewarmSettings",
    "RefreshAheadSettings",
    "Tuned",
    "actor_settings",
]



class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DebounceSettings(_Section):
    """``debounce:`` — per-key debouncing with a fast path for critical updates."""

    enabled: StrictBool = True
    delay_ms: float = Field(300.0, ge=0, le=3_600_000)
    critical_delay_ms: float = Field(50.0, ge=0, le=3_600_000)
    max_wait_ms: float = Field(1000.0, gt=0, le=3_600_000)

    @model_validator(mode="after")
    def _check_order(self) -> DebounceSettings:
        if self.critical_delay_ms > self.delay_ms:
            raise ValueError("critical_delay_ms must not exceed delay_ms")
        if self.max_wait_ms < self.delay_ms:
            raise ValueError("max_wait_ms must be at least delay_ms")
        return self


class RefreshAheadSettings(_Section):
    """``cache.refresh_ahead:`` — hot entries recomputed in the background before they expire.

    An entry whose context was hit at least ``min_hits`` times (over its entries), and hit
    again since the entry was last computed, is recomputed once its remaining TTL is at
    most ``before_ms`` (cut to half of
    ``cache.ttl_ms`` when larger; checked four times per lead), with at most
    ``max_in_flight`` background computations (refreshes and pre-warms) at a time. A
    refresh that fails leaves the old entry to expire.
    """

    enabled: StrictBool = False
    min_hits: int = Field(2, ge=1, le=1_000_000)
    before_ms: float = Field(1000.0, gt=0, le=86_400_000)
    max_in_flight: int = Field(4, ge=1, le=10_000)


class PrewarmSettings(_Section):
    """``cache.prewarm:`` — on a switch to this mode, its ``max_entries`` most read contexts
    are computed before a request asks (within ``cache.refresh_ahead.max_in_flight``).

    Reads are counted for at most ``track_max_contexts`` contexts per mode (beyond it the
    least read half is forgotten and the rest halved).
    """

    enabled: StrictBool = False
    max_entries: int = Field(20, ge=1, le=100_000)
    track_max_contexts: int = Field(1000, ge=1, le=1_000_000)


class CacheSettings(_Section):
    """``cache:`` — coordination result cache."""

    enabled: StrictBool = True
    ttl_ms: float = Field(5000.0, gt=0, le=86_400_000)
    max_entries: int = Field(1000, ge=1, le=10_000_000)
    evict_fraction: float = Field(0.2, gt=0, le=1)
    refresh_ahead: RefreshAheadSettings = RefreshAheadSettings()
    prewarm: PrewarmSettings = PrewarmSettings()


class BatchSettings(_Section):
    """``batch:`` — batching of debounced updates into deliveries."""

    enabled: StrictBool = True
    window_ms: float = Field(100.0, gt=0, le=3_600_000)
    max_size: int = Field(50, ge=1, le=1_000_000)
    max_queue: int = Field(10_000, ge=1, le=100_000_000)

    @model_validator(mode="after")
    def _check_sizes(self) -> BatchSettings:
        if self.max_queue < self.max_size:
            raise ValueError("max_queue must be at least max_size")
        return self


class MemorySettings(_Section):
    """``memory:`` — inactive-module sweeps and memory-pressure cleanup."""

    strategy: Literal["conservative", "balanced", "aggressive"] = "balanced"
    cleanup_interval_ms: float = Field(10_000.0, gt=0, le=86_400_000)
    inactive_after_ms: float = Field(30_000.0, gt=0, le=604_800_000)
    max_rss_mb: float = Field(100.0, gt=0, le=1_048_576)
    check_interval_ms: float = Field(1000.0, gt=0, le=3_600_000)


class MonitorSettings(_Section):
    """``monitor:`` — latency windows and insight rule thresholds."""

    window_s: float = Field(60.0, gt=0, le=86_400)
    evaluate_interval_ms: float = Field(5000.0, gt=0, le=3_600_000)
    min_samples: int = Field(20, ge=1)
    coordination_latency_ms: float = Field(100.0, gt=0)
    cache_hit_rate_min: float = Field(0.5, ge=0, le=1)
    queue_near_full_fraction: float = Field(0.8, gt=0, le=1)
    restart_churn_max: int = Field(3, ge=1)
    memory_near_limit_fraction: float = Field(0.9, gt=0, le=1)
    debounce_lateness_ms: float = Field(20.0, gt=0)
    quiet_period_s: float = Field(300.0, ge=0)
    adaptive_change_fraction: float = Field(0.2, gt=0, le=100)
    adaptive_pinned_min: int = Field(1, ge=1)
    module_metrics_interval_ms: float = Field(5000.0, gt=0, le=3_600_000)
    module_metrics_max: int = Field(32, ge=1, le=10_000)


class AdaptiveDebounceSettings(_Section):
    """``adaptive.debounce:`` — the debounce delay learnt from the gaps between publishes.

    Per key (per module while a key has fewer than ``min_samples`` gaps), a decayed
    histogram of the gaps shorter than ``max_ms`` (a longer gap is a pause: no allowed
    delay could collapse it); the delay is its ``quantile`` times ``margin``, clamped to
    ``[min_ms, max_ms]`` and never past ``debounce.max_wait_ms`` (both bounds are cut to
    it when larger, and the status says so).
    """

    min_ms: float = Field(50.0, ge=0, le=3_600_000)
    max_ms: float = Field(600.0, gt=0, le=3_600_000)
    quantile: float = Field(0.9, ge=0.5, le=0.999)
    margin: float = Field(1.2, ge=1.0, le=10.0)
    min_samples: int = Field(8, ge=1, le=10_000)
    half_life_samples: float = Field(50.0, ge=2, le=1_000_000)
    forget_after_ms: float = Field(60_000.0, gt=0, le=604_800_000)
    max_keys: int = Field(4096, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _check_bounds(self) -> AdaptiveDebounceSettings:
        if self.min_ms > self.max_ms:
            raise ValueError("min_ms must not exceed max_ms")
        return self


class AdaptiveBatchSettings(_Section):
    """``adaptive.batch:`` — the batch window and size following the arrival rate.

    ``load`` = decayed arrival rate × ``batch.window_ms`` / ``batch.max_size`` (how full
    a batch the configured window would gather). The window is ``batch.window_ms`` ×
    load, clamped to ``[min_window_ms, batch.window_ms]`` (``min_window_ms`` is cut to
    ``batch.window_ms`` when larger; batches grow toward
    ``batch.max_size`` as the load does). Changes smaller than ``hysteresis`` (a fraction
    of the current window) are ignored.
    """

    min_window_ms: float = Field(20.0, gt=0, le=3_600_000)
    rate_half_life_ms: float = Field(1000.0, gt=0, le=3_600_000)
    hysteresis: float = Field(0.1, ge=0, lt=1)


class AdaptiveResourceSettings(_Section):
    """``adaptive.resources:`` — memory and CPU pressure (the memory manager checks every
    ``memory.check_interval_ms``).

    Memory pressure: the daemon's RSS above ``memory_enter_fraction`` × ``memory.max_rss_mb``,
    or the machine's available memory below ``available_enter_mb`` (0: not watched). While
    it holds, the memory strategy escalates one step (conservative → balanced →
    aggressive) and the cache's effective ``max_entries`` is multiplied by
    ``cache_cap_fraction``, at most two steps, one per ``hold_ms``. A step is undone once
    RSS is below ``memory_exit_fraction`` × the limit and available memory above
    ``available_exit_mb``, and the level has been held ``hold_ms``. CPU pressure: the
    daemon's CPU time over ``cpu_window_ms`` as a fraction of the CPUs it may use above
    ``cpu_enter_fraction`` widens debounce delays and batch windows ``cpu_widen_factor``
    times (within their bounds), relaxed below ``cpu_exit_fraction`` after ``hold_ms``.
    """

    enabled: StrictBool = True
    memory_enter_fraction: float = Field(0.9, gt=0, le=1)
    memory_exit_fraction: float = Field(0.75, gt=0, le=1)
    available_enter_mb: float = Field(0.0, ge=0, le=1_048_576)
    available_exit_mb: float = Field(0.0, ge=0, le=1_048_576)
    cache_cap_fraction: float = Field(0.5, gt=0, le=1)
    cpu_enter_fraction: float = Field(0.9, gt=0, le=1)
    cpu_exit_fraction: float = Field(0.6, gt=0, le=1)
    cpu_window_ms: float = Field(5000.0, gt=0, le=3_600_000)
    cpu_widen_factor: float = Field(2.0, ge=1, le=100)
    hold_ms: float = Field(10_000.0, ge=0, le=86_400_000)

    @model_validator(mode="after")
    def _check_bands(self) -> AdaptiveResourceSettings:
        if self.memory_exit_fraction >= self.memory_enter_fraction:
            raise ValueError("memory_exit_fraction must be below memory_enter_fraction "
                             "(the gap is the hysteresis band)")
        if self.cpu_exit_fraction >= self.cpu_enter_fraction:
            raise ValueError("cpu_exit_fraction must be below cpu_enter_fraction "
                             "(the gap is the hysteresis band)")
        if self.available_enter_mb and self.available_exit_mb <= self.available_enter_mb:
            raise ValueError("available_exit_mb must be above available_enter_mb "
                             "(the gap is the hysteresis band)")
        return self


class AdaptiveSettings(_Section):
    """``adaptive:`` — what the actors may tune by themselves (``enabled: false``: every
    parameter stays at its configured value; MANUAL never adapts)."""

    enabled: StrictBool = False
    log_change_fraction: float = Field(0.25, gt=0, le=100)
    summary_top_n: int = Field(10, ge=1, le=1000)
    debounce: AdaptiveDebounceSettings = AdaptiveDebounceSettings()
    batch: AdaptiveBatchSettings = AdaptiveBatchSettings()
    resources: AdaptiveResourceSettings = AdaptiveResourceSettings()


PluginName = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")
OptionValue = StrictBool | StrictInt | StrictFloat | StrictStr | None


class ExporterSpec(_Section):
    """One ``plugins.exporters`` item: the exporter's entry-point name, how often it is
    given the metrics, how long one export may take (pushing over a network takes longer
    than ``plugins.timeout_ms`` allows the in-process plugins), and its own options
    (scalars; the exporter validates them)."""

    name: StrictStr = PluginName
    interval_ms: float = Field(10_000.0, ge=10, le=86_400_000)
    timeout_ms: float = Field(5000.0, gt=0, le=600_000)
    options: dict[StrictStr, OptionValue] = Field(default_factory=dict, max_length=100)


class PluginSettings(_Section):
    """``plugins:`` — extensions loaded by entry-point name (see docs/EXTENDING.md).

    Each name must be a built-in (``lru``, ``priority``) or an entry point installed in
    the group of its kind; the loader refuses any other, listing the names available.
    A plugin call that raises, returns something unusable or takes longer than
    ``timeout_ms`` is a failure: counted, logged, and the built-in behaviour is used for
    that call; ``max_failures`` failures in a row disable the plugin until the settings
    change (a success resets the run).
    """

    insight_rules: tuple[StrictStr, ...] = Field((), max_length=100, strict=False)
    cache_policy: StrictStr = Field("lru", min_length=1, max_length=200)
    batch_processors: tuple[StrictStr, ...] = Field(("priority",), max_length=100, strict=False)
    exporters: tuple[ExporterSpec, ...] = Field((), max_length=20, strict=False)
    timeout_ms: float = Field(200.0, gt=0, le=60_000)
    max_failures: int = Field(3, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _check_unique(self) -> PluginSettings:
        for key, names in (("insight_rules", self.insight_rules),
                           ("batch_processors", self.batch_processors),
                           ("exporters", tuple(e.name for e in self.exporters))):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{key} names {', '.join(dup)} more than once; "
                                 "list each plugin once")
        return self


class ModeSettings(_Section):
    """One mode file: every section, each defaulted when absent."""

    debounce: DebounceSettings = DebounceSettings()
    cache: CacheSettings = CacheSettings()
    batch: BatchSettings = BatchSettings()
    memory: MemorySettings = MemorySettings()
    monitor: MonitorSettings = MonitorSettings()
    adaptive: AdaptiveSettings = AdaptiveSettings()
    plugins: PluginSettings = PluginSettings()


ADAPTIVE_SECTIONS: frozenset[str] = frozenset({"debounce", "batch", "memory"})
"""The sections whose actors get the ``adaptive`` settings with their own (:class:`Tuned`)."""


@dataclass(frozen=True)
class Tuned:
    """An actor's section together with the ``adaptive`` settings it tunes within.

    Attributes:
        section: the actor's own section (``DebounceSettings``, ``BatchSettings``,
            ``MemorySettings``).
        adaptive: the mode's ``adaptive`` section (``enabled`` false in MANUAL).
    """

    section: Any
    adaptive: AdaptiveSettings

    @staticmethod
    def split(settings: Any) -> tuple[Any, AdaptiveSettings | None]:
        """``(section, adaptive)`` of a :class:`Tuned` pair, or ``(settings, None)`` for a
        section alone (an actor given one never adapts)."""
        if isinstance(settings, Tuned):
            return settings.section, settings.adaptive
        return settings, None


def actor_settings(settings: ModeSettings, section: str, mode: str | None = None) -> Any:
    """What the actor configured by ``section`` receives: the section itself, or, for the
    adaptive sections, a :class:`Tuned` pair. In MANUAL (``mode``) adaptation is off
    whatever the file says (the loader refuses ``adaptive.enabled: true`` there anyway).

    Raises:
        AttributeError: ``section`` is not a section of :class:`ModeSettings`.
    """
    value = getattr(settings, section)
    if section not in ADAPTIVE_SECTIONS:
        return value
    adaptive = settings.adaptive
    if mode == "MANUAL" and adaptive.enabled:
        adaptive = adaptive.model_copy(update={"enabled": False})
    return Tuned(value, adaptive)
