"""The row arithmetic of ``scripts/benchlib``: a figure meets its target by ratio to its
baseline or by value, and a malformed target is refused."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _benchlib() -> Any:
    sys.path.insert(0, str(SCRIPTS))
    try:
        import benchlib.common
    finally:
        sys.path.remove(str(SCRIPTS))
    return benchlib.common


@pytest.mark.parametrize(("value", "baseline", "target", "ratio", "met"), [
    (30.0, 20.0, "<= 1.5x", 1.5, True),
    (31.0, 20.0, "<= 1.5x", 1.55, False),
    (90.0, 20.0, ">= 4.0x", 4.5, True),
    (0.92, None, ">= 0.90", None, True),
    (51.0, None, "<= 50 MB", None, False),
])
def test_row_compares_the_ratio_or_the_value_as_the_target_says(
        value: float, baseline: float | None, target: str, ratio: float | None,
        met: bool) -> None:
    common = _benchlib()
    result = common.row("figure", value, "ms", target, baseline)
    assert (result.ratio, result.met) == (ratio, met)
    assert list(result.as_json()) == ["name", "value", "unit", "baseline", "ratio", "target",
                                      "met"]


@pytest.mark.parametrize("target", ["<= 1.5x", "about 2"])
def test_row_refuses_a_ratio_target_without_baseline_or_a_malformed_target(
        target: str) -> None:
    common = _benchlib()
    with pytest.raises(common.BenchError):
        common.row("figure", 1.0, "ms", target, None)
