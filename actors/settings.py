"""Typed settings of every actor: one pydantic model per config section.

A mode file (``configs/hybrid.yaml``) maps section names to these models; it is validated
once into a frozen :class:`ModeSettings` and the actors receive the typed sections.
Unknown keys and wrong types are rejected (``extra="forbid"``, strict numbers), and values
are range-checked.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

__all__ = [
    "BatchSettings",
    "CacheSettings",
    "DebounceSettings",
    "MemorySettings",
    "ModeSettings",
    "MonitorSettings",
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


class CacheSettings(_Section):
    """``cache:`` — coordination result cache."""

    enabled: StrictBool = True
    ttl_ms: float = Field(5000.0, gt=0, le=86_400_000)
    max_entries: int = Field(1000, ge=1, le=10_000_000)
    evict_fraction: float = Field(0.2, gt=0, le=1)


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


class ModeSettings(_Section):
    """One mode file: every section, each defaulted when absent."""

    debounce: DebounceSettings = DebounceSettings()
    cache: CacheSettings = CacheSettings()
    batch: BatchSettings = BatchSettings()
    memory: MemorySettings = MemorySettings()
    monitor: MonitorSettings = MonitorSettings()
