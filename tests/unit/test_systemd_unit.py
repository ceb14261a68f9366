"""The example systemd unit, ``scripts/modcoord.service``: a notify service that starts the
daemon in the foreground, reloads with ``modcoord reload`` (which waits for the outcome and
fails on a rejected config) and does not restart on a config error (78). The run against a
real daemon is in tests/integration/test_journal.py."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICE_FILE = ROOT / "scripts" / "modcoord.service"
PACKAGED = ROOT / "supervisor" / "daemon" / "data" / "modcoord.service"


def _unit(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"bad unit line {raw!r}"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_example() -> None:
    unit = _unit(SERVICE_FILE.read_text())
    service = unit["Service"]
    assert service["Type"] == ["notify"]
    assert service["ExecStart"][0].split()[-2:] == ["start", "--foreground"]
    assert service["ExecStart"][0].split()[0].endswith("modcoord")
    [reload] = service["ExecReload"]
    assert reload.split()[0].endswith("modcoord") and reload.split()[1:] == ["reload"]
    # The same program as ExecStart, so it finds the same daemon (MODCOORD_RUNTIME_DIR).
    assert reload.split()[0] == service["ExecStart"][0].split()[0]
    assert service["KillSignal"] == ["SIGTERM"]
    assert service["Restart"] == ["on-failure"]
    assert service["RuntimeDirectory"] == ["modcoord"]
    assert "MODCOORD_RUNTIME_DIR=%t/modcoord" in " ".join(service["Environment"])
    assert "78" in service.get("RestartPreventExitStatus", [""])[0]
    assert "Unit" in unit and "Install" in unit


def test_the_packaged_unit_is_the_scripts_unit() -> None:
    # One copy: the package data entry is a symlink to scripts/modcoord.service.
    assert PACKAGED.is_symlink()
    assert PACKAGED.resolve() == SERVICE_FILE.resolve()
