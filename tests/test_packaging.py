"""modcoord installs under one parent package, so PyPI's ``supervisor`` (supervisord) and
``actors`` can live in the same environment without shadowing ours."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHECK = """
import importlib.util
import supervisor
import modcoord.supervisor, modcoord.actors
from modcoord.supervisor import ModcoordError, connect
from supervisor.options import ServerOptions  # supervisord's own module
# PyPI's 'actors' does not even import on its own; it only must not shadow ours.
assert importlib.util.find_spec('actors').origin.startswith(%r)
assert modcoord.actors.ManagedActor and ModcoordError and connect
print('ok', supervisor.__file__, modcoord.supervisor.__file__)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pypi_supervisor_and_actors_do_not_shadow_ours(tmp_path: Path) -> None:
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
         str(target), "supervisor", "actors"],
        capture_output=True, text=True, timeout=240,
    )
    if install.returncode != 0:
        pytest.skip(f"package registry unreachable: {install.stderr[-300:]}")
    result = subprocess.run(
        [sys.executable, "-c", CHECK % str(target)], capture_output=True, text=True,
        timeout=60, cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
    assert str(target) in result.stdout
