"""Plugins that fail on purpose: each raises, or hangs far past any time limit."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from modcoord.actors.rules import InsightRule, Reading, RuleSnapshot
from modcoord.actors.settings import MonitorSettings
from modcoord.actors.update import Update

HANG_S = 30.0


class RaisingRule(InsightRule):
    id = "example_raising_rule"
    message = "never shown"
    recommendation = ""

    def read(self, snapshot: RuleSnapshot, settings: MonitorSettings) -> Reading | None:
        raise RuntimeError("example rule failure")


class HangingRule(InsightRule):
    id = "example_hanging_rule"
    message = "never shown"
    recommendation = ""

    def read(self, snapshot: RuleSnapshot, settings: MonitorSettings) -> Reading | None:
        time.sleep(HANG_S)
        return None


def raising_processor(updates: Sequence[Update]) -> list[Update]:
    raise RuntimeError("example processor failure")


def hanging_processor(updates: Sequence[Update]) -> list[Update]:
    time.sleep(HANG_S)
    return list(updates)


class RaisingExporter:
    def __init__(self, options: Any) -> None:
        pass

    def export(self, samples: Any) -> None:
        raise ConnectionError("example exporter: collector unreachable")

    def close(self) -> None:
        pass
