"""Imports point one way: the CLI uses the client, the client the protocol; the daemon uses
the actors and the protocol. Nothing in the daemon imports the client, and nothing in the
protocol or the client imports the daemon (nor the protocol the client).

Checked on the source, with :mod:`ast`: every ``import`` statement counts, also inside a
function or an ``if TYPE_CHECKING:`` block, since each is an edge of the layering.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUPERVISOR = ROOT / "supervisor"
PACKAGE = "modcoord.supervisor"
# Names of ``modcoord.supervisor`` that load the client on first use (its ``__getattr__``).
CLIENT_NAMES = frozenset({"Client", "CoordinationResult", "Future", "connect"})

# Layer (a sub-package of supervisor/) → the packages it must not import.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "daemon": (f"{PACKAGE}.client",),
    "protocol": (f"{PACKAGE}.daemon", f"{PACKAGE}.client"),
    "client": (f"{PACKAGE}.daemon",),
}


def module_name(path: Path) -> str:
    """``supervisor/daemon/server.py`` → ``modcoord.supervisor.daemon.server``."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("modcoord", *parts))


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` (the text of ``module``) imports: ``import a.b`` gives
    ``a.b``; ``from a import b`` gives ``a`` and ``a.b`` (``b`` may be a submodule);
    relative imports are resolved against ``module``; ``from modcoord.supervisor import
    connect`` (a name that loads the client) counts as importing the client."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            for alias in node.names:
                found.add(f"{base}.{alias.name}")
                if base == PACKAGE and alias.name in CLIENT_NAMES:
                    found.add(f"{PACKAGE}.client")
    return found


def violations(layer: str) -> list[str]:
    """``"<module> imports <forbidden>"`` for every forbidden import in ``layer``."""
    out: list[str] = []
    for path in sorted((SUPERVISOR / layer).rglob("*.py")):
        module = module_name(path)
        imports = imported_modules(path.read_text(encoding="utf-8"), module,
                                   path.name == "__init__.py")
        for name in sorted(imports):
            for banned in FORBIDDEN[layer]:
                if name == banned or name.startswith(banned + "."):
                    out.append(f"{module} imports {name}")
    return out


def test_the_import_scanner_finds_every_kind_of_import() -> None:
    """The scanner must see what the layering test relies on, or that test proves nothing."""
    source = "\n".join([
        "import modcoord.supervisor.client.api",
        "from modcoord.supervisor.client.results import CoordinationResult",
        "from modcoord.supervisor import connect",
        "from ..client import future",
        "def f():",
        "    from modcoord.supervisor.daemon import server",
        "if TYPE_CHECKING:",
        "    from .engine import Engine",
    ])
    found = imported_modules(source, "modcoord.supervisor.daemon.coordinator")
    assert {"modcoord.supervisor.client.api", "modcoord.supervisor.client.results",
            "modcoord.supervisor.client", "modcoord.supervisor.client.future",
            "modcoord.supervisor.daemon.server",
            "modcoord.supervisor.daemon.engine.Engine"} <= found
    assert imported_modules("from . import calls", "modcoord.supervisor.protocol",
                            is_package=True) >= {"modcoord.supervisor.protocol.calls"}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_point_one_way(layer: str) -> None:
    files = list((SUPERVISOR / layer).rglob("*.py"))
    assert files, f"no sources under supervisor/{layer}"
    found = violations(layer)
    assert not found, (f"supervisor/{layer} must not import "
                       f"{' or '.join(FORBIDDEN[layer])}:\n" + "\n".join(found))
