"""Every log call of the daemon and the actors reads well: the message is a constant that
says what happened (no ``{}`` placeholders repeating the fields), and the fields carry the
values under readable names (words, not ``f``, ``d``, ``c``)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Where the structured (loguru) log is written from; the client library uses the
#: standard ``logging`` of the module process instead.
SOURCES = [*sorted((ROOT / "actors").rglob("*.py")),
           *sorted((ROOT / "supervisor" / "daemon").rglob("*.py")),
           ROOT / "supervisor" / "supervisor.py"]
LEVEL_METHODS = {"trace", "debug", "info", "success", "warning", "error", "critical",
                 "exception"}
#: A field name: a lower-case word or words joined by ``_``, at least 3 letters.
FIELD_NAME = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
PLACEHOLDER = re.compile(r"\{[^{}]*\}")


def _is_logger_chain(node: ast.AST) -> bool:
    """Whether ``node`` is ``logger``/``_log``/``log``/``self._log`` or a ``.bind()``/
    ``.opt()`` on one."""
    while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            and node.func.attr in ("bind", "opt"):
        node = node.func.value
    if isinstance(node, ast.Name):
        return node.id in ("logger", "_log", "log")
    return isinstance(node, ast.Attribute) and node.attr in ("_log", "log") \
        and isinstance(node.value, ast.Name) and node.value.id == "self"


def _bind_keywords(node: ast.AST) -> list[ast.keyword]:
    found: list[ast.keyword] = []
    while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if node.func.attr == "bind":
            found += node.keywords
        node = node.func.value
    return found


def log_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            method = node.func.attr
            if method not in LEVEL_METHODS | {"log"} or not _is_logger_chain(node.func.value):
                continue
            calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", node))
    return calls


def test_there_are_log_calls_to_check() -> None:
    assert len(log_calls()) > 80


def test_messages_are_constants_without_placeholders_and_fields_are_words() -> None:
    problems: list[str] = []
    for where, call in log_calls():
        args = call.args[1:] if call.func.attr == "log" else call.args  # type: ignore[attr-defined]
        if not args or not (isinstance(args[0], ast.Constant) and isinstance(args[0].value, str)):
            problems.append(f"{where}: the message is not a constant string")
            continue
        message = args[0].value
        if PLACEHOLDER.search(message):
            problems.append(f"{where}: {message!r} repeats its fields in the text")
        if len(args) > 1:
            problems.append(f"{where}: positional format arguments (give them names)")
        for kw in [*call.keywords, *_bind_keywords(call.func.value)]:  # type: ignore[attr-defined]
            if kw.arg is None:
                continue  # **fields: checked where they are built
            if not FIELD_NAME.match(kw.arg) or len(kw.arg.replace("_", "")) < 3:
                problems.append(f"{where}: field {kw.arg!r} is not a readable name")
    assert not problems, "\n".join(problems)
