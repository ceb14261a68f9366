"""The protocol version in ``hello``: a client and a daemon that disagree are told so.

Unit tests run the server with a fake engine in-process; the integration test runs a real
daemon and a real client process that announces another version.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from modcoord.actors.errors import ModcoordError
from modcoord.supervisor.daemon.server import Server
from modcoord.supervisor.protocol.calls import PROTOCOL_VERSION, Params
from modcoord.supervisor.protocol.errors import ProtocolVersionError, error_from_wire
from modcoord.supervisor.protocol.paths import socket_path

# A client process: it says hello with the protocol version given, then asks for the
# status; it prints what came back as JSON (the errors rebuilt as a client does).
CLIENT = textwrap.dedent("""
    import json, socket, sys
    from modcoord.supervisor.protocol.errors import error_from_wire
    from modcoord.supervisor.protocol.framing import FrameDecoder, encode_frame

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(sys.argv[1])
    sock.sendall(encode_frame([0, 1, "hello", {"client": "old", "protocol": int(sys.argv[2])}])
                 + encode_frame([0, 2, "status", {}]))
    decoder, got = FrameDecoder(1 << 30), {}
    while len(got) < 2:
        data = sock.recv(1 << 16)
        if not data:
            break
        for msg in decoder.feed(data):
            if msg[0] == 1:
                got[msg[1]] = msg
    out = {}
    for rid, (_, _, error, result) in got.items():
        if error is None:
            out[rid] = {"ok": result if rid == 1 else sorted(result)[:3]}
        else:
            exc = error_from_wire(error)
            out[rid] = {"error": type(exc).__name__, "message": str(exc)}
    print(json.dumps(out))
""")


def _run_client(path: Path, version: int) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", CLIENT, str(path), str(version)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    answers: dict[str, Any] = json.loads(proc.stdout)
    return answers


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
        answers = _run_client(server.socket_path, version)
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
        answers = _run_client(server.socket_path, version)
        hello = answers["1"]["ok"]
        assert hello["protocol"] == PROTOCOL_VERSION == hello["version"]
        assert hello["mode"] == "HYBRID"


@pytest.mark.integration
def test_real_daemon_refuses_a_client_of_another_version(daemon: Any) -> None:
    answers = _run_client(daemon.socket, PROTOCOL_VERSION + 1)
    assert answers["1"]["error"] == "ProtocolVersionError"
    assert (f"protocol version {PROTOCOL_VERSION + 1}" in answers["1"]["message"]
            and f"version {PROTOCOL_VERSION};" in answers["1"]["message"])
    # The daemon serves on: the same client's next request, and a current client.
    assert "ok" in answers["2"]
    current = _run_client(daemon.socket, PROTOCOL_VERSION)
    assert current["1"]["ok"]["protocol"] == PROTOCOL_VERSION
    assert daemon.cli("status", "--json").code == 0
