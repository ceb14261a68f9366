"""The client and the CLI against a real daemon: a client process of another protocol
version is refused naming both versions, and ``modcoord status --json`` imports one command
and nothing heavy (the unit side: ``unit/test_client_calls.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from modcoord.supervisor import connect
from modcoord.supervisor.protocol.calls import PROTOCOL_VERSION

HEAVY = ("pykka", "pydantic", "loguru", "yaml")


_OTHER_VERSION_CLIENT = textwrap.dedent("""
    import json, sys
    from modcoord.supervisor import ModcoordError, connect
    from modcoord.supervisor.client import connection
    connection.PROTOCOL_VERSION = int(sys.argv[2])  # a client of another release
    try:
        connect(runtime_dir=sys.argv[1], timeout=10, reconnect=False)
    except ModcoordError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
    else:
        print(json.dumps({"connected": True}))
""")


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_client_of_another_protocol_version_is_refused_naming_both(daemon: Any) -> None:
    other = PROTOCOL_VERSION + 1
    proc = subprocess.run(
        [sys.executable, "-c", _OTHER_VERSION_CLIENT, str(daemon.runtime_dir), str(other)],
        capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["error"] == "ProtocolVersionError", answer
    assert f"version {other}" in answer["message"]
    assert f"version {PROTOCOL_VERSION}" in answer["message"]
    # The daemon goes on serving clients of its own version.
    with connect(runtime_dir=daemon.runtime_dir, timeout=10, reconnect=False) as client:
        assert client.status().get(10)["pid"] > 0
        assert client.daemon_info["protocol"] == PROTOCOL_VERSION



# -- the CLI imports what a command needs ----------------------------------------------------

_CLI_PROBE = textwrap.dedent("""
    import contextlib, io, json, sys
    from modcoord.supervisor.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["status", "--json", "--runtime-dir", sys.argv[1]])
    print(json.dumps({"code": code, "status": json.loads(out.getvalue()),
                      "modules": sorted(sys.modules)}))
""")


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_status_json_imports_one_command_and_nothing_heavy(daemon: Any) -> None:
    proc = subprocess.run([sys.executable, "-c", _CLI_PROBE, str(daemon.runtime_dir)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["code"] == 0 and report["status"]["pid"] > 0
    modules = report["modules"]
    commands = [m for m in modules if m.startswith("modcoord.supervisor.cli.")
                and not m.endswith("._common")]
    assert commands == ["modcoord.supervisor.cli.status"]
    assert not {m.split(".")[0] for m in modules} & {*HEAVY, "rich", "psutil", "watchdog"}
    assert not [m for m in modules if m.startswith("modcoord.supervisor.daemon")]
