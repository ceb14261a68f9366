"""The client stays light in real use: a module process that registers and publishes
against a real daemon, and ``modcoord status --json``, load none of the modules cut from the
client (the fresh-interpreter checks: ``unit/test_client_light.py``)."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
from daemon_harness import module_script
from import_probe import NOT_IMPORTED, added_by

# -- a real module process and the real CLI --------------------------------------------

_MODULE_PROCESS = module_script("light-editor", """
    seq = client.publish("light-editor", "doc-1", {"text": "hi"}).get(10)
    assert isinstance(seq, int), seq
    status = client.status().get(10)
    assert status["modules"] >= 1, status
""", modes=("HYBRID",))


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_module_process_that_registers_and_publishes_loads_none_of_them(
        daemon: Any) -> None:
    added = added_by(_MODULE_PROCESS, str(daemon.runtime_dir))
    assert not added & NOT_IMPORTED, sorted(added & NOT_IMPORTED)


_CLI_STATUS = textwrap.dedent("""
    import contextlib, io, sys
    from modcoord.supervisor.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["status", "--json", "--runtime-dir", sys.argv[1]])
    assert code == 0 and '"pid"' in out.getvalue(), (code, out.getvalue())
""")


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_status_json_loads_none_of_them(daemon: Any) -> None:
    added = added_by(_CLI_STATUS, str(daemon.runtime_dir))
    assert not added & NOT_IMPORTED, sorted(added & NOT_IMPORTED)
