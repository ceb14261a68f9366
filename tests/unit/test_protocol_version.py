"""The protocol version in ``hello``: a client and a daemon that disagree are told so.

The server runs with a fake engine in-process; a client process announces a version (the
real daemon: ``integration/test_protocol_version_daemon.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from wire_raw import run_hello_client

from modcoord.actors.errors import ModcoordError
from modcoord.supervisor.daemon.server import Server
from modcoord.supervisor.protocol.calls import PROTOCOL_VERSION, Params
from modcoord.supervisor.protocol.errors import ProtocolVersionError, error_from_wire
from modcoord.supervisor.protocol.paths import socket_path


class _Engine:
    """Just enough of an engine for ``hello`` and ``status``."""

    def status_brief(self) -> dict[str, Any]:
        return {"pid": 1, "mode": "HYBRID"}

    def call(self, method: str, params: Params) -> Any:
        return {"mode": "HYBRID"}

    def register(self, *args: Any) -> Any:
        raise AssertionError("not used")

    unregister = publish_many = coordinate = register


def test_error_from_wire_rebuilds_the_version_error() -> None:
    exc = error_from_wire(["ProtocolVersionError", "client 2, daemon 1"])
    assert type(exc) is ProtocolVersionError
    assert isinstance(exc, ModcoordError) and str(exc) == "client 2, daemon 1"


@pytest.mark.parametrize("version", [PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 99])
def test_hello_with_another_version_is_refused_naming_both(tmp_path: Path,
                                                           version: int) -> None:
    with Server(_Engine(), socket_path(tmp_path)) as server:
        answers = run_hello_client(server.socket_path, version)
        assert answers["1"]["error"] == "ProtocolVersionError"
        message = answers["1"]["message"]
        assert f"client speaks protocol version {version}" in message
        assert f"daemon speaks version {PROTOCOL_VERSION}" in message
        assert "same modcoord version" in message  # what to do about it
        assert "ok" in answers["2"]  # the connection and the server go on serving
        assert server.statistics().invalid_messages == 0


@pytest.mark.parametrize("version", [PROTOCOL_VERSION, 0])
def test_hello_with_this_or_no_version_is_answered_with_the_daemons(tmp_path: Path,
                                                                    version: int) -> None:
    with Server(_Engine(), socket_path(tmp_path)) as server:
        answers = run_hello_client(server.socket_path, version)
        hello = answers["1"]["ok"]
        assert hello["protocol"] == PROTOCOL_VERSION == hello["version"]
        assert hello["mode"] == "HYBRID"
