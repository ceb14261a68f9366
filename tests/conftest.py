"""Shared fixtures: a mock clock for unit tests, real daemons for integration tests (see
daemon_harness.py; actor unit tests build their actors with actor_harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonFactory, DaemonProcess, copy_configs

from modcoord.actors import MockClock


@pytest.fixture
def clock() -> MockClock:
    return MockClock()


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A copy of the packaged config files, for a test to edit."""
    return copy_configs(tmp_path / "configs")


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[DaemonFactory]:
    """Start real daemons (``factory(*start_args, root=, env=, configs=, preexec_fn=,
    start=True)``, see :class:`DaemonProcess`); all are stopped at teardown."""
    made: list[DaemonProcess] = []

    def factory(*extra: str, root: Path | None = None, start: bool = True,
                **kwargs: Any) -> DaemonProcess:
        d = DaemonProcess(root or tmp_path / f"d{len(made)}", *extra, **kwargs)
        made.append(d)
        return d.start() if start else d

    yield factory
    for d in made:
        d.stop()


@pytest.fixture
def daemon(daemon_factory: DaemonFactory) -> DaemonProcess:
    """One real daemon, started with fault injection allowed."""
    return daemon_factory("--allow-fault-injection")
