"""External tools some tests run (promtool, lnav): found, or the test skips — unless the
run requires them (``$MODCOORD_REQUIRE_TOOLS``, set by ``.ci/run`` after
``scripts/get-tools`` fetched them), in which case a missing tool fails the test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

__all__ = ["REPO", "find_tool", "tool_or_skip"]

REPO = Path(__file__).resolve().parent.parent
#: Where scripts/get-tools puts a tool it extracts rather than installs.
CACHE = REPO / ".cache" / "tools"


def find_tool(name: str) -> str | None:
    """The path of the executable ``name``: ``$<NAME>`` (e.g. ``$PROMTOOL``), then PATH,
    then ``.cache/tools/``; None when none of them has it."""
    cached = CACHE / name
    for candidate in (os.environ.get(name.upper()), shutil.which(name),
                      str(cached) if cached.exists() else None):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def tool_or_skip(name: str) -> str:
    """The path of ``name``; skips the test when it is absent, or fails it when the run
    requires the tool (``name`` listed in ``$MODCOORD_REQUIRE_TOOLS``)."""
    tool = find_tool(name)
    if tool is None:
        reason = f"{name} is not installed: run scripts/get-tools (or put {name} on PATH)"
        if name in os.environ.get("MODCOORD_REQUIRE_TOOLS", "").split():
            pytest.fail(reason + " ($MODCOORD_REQUIRE_TOOLS lists it)")
        pytest.skip(reason)
    return tool
