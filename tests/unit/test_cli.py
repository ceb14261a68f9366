"""The command line's parser: global options before the command, ``--version``, and the
``status --json`` answer when no daemon runs (no daemon here: the real-CLI tests are in
``integration/test_cli_habits.py``)."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
from pathlib import Path

import pytest

from modcoord.supervisor import version as version_module
from modcoord.supervisor.cli import _apply_globals, build_parser, command_name, main


def parse(words: list[str]) -> argparse.Namespace:
    parser = build_parser(command_name(words))
    args = parser.parse_args(words)
    _apply_globals(parser, args)
    return args


def commands_built(words: list[str]) -> set[str]:
    parser = build_parser(command_name(words))
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(subs[0].choices)


@pytest.mark.parametrize("words", [
    ["--runtime-dir", "D", "status"],
    ["status", "--runtime-dir", "D"],
])
def test_the_runtime_dir_goes_before_or_after_the_command(words: list[str]) -> None:
    args = parse(words)
    assert args.command == "status" and args.runtime_dir == "D"
    assert not hasattr(args, "global_runtime_dir")


def test_the_runtime_dir_after_the_command_wins() -> None:
    assert parse(["--runtime-dir", "A", "status", "--runtime-dir", "B"]).runtime_dir == "B"
    assert parse(["--runtime-dir", "A", "config", "show"]).runtime_dir == "A"


def test_no_runtime_dir_anywhere_leaves_the_default() -> None:
    assert parse(["status"]).runtime_dir is None


@pytest.mark.parametrize("words", [
    ["--json", "status"], ["status", "--json"], ["--runtime-dir", "D", "--json", "status"],
])
def test_json_goes_before_or_after_the_command(words: list[str]) -> None:
    assert parse(words).json is True


def test_json_is_off_unless_given() -> None:
    assert parse(["--runtime-dir", "D", "status"]).json is False


def test_json_before_a_command_without_json_is_a_usage_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(["--json", "top"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--json is not accepted by 'top'" in err and "status" in err and "start" in err


def test_global_options_still_build_only_the_named_commands_parser() -> None:
    assert commands_built(["--runtime-dir", "D", "--json", "status"]) == {"status"}
    assert command_name(["--runtime-dir", "status", "mode"]) == "mode"  # a dir named status
    assert command_name(["--json", "bogus"]) is None
    assert command_name(["--version"]) is None


def test_version_prints_the_distributions_version(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"modcoord {importlib.metadata.version('modcoord')}\n"


def test_the_version_falls_back_to_the_constant_when_not_installed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(version_module, "DISTRIBUTION", "modcoord-not-installed-anywhere")
    assert version_module.version() == version_module.VERSION


def test_the_installed_metadata_is_the_constant() -> None:
    assert importlib.metadata.version("modcoord") == version_module.VERSION


def test_status_json_with_no_daemon_says_running_false(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--runtime-dir", str(tmp_path), "status", "--json"]) == 3
    out, err = capsys.readouterr()
    answer = json.loads(out)
    assert answer["running"] is False
    assert answer["runtime_dir"] == str(tmp_path)
    assert answer["socket"] == str(tmp_path / "modcoord.sock")
    assert "no modcoord daemon" in answer["reason"] and answer["reason"] in err
