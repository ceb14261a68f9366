"""The real daemon refuses a client process that announces another protocol version in
``hello``, naming both versions, and serves on (the unit side:
``unit/test_protocol_version.py``)."""

from __future__ import annotations

from typing import Any

import pytest
from wire_raw import run_hello_client

from modcoord.supervisor.protocol.calls import PROTOCOL_VERSION


@pytest.mark.integration
def test_real_daemon_refuses_a_client_of_another_version(daemon: Any) -> None:
    answers = run_hello_client(daemon.socket, PROTOCOL_VERSION + 1)
    assert answers["1"]["error"] == "ProtocolVersionError"
    assert (f"protocol version {PROTOCOL_VERSION + 1}" in answers["1"]["message"]
            and f"version {PROTOCOL_VERSION};" in answers["1"]["message"])
    # The daemon serves on: the same client's next request, and a current client.
    assert "ok" in answers["2"]
    current = run_hello_client(daemon.socket, PROTOCOL_VERSION)
    assert current["1"]["ok"]["protocol"] == PROTOCOL_VERSION
    assert daemon.cli("status", "--json").code == 0
