"""Config conveniences through the real CLI: ``config validate`` lists every problem in
every file; ``config show --yaml`` prints files that load back unchanged; ``--mode M``
prints one mode's file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_harness import DaemonFactory, copy_configs, edited_yaml, run_cli

from modcoord.supervisor.daemon.config import (
    DAEMON_FILE,
    MODE_FILES,
    load_config_dir,
    load_mode_file,
)
from modcoord.supervisor.exitcodes import ExitCode

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

#: Problems planted in a copy of the packaged configs: (file, changes, key, problem).
PLANTED: list[tuple[str, dict[str, Any], str, str]] = [
    ("manual.yaml", {"debounce": {"delay_ms": "slow"}}, "debounce.delay_ms",
     "Input should be a valid number (got 'slow')"),
    ("manual.yaml", {"cache": {"ttl_ms": -1}}, "cache.ttl_ms", "greater than 0"),
    ("hybrid.yaml", {"turbo": {"on": True}}, "turbo", "unknown key"),
    ("daemon.yaml", {"logs": {"level": "LOUD"}}, "logs.level", "LOUD"),
]


def test_config_validate_reports_every_problem_in_every_file(tmp_path: Path) -> None:
    directory = copy_configs(tmp_path / "configs")
    for name, changes, _, _ in PLANTED:
        path = directory / name
        path.write_text(edited_yaml(path, changes))
    (directory / "fully_auto.yaml").write_text("cache: : :\n")  # unparsable: one problem

    plain = run_cli("config", "validate", str(directory))
    assert plain.code == ExitCode.FAILURE and plain.out == ""
    lines = plain.err.splitlines()
    assert lines[0] == f"invalid: {len(PLANTED) + 1} problems in {directory}:"
    for name, _, key, problem in PLANTED:
        assert any(line.startswith(f"  {directory / name}: {key}: ") and problem in line
                   for line in lines), (name, key, plain.err)
    assert any(line.startswith(f"  {directory / 'fully_auto.yaml'}: invalid YAML at line 1")
               for line in lines), plain.err

    as_json = run_cli("config", "validate", str(directory), "--json")
    assert as_json.code == ExitCode.FAILURE
    answer = json.loads(as_json.out)
    assert answer["ok"] is False and answer["directory"] == str(directory)
    errors = answer["errors"]
    assert len(errors) == len(PLANTED) + 1
    for name, _, key, problem in PLANTED:
        assert any(e["file"] == str(directory / name) and e["key"] == key
                   and problem in e["problem"] for e in errors), (name, key, errors)


def _documents(text: str) -> dict[str, str]:
    """``config show --yaml`` split into its documents by their ``--- # FILE`` heads."""
    parts = re.split(r"^--- # (\S+)\n", text, flags=re.MULTILINE)
    assert parts[0].startswith("# "), parts[0]  # only a comment before the first document
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_config_show_yaml_prints_files_that_load_back_unchanged(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    d = daemon_factory(configs={
        "manual": {"cache": {"ttl_ms": 1234}, "memory": {"strategy": "aggressive"}},
        "hybrid": {"debounce": {"delay_ms": 250}},
        "daemon": {"logs": {"keep": 7}, "output": {"stall_timeout_s": 12.5}},
    })
    shown = d.cli("config", "show", "--yaml")
    assert shown.code == 0, shown.err
    documents = _documents(shown.out)
    assert list(documents) == [*MODE_FILES.values(), DAEMON_FILE]
    # The whole output is a YAML stream whose documents are those files.
    assert len(list(yaml.safe_load_all(shown.out))) == len(documents)

    effective = json.loads(d.cli("config", "show", "--json").out)
    copy = tmp_path / "reloaded"
    copy.mkdir()
    for name, text in documents.items():
        (copy / name).write_text(text)
    for mode, name in MODE_FILES.items():  # per file: it validates to what was shown
        assert load_mode_file(copy / name).model_dump(mode="json") == effective["modes"][mode]
    loaded = load_config_dir(copy).as_dict()
    assert loaded["daemon"] == effective["daemon"] and loaded["modes"] == effective["modes"]
    assert loaded["modes"]["MANUAL"]["cache"]["ttl_ms"] == 1234
    assert loaded["daemon"]["output"]["stall_timeout_s"] == 12.5
    assert run_cli("config", "validate", str(copy)).code == 0


def test_config_show_mode_prints_one_modes_file(daemon_factory: DaemonFactory,
                                                tmp_path: Path) -> None:
    d = daemon_factory(configs={"hybrid": {"batch": {"window_ms": 75}}})
    one = d.cli("config", "show", "--mode", "hybrid", "--yaml")
    assert one.code == 0, one.err
    assert list(_documents(one.out)) == ["hybrid.yaml"]
    (tmp_path / "hybrid.yaml").write_text(one.out)
    settings = load_mode_file(tmp_path / "hybrid.yaml")
    assert settings.batch.window_ms == 75
    assert settings == load_mode_file(d.config_dir / "hybrid.yaml")

    as_json = json.loads(d.cli("config", "show", "--mode", "HYBRID", "--json").out)
    assert as_json["mode"] == "HYBRID" and as_json["file"] == "hybrid.yaml"
    assert as_json["settings"] == settings.model_dump(mode="json")

    plain = d.cli("config", "show", "--mode", "manual")
    assert json.loads(plain.out) == json.loads(
        d.cli("config", "show", "--json").out)["modes"]["MANUAL"]

    bad = d.cli("config", "show", "--mode", "turbo")
    assert bad.code == ExitCode.USAGE
    assert "unknown mode 'turbo'; choose one of MANUAL, HYBRID, FULLY_AUTO" in bad.err
