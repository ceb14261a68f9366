"""Smoke test of the harness: a real daemon answers a real client."""

from __future__ import annotations

from typing import Any


def test_daemon_starts_and_answers(daemon: Any) -> None:
    with daemon.connect() as c:
        status = c.status().get(timeout=5)
    assert status["pid"] == daemon.pid
    assert daemon.cli("status").code == 0
