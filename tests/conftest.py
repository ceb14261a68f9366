"""Shared fixtures: a mock clock and an actor context for unit tests."""

from __future__ import annotations

import pytest

from modcoord.actors import MockClock


@pytest.fixture
def clock() -> MockClock:
    return MockClock()
