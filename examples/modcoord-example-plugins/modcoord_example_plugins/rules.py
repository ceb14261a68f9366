"""An insight rule: how much of its memory limit the daemon uses."""

from __future__ import annotations

from modcoord.actors.rules import InsightRule, Reading, RuleSnapshot
from modcoord.actors.settings import MonitorSettings


class MemoryShareRule(InsightRule):
    """Reports the daemon's resident memory as a share of ``memory.max_rss_mb`` once it
    passes ``THRESHOLD`` (an early, informational cousin of the built-in
    ``memory_near_limit``)."""

    id = "example_memory_share"
    severity = "info"
    message = "The daemon uses a noticeable share of its memory limit"
    recommendation = "Watch memory.max_rss_mb; raise it if the share keeps growing"
    THRESHOLD = 0.01

    def read(self, snapshot: RuleSnapshot, settings: MonitorSettings) -> Reading | None:
        memory = snapshot.memory
        if memory is None or not memory.rss_bytes or not memory.max_rss_bytes:
            return self.lacking(self.THRESHOLD, "memory statistics")
        return self.compare(memory.rss_bytes / memory.max_rss_bytes, self.THRESHOLD,
                            snapshot.latency_window_s)
