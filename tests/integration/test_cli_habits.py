"""The real CLI keeps operators' habits: ``modcoord --version``, global options before the
command, and ``status --json`` that answers in JSON whether or not a daemon runs."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_version_prints_the_installed_distributions_version() -> None:
    result = run_cli("--version")
    assert result.code == 0, result.err
    assert result.out == f"modcoord {importlib.metadata.version('modcoord')}\n"


def test_runtime_dir_before_the_command_finds_the_running_daemon(daemon: Any) -> None:
    result = run_cli("--runtime-dir", str(daemon.runtime_dir), "status")
    assert result.code == 0, result.err
    assert result.out.startswith("modcoord running: pid ")


def test_runtime_dir_before_the_command_with_no_daemon_exits_3(tmp_path: Path) -> None:
    result = run_cli("--runtime-dir", str(tmp_path), "status")
    assert result.code == 3, (result.out, result.err)
    assert str(tmp_path / "modcoord.sock") in result.err


def test_status_json_with_no_daemon_prints_running_false_and_exits_3(
        tmp_path: Path) -> None:
    for words in (["status", "--json", "--runtime-dir", str(tmp_path)],
                  ["--json", "--runtime-dir", str(tmp_path), "status"]):
        result = run_cli(*words)
        assert result.code == 3, (words, result.err)
        answer = json.loads(result.out)
        assert answer["running"] is False
        assert answer["runtime_dir"] == str(tmp_path)
        assert answer["socket"] == str(tmp_path / "modcoord.sock")
        assert answer["reason"] and answer["reason"] in result.err


def test_status_json_of_a_running_daemon_says_running_true(daemon: Any) -> None:
    for words in (["status", "--json", "--runtime-dir", str(daemon.runtime_dir)],
                  ["--json", "--runtime-dir", str(daemon.runtime_dir), "status"]):
        result = run_cli(*words)
        assert result.code == 0, (words, result.err)
        answer = json.loads(result.out)
        assert answer["running"] is True
        assert answer["pid"] == daemon.pid
        assert answer["daemon"]["runtime_dir"] == str(daemon.runtime_dir)
