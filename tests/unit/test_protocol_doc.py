"""``docs/PROTOCOL.md`` lists every call, actor method, event and callback of the table.

The section between the ``calls:begin`` and ``calls:end`` markers is generated from
:mod:`modcoord.supervisor.protocol.calls`; this test fails when it is out of date.
Regenerate it with
``MODCOORD_UPDATE_DOCS=1 python -m pytest tests/unit/test_protocol_doc.py``.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any

import msgspec

from modcoord.supervisor.protocol.calls import ACTOR_CALLS, CALLBACKS, CALLS, EVENTS

DOC = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
BEGIN = ("<!-- calls:begin (generated from protocol/calls.py; "
         "see tests/unit/test_protocol_doc.py) -->")
END = "<!-- calls:end -->"


def _type_name(t: Any) -> str:
    text = t.__name__ if isinstance(t, type) else str(t)
    text = text.replace("typing.", "").replace("modcoord.supervisor.protocol.calls.", "")
    return text.replace(" | ", " or ").replace("NoneType", "null").replace("None", "null").replace(
        " or msgspec.UnsetType", "")


def _plain(doc: str | None) -> str:
    return " ".join(line.strip() for line in (doc or "").strip().splitlines()).replace(
        "``", "`")


def _bounds(t: msgspec.inspect.Type) -> str:
    """The declared range of a string's length or a number, as text ("" if none)."""
    parts = []
    for attr, word in (("min_length", "length ≥ "), ("max_length", "length ≤ "),
                       ("ge", "≥ "), ("le", "≤ ")):
        value = getattr(t, attr, None)
        if value is not None:
            parts.append(f"{word}{value}")
    return f" ({', '.join(parts)})" if parts else ""


def _fields(struct: type[msgspec.Struct]) -> list[str]:
    hints = typing.get_type_hints(struct)
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    rows = []
    for f in info.fields:
        if f.required:
            default = "required"
        elif f.default in (msgspec.UNSET, msgspec.NODEFAULT) and \
                f.default_factory is msgspec.NODEFAULT:
            default = "see above"
        elif f.default_factory is not msgspec.NODEFAULT:
            default = f"`{msgspec.json.encode(f.default_factory()).decode()}`"
        else:
            default = f"`{msgspec.json.encode(f.default).decode()}`"
        rows.append(f"| `{f.name}` | `{_type_name(hints[f.name])}`{_bounds(f.type)} | "
                    f"{default} |")
    if not rows:
        return ["No params: `{}`."]
    return ["| field | type | default |", "|---|---|---|", *rows]


def generate() -> str:
    """The calls section, from the table."""
    out: list[str] = ["### Requests", ""]
    for call in CALLS.values():
        out += [f"#### `{call.name}` ({call.kind})", "", call.doc, "",
                _plain(call.params.__doc__), "", *_fields(call.params), "",
                f"Result: {call.result_doc}.", "",
                f"Errors: {', '.join(f'`{e}`' for e in call.errors)}.", ""]
    out += ["### Actor methods (through `actor`)", "",
            "| actor | method | arguments (positional order) | what it does |",
            "|---|---|---|---|"]
    for actor, methods in ACTOR_CALLS.items():
        for name, decl in methods.items():
            hints = typing.get_type_hints(decl.params)
            args = ", ".join(f"`{f}: {_type_name(hints[f])}`"
                             for f in decl.params.__struct_fields__) or "none"
            out.append(f"| `{actor}` | `{name}` | {args} | {decl.doc} |")
    out += ["", "### Events (daemon → client)", ""]
    for name, struct in EVENTS.items():
        out += [f"#### `{name}`", "", _plain(struct.__doc__), "", *_fields(struct), ""]
    out += ["### Callbacks (daemon → client, answered with a callback response)", ""]
    for name, struct in CALLBACKS.items():
        out += [f"#### `{name}`", "", _plain(struct.__doc__), "", *_fields(struct), ""]
    return "\n".join(out).rstrip() + "\n"


def test_protocol_doc_lists_every_call_from_the_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, "PROTOCOL.md lacks the generated calls section"
    head, rest = text.split(BEGIN, 1)
    section, tail = rest.split(END, 1)
    fresh = generate()
    if os.environ.get("MODCOORD_UPDATE_DOCS") == "1":
        DOC.write_text(f"{head}{BEGIN}\n{fresh}{END}{tail}", encoding="utf-8")
        section = "\n" + fresh
    assert section.strip() == fresh.strip(), (
        "docs/PROTOCOL.md is out of date with protocol/calls.py; regenerate it with "
        "MODCOORD_UPDATE_DOCS=1 python -m pytest tests/unit/test_protocol_doc.py")
    for name in CALLS:
        assert f"#### `{name}`" in section
    for methods in ACTOR_CALLS.values():
        for name in methods:
            assert f"| `{name}` |" in section
