"""Write :mod:`.signatures`, the call table's msgspec-free view, from :mod:`.calls`.

``python -m modcoord.supervisor.protocol.gen_signatures`` rewrites
``supervisor/protocol/signatures.py``; ``--check`` only compares (exit 1 when it differs).
Run it after changing :data:`~.calls.CALLS`, :data:`~.calls.ACTOR_CALLS` or
:data:`~.calls.PROTOCOL_VERSION`; ``tests/unit/test_client_light.py`` fails until then.

Why a generated file: the client needs each call's parameter names and defaults, its
docs and the actor methods' names, but the table declares them as msgspec structs, and
importing msgspec costs more than a bare interpreter start (its core imports
``typing_extensions`` and with it ``inspect``, ``uuid``, ``decimal``, ``datetime``). The
client sends plain maps and the daemon validates them, so the client needs none of it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import msgspec

from modcoord.supervisor.protocol.calls import ACTOR_CALLS, CALLS, PROTOCOL_VERSION

__all__ = ["TARGET", "main", "render"]

TARGET = Path(__file__).with_name("signatures.py")
"""The file this writes."""

_HEADER = '''"""The call table's client view, without msgspec: GENERATED, do not edit.

Written from :mod:`modcoord.supervisor.protocol.calls` by
``python -m modcoord.supervisor.protocol.gen_signatures`` (see there why it exists); a test
fails when it differs from what the table gives. What the entries mean:
:mod:`modcoord.supervisor.protocol.signature`.
"""

# ruff: noqa: E501

from __future__ import annotations

from typing import Final

'''


def _literal(value: Any) -> str:
    """``repr(value)`` of a plain literal (None, str, int, float, bool).

    Raises:
        ValueError: a default that is not a plain literal (give the field one).
    """
    text = repr(value)
    if value is not None and type(value) not in (str, int, float, bool):
        raise ValueError(f"default {text} is not a plain literal; give the field one")
    return text


def render() -> str:
    """The text of ``signatures.py`` for the current table.

    Raises:
        ValueError: a field default that is not a plain literal.
    """
    out = [f"PROTOCOL_VERSION: Final = {PROTOCOL_VERSION!r}\n\n",
           "CALLS: Final[dict[str, CallSignature]] = {\n"]
    used = {"CallSignature"}  # what the text names of .signature, to import just that
    for name, call in CALLS.items():
        params = []
        for f in msgspec.structs.fields(call.params):
            if f.required:
                how, default = "REQUIRED", "None"
            elif f.default_factory is not msgspec.NODEFAULT:
                how, default = "FACTORY", "None"
            elif f.default is msgspec.UNSET:
                how, default = "UNSET", "None"
            else:
                how, default = "DEFAULT", _literal(f.default)
            used.add(how)
            params.append(f"({f.name!r}, {how}, {default})")
        joined = ", ".join(params) + ("," if len(params) == 1 else "")
        out.append(f"    {name!r}: CallSignature(\n"
                   f"        {name!r},\n"
                   f"        ({joined}),\n"
                   f"        {call.kind!r},\n"
                   f"        {call.errors!r},\n"
                   f"        {call.result_doc!r},\n"
                   f"        {call.doc!r},\n"
                   f"    ),\n")
    out.append("}\n\nACTOR_METHODS: Final[dict[str, tuple[str, ...]]] = {\n")
    for actor, methods in ACTOR_CALLS.items():
        out.append(f"    {actor!r}: {tuple(methods)!r},\n")
    out.append("}\n")
    names = "".join(f"    {n},\n" for n in sorted(used, key=lambda n: (not n.isupper(), n)))
    imports = f"from modcoord.supervisor.protocol.signature import (\n{names})\n\n"
    return "".join([_HEADER, imports, *out])


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` compare) the file; returns the exit code (1: differs)."""
    args = sys.argv[1:] if argv is None else argv
    text = render()
    current = TARGET.read_text() if TARGET.exists() else ""
    if "--check" in args:
        if current != text:
            print(f"{TARGET} is out of date: run python -m {__spec__.name}", file=sys.stderr)
            return 1
        return 0
    if current != text:
        TARGET.write_text(text)
        print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
