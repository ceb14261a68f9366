"""Shared fixtures: a mock clock and an actor context for unit tests."""

from __future__ import annotations

import pytest

from modcoord.actors import MockClock


@pytest.fixture
def clock() -> MockClock:
    return MockClock()


@pytest.fixture
def daemon_factory(tmp_path):  # type: ignore[no-untyped-def]
    """Start real daemons (``factory(*start_args)``); all are stopped at teardown."""
    from daemon_harness import DaemonProcess

    made: list[DaemonProcess] = []

    def factory(*extra: str, root=None, env=None, start: bool = True):  # type: ignore[no-untyped-def]
        d = DaemonProcess(root or tmp_path / f"d{len(made)}", *extra, env=env)
        made.append(d)
        return d.start() if start else d

    yield factory
    for d in made:
        d.stop()


@pytest.fixture
def daemon(daemon_factory):  # type: ignore[no-untyped-def]
    """One real daemon, started with fault injection allowed."""
    return daemon_factory("--allow-fault-injection")
