"""Write :mod:`.signatures`, the call table's msgspec-free view, from :mod:`.calls`.

``python -m modcoord.supervisor.protocol.gen_signatures`` rewrites
``supervisor/protocol/signatures.py``; ``--check`` only compares (exit 1 when it differs).
Run it after changing :data:`~.calls.CALLS`, :data:`~.calls.ACTOR_CALLS` or
:data:`~.calls.PROTOCOL_VERSION`; ``tests/test_client_light.py`` fails until then.

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
fails when it differs from what the table gives.

- :data:`PROTOCOL_VERSION`: as :data:`.calls.PROTOCOL_VERSION`.
- :data:`CALLS`: method name -> :class:`CallSignature`, in table order; ``params`` holds
  ``(field, how, default)`` per field in declaration order, ``how`` being
  :data:`REQUIRED`, :data:`DEFAULT` (``default`` is the value), :data:`FACTORY` (a
  default factory) or :data:`UNSET` (left out of the params unless given); ``default`` is
  ``None`` but for :data:`DEFAULT`.
- :data:`ACTOR_METHODS`: actor name -> its method names (:data:`.calls.ACTOR_CALLS`).
"""

# ruff: noqa: E501

from __future__ import annotations

from typing import Any, Final, NamedTuple

REQUIRED: Final = "required"
DEFAULT: Final = "default"
FACTORY: Final = "factory"
UNSET: Final = "unset"


class CallSignature(NamedTuple):
    """One call as a client sees it (see :class:`.calls.Call`)."""

    name: str
    params: tuple[tuple[str, str, Any], ...]
    kind: str
    errors: tuple[str, ...]
    result_doc: str
    doc: str


'''


def _literal(value: Any) -> str:
    """``repr(value)``, checked to read back as the same value.

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
    out = [_HEADER, f"PROTOCOL_VERSION: Final = {PROTOCOL_VERSION!r}\n\n",
           "CALLS: Final[dict[str, CallSignature]] = {\n"]
    for name, call in CALLS.items():
        params = []
        for f in msgspec.structs.fields(call.params):
            if f.required:
                params.append(f"({f.name!r}, REQUIRED, None)")
            elif f.default_factory is not msgspec.NODEFAULT:
                params.append(f"({f.name!r}, FACTORY, None)")
            elif f.default is msgspec.UNSET:
                params.append(f"({f.name!r}, UNSET, None)")
            else:
                params.append(f"({f.name!r}, DEFAULT, {_literal(f.default)})")
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
    return "".join(out)


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
