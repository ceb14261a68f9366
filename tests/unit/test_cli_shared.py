"""The CLI's shared pieces without a daemon: the exit-code table (and the docs that list
it), errors in user words, the uptime for humans, every problem of a config directory,
the shipped completion scripts, and ``top``'s insights section."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from modcoord.actors.errors import (
    CallTimeoutError,
    ConnectionLostError,
    InvalidMessageError,
    NotRunningError,
    RemoteError,
)
from modcoord.supervisor.cli._common import CliError, format_uptime, user_error
from modcoord.supervisor.daemon import process
from modcoord.supervisor.daemon.config import check_config_dir, load_config_dir
from modcoord.supervisor.exitcodes import ExitCode

ROOT = Path(__file__).resolve().parents[2]


def test_the_exit_codes_are_the_documented_contract() -> None:
    assert {c.name: int(c) for c in ExitCode} == {
        "OK": 0, "FAILURE": 1, "USAGE": 2, "NOT_RUNNING": 3, "CONFIG": 78}
    assert (process.EXIT_OK, process.EXIT_FAILURE, process.EXIT_USAGE,
            process.EXIT_NOT_RUNNING, process.EXIT_CONFIG) == (0, 1, 2, 3, 78)


@pytest.mark.parametrize("doc", ["README.md", "docs/REFERENCE.md"])
def test_the_docs_list_every_exit_code(doc: str) -> None:
    text = (ROOT / doc).read_text()
    rows = dict(re.findall(r"^\| `(\d+)` \| `(\w+)` \|", text, flags=re.MULTILINE))
    assert rows == {str(int(c)): c.name for c in ExitCode}, rows


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (59.9, "59s"), (60, "1m 00s"), (187, "3m 07s"), (7394, "2h 03m 14s"),
    (86400 * 5 + 7394, "5d 02h 03m 14s"), (-3, "0s"),
])
def test_the_uptime_reads_for_humans(seconds: float, text: str) -> None:
    assert format_uptime(seconds) == text


def test_client_errors_are_put_in_user_words() -> None:
    refused = user_error(InvalidMessageError(
        "set_mode: 'mode' must be one of MANUAL, HYBRID, FULLY_AUTO, got 'x' - at `$.mode`"))
    assert str(refused) == ("the daemon refused it: 'mode' must be one of MANUAL, HYBRID, "
                            "FULLY_AUTO, got 'x'")
    assert refused.code == ExitCode.FAILURE
    assert user_error(NotRunningError("no daemon")).code == ExitCode.NOT_RUNNING
    failed = user_error(RemoteError("KeyError", "'cache'"))
    assert "KeyError" not in str(failed) and "'cache'" in str(failed)
    assert "did not answer in time" in str(user_error(CallTimeoutError("status: 10 s")))
    assert "closed the connection" in str(user_error(ConnectionLostError("EOF")))
    mine = CliError("as is", ExitCode.USAGE)
    assert user_error(mine) is mine


def test_check_config_dir_lists_every_problem_and_load_raises_the_first(
        config_dir: Path) -> None:
    assert check_config_dir(config_dir) == []
    manual = config_dir / "manual.yaml"
    manual.write_text(manual.read_text() + "bogus: 1\nturbo: 2\n")
    (config_dir / "daemon.yaml").write_text("[not, a, mapping]\n")
    problems = check_config_dir(config_dir)
    assert [(Path(p.file).name, p.key) for p in problems] == [
        ("manual.yaml", "bogus"), ("manual.yaml", "turbo"), ("daemon.yaml", "")]
    assert "expected a mapping" in problems[2].problem
    with pytest.raises(type(problems[0])) as exc:
        load_config_dir(config_dir)
    assert str(exc.value) == str(problems[0])
    assert [p.problem for p in check_config_dir(config_dir / "missing")] == ["not a directory"]


def test_the_shipped_completion_scripts_are_what_the_parser_generates() -> None:
    pytest.importorskip("shtab")
    from modcoord.supervisor.cli import gen_completion

    assert gen_completion.main(["--check"]) == 0, (
        "run python -m modcoord.supervisor.cli.gen_completion")


def test_top_draws_an_insights_section() -> None:
    from rich.console import Console

    from modcoord.supervisor.cli.top import render

    status = {"pid": 1, "mode": "HYBRID", "uptime_s": 3725.0, "modules": 0,
              "performance_metrics": {"coordination_latency_ms": {"p50": 0, "p95": 0,
                                                                  "p99": 0},
                                      "cache_hit_rate": 0, "batch_efficiency": 0,
                                      "memory_usage_bytes": 0, "active_subscriptions": 0},
              "batch_queue": {"pending": 0, "max_queue": 10}, "actors": {}}
    insight = {"id": "slow_coordination", "severity": "warning", "message": "p95 is high",
               "threshold": 100, "observed": 150, "window_s": 60,
               "recommendation": "raise cache.ttl_ms"}

    def drawn(insights: list[dict[str, object]]) -> str:
        console = Console(width=100, record=True, color_system=None)
        console.print(render(status, None, 0, insights))
        return console.export_text()

    text = drawn([insight])
    assert "up 1h 02m 05s" in text and "insights (1)" in text
    assert "[warning] slow_coordination: p95 is high" in text
    assert "→ raise cache.ttl_ms" in text and "press q to quit" in text
    assert "insights (0)" in drawn([]) and "none" in drawn([])


def test_top_fits_a_short_terminal_keeping_the_table_and_the_quit_hint() -> None:
    from rich.console import Console

    from modcoord.supervisor.cli.top import SPARK_METRICS, render

    status = {"pid": 1, "mode": "HYBRID", "uptime_s": 5.0, "modules": 0,
              "performance_metrics": {"coordination_latency_ms": {"p50": 0, "p95": 0,
                                                                  "p99": 0},
                                      "cache_hit_rate": 0, "batch_efficiency": 0,
                                      "memory_usage_bytes": 0, "active_subscriptions": 0},
              "batch_queue": {"pending": 0, "max_queue": 10},
              "actors": {name: {"alive": True, "restarts": 0}
                         for name in ("monitor", "memory", "cache", "batcher", "debouncer")}}
    insights = [{"id": f"rule{i}", "severity": "info",
                 "message": "observed " + "and wrapped " * 12 * (i % 2),
                 "threshold": 1, "observed": 2, "window_s": 60,
                 "recommendation": "look"} for i in range(20)]
    history = {"series": {m: [[0.0, 1.0, 3.0, 2.0, 2.0], [1.0, 2.0, 4.0, 3.0, 3.0]]
                          for m in SPARK_METRICS}}  # [t, min, max, mean, last]

    def drawn(height: int) -> list[str]:
        console = Console(width=100, height=height, record=True, color_system=None)
        console.print(render(status, None, 0, insights, True, history, height=height,
                             width=100))
        return console.export_text().rstrip("\n").split("\n")

    tall = drawn(200)
    assert "rule19" in "\n".join(tall) and "last 5 min" in "\n".join(tall)
    assert not any("more lines" in line for line in tall)
    for height in (40, 30, 25):
        lines = drawn(height)
        text = "\n".join(lines)
        assert len(lines) <= height, (height, text)
        assert lines[-1] == "press q to quit", text
        assert "actor debouncer" in text and "insights (20)" in text
        assert "more lines: modcoord insights" in text
    assert "last 5 min" not in "\n".join(drawn(40))  # they go first
    roomy = drawn(120)  # everything fits: nothing is cut
    assert "last 5 min" in "\n".join(roomy) and len(roomy) < 120
