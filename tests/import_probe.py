"""What a fresh interpreter imports: :func:`added_by` runs code in one and returns the
top-level modules it loaded beyond a bare start; :data:`NOT_IMPORTED` is what the client
must never load (the light client: ``unit/test_client_light.py`` and its daemon half)."""

from __future__ import annotations

import ast
import subprocess
import sys

__all__ = ["NOT_IMPORTED", "added_by", "loaded_by"]

# What the client must not import (top-level module names). The first four are the
# daemon's; the rest were cut from the client's import and must not come back.
NOT_IMPORTED = frozenset({
    "pykka", "pydantic", "loguru", "yaml",
    "asyncio", "logging", "msgspec", "typing_extensions", "uuid", "platform", "decimal",
    "dataclasses", "inspect", "prometheus_client",
})

_LOADED = "import sys\nprint(repr(sorted({m.split('.')[0] for m in sys.modules})))\n"


def loaded_by(code: str, *args: str) -> set[str]:
    """The top-level modules a fresh interpreter has loaded after running ``code``."""
    proc = subprocess.run([sys.executable, "-c", code + "\n" + _LOADED, *args],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    loaded: set[str] = set(ast.literal_eval(lines[-1]))
    return loaded


def added_by(code: str, *args: str) -> set[str]:
    """What ``code`` imports beyond what a bare interpreter (``pass``) has loaded."""
    return loaded_by(code, *args) - loaded_by("pass")
