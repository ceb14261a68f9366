"""The client stays light: what ``connect`` and a module process's work import.

``from modcoord.supervisor import connect`` must not import the daemon's libraries
(pykka, pydantic, loguru, PyYAML) nor what the light-client work cut from it (msgspec
and what its core imports, dataclasses and the inspect it imports, asyncio, logging):
each costs a sizeable part of a bare interpreter start (``scripts/bench`` figure 13).
The call table's client view (``protocol/signatures.py``) is generated from the table;
a test checks it is current. Unit tests run fresh interpreters; the integration tests run
a real client process and the real CLI against a real daemon.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from modcoord.supervisor.protocol import calls, gen_signatures, signatures

# What the client must not import (top-level module names). The first four are the
# daemon's; the rest were cut from the client's import and must not come back.
NOT_IMPORTED = frozenset({
    "pykka", "pydantic", "loguru", "yaml",
    "asyncio", "logging", "msgspec", "typing_extensions", "uuid", "platform", "decimal",
    "dataclasses", "inspect",
})

_LOADED = "import sys\nprint(repr(sorted({m.split('.')[0] for m in sys.modules})))\n"


def _loaded_by(code: str, *args: str) -> set[str]:
    """The top-level modules a fresh interpreter has loaded after running ``code``."""
    proc = subprocess.run([sys.executable, "-c", code + "\n" + _LOADED, *args],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    loaded: set[str] = set(ast.literal_eval(lines[-1]))
    return loaded


def _added_by(code: str, *args: str) -> set[str]:
    """What ``code`` imports beyond what a bare interpreter (``pass``) has loaded."""
    return _loaded_by(code, *args) - _loaded_by("pass")


# -- the generated client view ---------------------------------------------------------


def test_the_signatures_module_is_what_the_table_gives() -> None:
    assert gen_signatures.TARGET.read_text() == gen_signatures.render(), (
        "protocol/signatures.py is out of date: run "
        "python -m modcoord.supervisor.protocol.gen_signatures")
    assert signatures.PROTOCOL_VERSION == calls.PROTOCOL_VERSION
    assert list(signatures.CALLS) == list(calls.CALLS)
    assert {a: tuple(m) for a, m in calls.ACTOR_CALLS.items()} == signatures.ACTOR_METHODS
    for name, sig in signatures.CALLS.items():
        call = calls.CALLS[name]
        assert [p[0] for p in sig.params] == list(call.fields), name
        assert (sig.kind, sig.errors, sig.doc) == (call.kind, call.errors, call.doc), name


def test_the_check_mode_fails_on_a_stale_file(tmp_path: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "signatures.py"
    stale.write_text(gen_signatures.render().replace("PROTOCOL_VERSION: Final = ",
                                                     "PROTOCOL_VERSION: Final = 9"))
    monkeypatch.setattr(gen_signatures, "TARGET", stale)
    assert gen_signatures.main(["--check"]) == 1
    assert gen_signatures.main([]) == 0  # rewrites it
    assert gen_signatures.main(["--check"]) == 0
    assert stale.read_text() == gen_signatures.render()


# -- what the import loads ---------------------------------------------------------------


@pytest.mark.parametrize("statement", [
    "from modcoord.supervisor import connect",
    "from modcoord.supervisor import connect, ModcoordError, ProtocolVersionError, Future",
    "import modcoord.supervisor.client",
])
def test_importing_the_client_loads_none_of_the_cut_modules(statement: str) -> None:
    added = _added_by(statement)
    assert "modcoord" in added
    assert not added & NOT_IMPORTED, sorted(added & NOT_IMPORTED)


def test_the_client_results_still_come_on_first_use() -> None:
    # The names stay public; their module (a dataclass) is imported when first used.
    added = _added_by("from modcoord.supervisor import CoordinationResult\n"
                      "from modcoord.supervisor.client import ClientStatistics\n"
                      "assert CoordinationResult.__name__ == 'CoordinationResult'\n"
                      "assert ClientStatistics.__name__ == 'ClientStatistics'")
    assert "dataclasses" in added


# -- a real module process and the real CLI --------------------------------------------

_MODULE_PROCESS = textwrap.dedent("""
    import sys
    from modcoord.supervisor import connect

    class Editor:
        module_id = "light-editor"
        name = "editor"
        supported_modes = ["HYBRID"]
        subscribe = []

        def on_mode_change(self, mode, strategy, context):
            return {"ok": True}

        def on_batch(self, batch):
            pass

    with connect(runtime_dir=sys.argv[1], timeout=10, reconnect=False) as client:
        client.register(Editor()).get(10)
        seq = client.publish("light-editor", "doc-1", {"text": "hi"}).get(10)
        assert isinstance(seq, int), seq
        status = client.status().get(10)
        assert status["modules"] >= 1, status
""")


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_module_process_that_registers_and_publishes_loads_none_of_them(
        daemon: Any) -> None:
    added = _added_by(_MODULE_PROCESS, str(daemon.runtime_dir))
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
    added = _added_by(_CLI_STATUS, str(daemon.runtime_dir))
    assert not added & NOT_IMPORTED, sorted(added & NOT_IMPORTED)


def test_the_probe_sees_a_cut_module_when_one_is_imported() -> None:
    # The check above can fail: a client import that pulled in msgspec would be seen.
    added = _added_by("from modcoord.supervisor import connect\nimport msgspec")
    assert {"msgspec", "inspect"} <= added
