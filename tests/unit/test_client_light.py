"""The client stays light: what ``connect`` and a module process's work import.

``from modcoord.supervisor import connect`` must not import the daemon's libraries
(pykka, pydantic, loguru, PyYAML) nor what the light-client work cut from it (msgspec
and what its core imports, dataclasses and the inspect it imports, asyncio, logging):
each costs a sizeable part of a bare interpreter start (``scripts/bench`` figure 13).
The call table's client view (``protocol/signatures.py``) is generated from the table;
a test checks it is current. The tests run fresh interpreters (a real client process and
the real CLI against a real daemon: ``integration/test_client_light_daemon.py``).
"""

from __future__ import annotations

from typing import Any

import pytest
from import_probe import NOT_IMPORTED, added_by

from modcoord.supervisor.protocol import calls, gen_signatures, signatures

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
    added = added_by(statement)
    assert "modcoord" in added
    assert not added & NOT_IMPORTED, sorted(added & NOT_IMPORTED)


def test_the_client_results_still_come_on_first_use() -> None:
    # The names stay public; their module (a dataclass) is imported when first used.
    added = added_by("from modcoord.supervisor import CoordinationResult\n"
                      "from modcoord.supervisor.client import ClientStatistics\n"
                      "assert CoordinationResult.__name__ == 'CoordinationResult'\n"
                      "assert ClientStatistics.__name__ == 'ClientStatistics'")
    assert "dataclasses" in added


def test_the_probe_sees_a_cut_module_when_one_is_imported() -> None:
    # The check above can fail: a client import that pulled in msgspec would be seen.
    added = added_by("from modcoord.supervisor import connect\nimport msgspec")
    assert {"msgspec", "inspect"} <= added
