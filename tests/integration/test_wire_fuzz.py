"""Wire fuzzing: hypothesis-made garbage and wrong frames against a real daemon's socket.

One real daemon (packaged configs) serves the whole module. Honest clients of the client
library (:class:`wire_raw.HonestClients`, each on its own connection) prove after every
few examples that it still serves everybody: ``status`` answers with its pid and a fresh
publish reaches a subscriber; the daemon process must be alive after every example.

- :func:`test_fuzzed_frames_get_errors_and_harm_nobody`: each example is one raw
  connection carrying a stream of wrong messages — wrong types for every field of every
  method of the wire's call table (``wire.METHODS``; :data:`SCHEMA` must cover exactly
  those), params that are not a map, unknown fields and methods, wrong kinds and
  lengths, forged callback responses, calls of every actor method (the coordinator's
  table) with random arguments, reused and extreme ids — optionally ended by a frame that
  breaks the framing (oversized, short or long length prefix, undecodable body, no
  envelope), a truncated frame or random bytes. The protocol (``supervisor/wire.py``)
  says what must come back: a message with an integer id gets an ``[1, id, [type,
  message], None]`` error naming the field, in order, and the connection stays open
  (a final ``hello`` is still answered); broken framing or a message without an id gets
  ``[1, None, [type, message], None]`` and the connection is closed.
- :func:`test_fuzzed_payloads_accepted_are_delivered`: odd but legal payloads (huge ints,
  NaN, ext types, timestamps, binary, int and bytes map keys, large blobs, nesting up to
  1000 levels) are either accepted and then delivered intact, or refused with an
  ``InvalidMessageError``; shallow ones must be accepted.
- :func:`test_forged_callback_responses_harm_nobody`: a module's ``on_mode_change``
  answered with forged ids, wrong error types and odd results: the coordination that
  asked for it gets exactly the final answer; other clients are unaffected.

Hypothesis runs derandomized without a database (the same examples every run) and
without shrinking (a shrunk example would replay against a daemon in a different state:
the failing example is reported as it ran, with the examples before it). The example
counts fit about 60 s on a loaded 2-core machine; ``MODCOORD_FUZZ_SCALE`` scales them.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
from daemon_harness import DaemonProcess
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from wire_raw import HonestClients, RawConnection, frame

from modcoord.actors.update import PRIORITIES
from modcoord.supervisor.daemon.config import MODES
from modcoord.supervisor.protocol import wire
from modcoord.supervisor.protocol.calls import (
    HISTORY_MAX_METRICS,
    HISTORY_MAX_SINCE_S,
    PROTOCOL_VERSION,
    decode_params,
)

SCALE = float(os.environ.get("MODCOORD_FUZZ_SCALE", "1"))
FRAME_EXAMPLES = max(1, int(1000 * SCALE))
PAYLOAD_EXAMPLES = max(1, int(120 * SCALE))
CALLBACK_EXAMPLES = max(1, int(40 * SCALE))
CHECK_EVERY = 10  # examples between two honest-client checks
SENTINEL = 0x5E_5E_5E_5E  # the id of the closing hello (never drawn as a fuzz id)
READ_S = 10.0  # the longest wait for one answer (a loaded machine)


def _settings(max_examples: int) -> Callable[[Any], Any]:
    return settings(
        max_examples=max_examples, deadline=None, derandomize=True, database=None,
        phases=(Phase.explicit, Phase.generate), print_blob=False,
        suppress_health_check=list(HealthCheck),
    )


# -- the call table and what each field takes -----------------------------------------------

# method -> field -> kind of value (see _wrong_value). "any": every value is valid.
SCHEMA: dict[str, dict[str, str]] = {
    "hello": {"client": "text", "pid": "int", "protocol": "int"},
    "register": {"module_id": "module_id", "name": "text", "supported_modes": "modes",
                 "subscribe": "subscribe", "has_metrics": "bool"},
    "unregister": {"module_id": "nonempty"},
    "publish": {"module_id": "nonempty", "key": "key", "payload": "any",
                "priority": "priority"},
    "coordinate": {"mode": "mode", "context": "context"},
    "set_mode": {"mode": "mode"},
    "actor": {"actor": "actor", "method": "method", "args": "args", "kwargs": "kwargs"},
    "crash": {"actor": "actor", "kind": "crash_kind"},
    "history": {"metrics": "metric_list", "since_s": "since"},
    **{m: {} for m in ("status", "insights", "optimize", "reload", "config", "metrics",
                       "dashboard", "stop")},
}
# Valid params using every field: breaking exactly one field makes the request wrong.
TEMPLATES: dict[str, dict[str, Any]] = {
    "hello": {"client": "fuzz", "pid": 1, "protocol": PROTOCOL_VERSION},
    "register": {"module_id": "fz-never", "name": "n", "supported_modes": ["HYBRID"],
                 "subscribe": [], "has_metrics": False},
    "unregister": {"module_id": "fz-never"},
    "publish": {"module_id": "fz-never", "key": "k", "payload": 1, "priority": "low"},
    "coordinate": {"mode": "HYBRID", "context": {}},
    "set_mode": {"mode": "HYBRID"},
    "actor": {"actor": "cache", "method": "statistics", "args": [], "kwargs": {}},
    "crash": {"actor": "cache", "kind": "exception"},
    "history": {"metrics": ["modules"], "since_s": 60.0},
}
METHOD_LIST = sorted(wire.METHODS)
HARMLESS = ("status", "insights", "config", "metrics", "hello")  # valid, changing nothing


def _actor_table() -> dict[str, dict[str, tuple[str, ...]]]:
    """actor -> method -> parameter names, from the messages the coordinator sends for the
    actor calls (checked at its import against the protocol's ``ACTOR_CALLS``)."""
    from modcoord.supervisor.daemon.actor_messages import ACTOR_MESSAGES

    table: dict[str, dict[str, tuple[str, ...]]] = {}
    for (actor, method), message in ACTOR_MESSAGES.items():
        assert dataclasses.is_dataclass(message), message
        table.setdefault(actor, {})[method] = tuple(f.name for f in dataclasses.fields(message))
    return table


ACTOR_TABLE = _actor_table()


# -- values ----------------------------------------------------------------------------------

INTS = st.one_of(st.sampled_from([0, 1, -1, 2**64 - 1, -(2**63), 2**63, 2**32, -(2**31) - 1]),
                 st.integers(-(2**63), 2**64 - 1))
EXT = st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
STAMP = st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1), st.integers(0, 999_999_999))
LEAF = st.one_of(st.none(), st.booleans(), INTS, st.floats(), st.text(max_size=16),
                 st.binary(max_size=16), EXT, STAMP)
MAP_KEYS = st.one_of(st.text(max_size=8), INTS, st.binary(max_size=8))
ANY = st.recursive(LEAF, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                 st.dictionaries(MAP_KEYS, inner, max_size=4)),
                   max_leaves=12)


def nested(depth: int, leaf: Any = None, maps: bool = False) -> Any:
    """``depth`` levels of one-element lists (or maps) around ``leaf``."""
    value = leaf
    for i in range(depth):
        value = {"d": value} if maps and i % 2 else [value]
    return value


DEEP = st.builds(nested, st.integers(1, 400), LEAF, st.booleans())
VALUE = st.one_of(ANY, ANY, ANY, DEEP)


def _is_mode(value: str) -> bool:
    return value in MODES or value.lower() in {m.lower() for m in MODES} or \
        value.strip().upper().replace("-", "_") in MODES


def _not(types: tuple[type, ...] | type, allow_none: bool = False) -> st.SearchStrategy[Any]:
    def wrong(v: Any) -> bool:
        if v is None:
            return not allow_none
        return type(v) not in (types if isinstance(types, tuple) else (types,))
    return VALUE.filter(wrong)


NOT_STR = _not(str)
BAD_IDENTIFIER_KEYS = st.dictionaries(
    st.one_of(INTS, st.binary(max_size=4), st.text(max_size=6).filter(
        lambda k: not k.isidentifier())), ANY, min_size=1, max_size=3)


def _wrong_value(kind: str, name: str) -> st.SearchStrategy[tuple[Any, str]]:
    """Values a field of this kind refuses, with what the error must mention."""
    def named(s: st.SearchStrategy[Any], needle: str = name) -> st.SearchStrategy[tuple[Any, str]]:
        return s.map(lambda v: (v, needle))

    text = st.text(max_size=12)
    strategies: dict[str, st.SearchStrategy[tuple[Any, str]]] = {
        "text": named(NOT_STR),
        "int": named(_not(int)),
        "bool": named(_not(bool)),
        "nonempty": named(st.one_of(NOT_STR, st.just(""))),
        "module_id": named(st.one_of(NOT_STR, st.just(""), st.text(min_size=201, max_size=240))),
        "key": named(st.one_of(NOT_STR, st.just(""),
                               st.integers(wire.MAX_KEY_LENGTH + 1, 1100).map(lambda n: "k" * n))),
        "mode": named(st.one_of(NOT_STR, text.filter(lambda s: not _is_mode(s)))),
        "priority": named(st.one_of(NOT_STR, text.filter(lambda s: s not in PRIORITIES))),
        "actor": named(st.one_of(NOT_STR, text.filter(lambda s: s not in wire.ACTOR_NAMES))),
        "crash_kind": named(st.one_of(NOT_STR, text.filter(lambda s: s not in wire.CRASH_KINDS))),
        "modes": named(st.one_of(
            _not(list), st.lists(VALUE, min_size=1, max_size=3).filter(
                lambda v: any(type(m) is not str for m in v)),
            st.lists(text, min_size=1, max_size=3).filter(
                lambda v: any(m not in MODES for m in v)))),
        "subscribe": named(st.one_of(
            _not((list, str)), st.lists(VALUE, min_size=1, max_size=3).filter(
                lambda v: any(type(s) is not str for s in v)))),
        "context": named(_not(dict, allow_none=True)),
        "metric_list": named(st.one_of(
            _not(list, allow_none=True), st.lists(VALUE, min_size=1, max_size=3).filter(
                lambda v: any(type(m) is not str or not m for m in v)))),
        "since": named(st.one_of(_not((int, float)), st.sampled_from(
            [0, -1.0, 30 * 86_400 + 1, float("inf")]))),
        "args": st.one_of(named(_not((list, dict), allow_none=True)),
                          named(BAD_IDENTIFIER_KEYS, "keyword argument")),
        "kwargs": st.one_of(named(_not(dict, allow_none=True)),
                            named(BAD_IDENTIFIER_KEYS, "keyword argument")),
        "method": named(st.one_of(NOT_STR, text.filter(
            lambda s: not s.isidentifier() or s.startswith("_")))),
    }
    return strategies[kind]


# Representative values for the deterministic sweep (every field of every method gets each
# of these that its kind refuses).
SAMPLES: list[Any] = [
    None, True, False, 0, -1, 2**64 - 1, -(2**63), 1.5, float("nan"), "", "x", "_private",
    "1abc", "k" * (wire.MAX_KEY_LENGTH + 1), "m" * 201, b"bytes", [], [1], ["nope"], [None],
    {}, {1: 2}, {b"k": 1}, {"not an identifier": 1}, msgpack.ExtType(5, b"x"),
    msgpack.Timestamp(1, 0), nested(300), nested(300, maps=True),
]


def _refuses(kind: str, v: Any) -> bool:
    """Whether a field of ``kind`` refuses ``v`` (what the protocol documents)."""
    def identifiers(d: Any) -> bool:
        return all(type(k) is str and k.isidentifier() for k in d)

    if kind in ("text", "int", "bool"):
        return type(v) is not {"text": str, "int": int, "bool": bool}[kind]
    limits = {"nonempty": 10**9, "module_id": 200, "key": wire.MAX_KEY_LENGTH}
    if kind in limits:
        return not (type(v) is str and 0 < len(v) <= limits[kind])
    choices: dict[str, Any] = {"mode": None, "priority": PRIORITIES, "actor": wire.ACTOR_NAMES,
               "crash_kind": wire.CRASH_KINDS}
    if kind in choices:
        if type(v) is not str:
            return True
        return not _is_mode(v) if kind == "mode" else v not in choices[kind]
    if kind == "modes":
        return not (type(v) is list and all(type(m) is str and m in MODES for m in v))
    if kind == "subscribe":
        return not (type(v) is str or (type(v) is list and all(type(s) is str for s in v)))
    if kind == "context":
        return not (v is None or type(v) is dict)
    if kind == "args":
        return not (v is None or type(v) is list or (type(v) is dict and identifiers(v)))
    if kind == "kwargs":
        return not (v is None or (type(v) is dict and identifiers(v)))
    if kind == "method":
        return not (type(v) is str and v.isidentifier() and not v.startswith("_"))
    if kind == "metric_list":
        return not (v is None or (type(v) is list and len(v) <= HISTORY_MAX_METRICS and all(
            type(m) is str and 0 < len(m) <= 200 for m in v)))
    if kind == "since":
        return not (type(v) in (int, float) and 0 < v <= HISTORY_MAX_SINCE_S)
    raise AssertionError(f"unknown kind {kind}")


def table_cases() -> list[Case]:
    """Every method of the call table: each field given each refused sample, unknown
    fields, and params that are not a map; one connection per method."""
    out = []
    rid = itertools.count(1)
    for method in METHOD_LIST:
        msgs = []
        for name, kind in SCHEMA[method].items():
            if kind == "any":
                continue
            for value in SAMPLES:
                if not _refuses(kind, value):
                    continue
                needle = name
                if kind in ("args", "kwargs") and type(value) is dict:
                    needle = "keyword argument"
                params = dict(TEMPLATES.get(method, {}), **{name: value})
                i = next(rid)
                msgs.append(Msg(f"{method}.{name}={value!r:.20}", _req(i, method, params),
                                error=(i, "InvalidMessageError", needle)))
        for extra in ("zz", 7, b"mode"):
            i = next(rid)
            msgs.append(Msg(f"{method}+{extra!r}", _req(i, method,
                                                       {**TEMPLATES.get(method, {}), extra: 1}),
                            error=(i, "InvalidMessageError", "unknown field")))
        not_maps: tuple[Any, ...] = (None, [], "params", 3)
        for not_map in not_maps:
            i = next(rid)
            msgs.append(Msg(f"{method}({not_map!r})", _req(i, method, not_map),
                            error=(i, "InvalidMessageError", "params must be a map")))
        out.append(Case(msgs, "hello"))
    return out


# -- messages and their expected answers --------------------------------------------------------


@dataclass
class Msg:
    """Bytes to send and what the daemon must answer.

    ``error``: ``(id, type, needle)`` of a synchronous error answer (answered in order);
    ``answer``: ``(id, must_succeed)`` of an answer that may come later (control calls).
    """

    label: str
    data: bytes
    error: tuple[Any, str, str] | None = None
    answer: tuple[int, bool] | None = None


@dataclass
class Case:
    msgs: list[Msg]
    ending: str  # "hello": a closing hello must be answered; "closed": the daemon closes;
    #              "eof": we half-close after a truncated frame; "random": likewise after noise
    tail: bytes = b""
    closing: tuple[str, str] | None = None  # the (type, needle) of the id-less error
    splits: list[int] = field(default_factory=list)

    def describe(self) -> str:
        labels = [m.label for m in self.msgs]
        return f"{labels} ending={self.ending} closing={self.closing} tail={self.tail[:80]!r}"


def _req(rid: Any, method: Any, params: Any) -> bytes:
    return frame([wire.REQUEST, rid, method, params])


@st.composite
def wrong_params(draw: st.DrawFn, ids: st.SearchStrategy[int]) -> Msg:
    method = draw(st.sampled_from(METHOD_LIST))
    rid = draw(ids)
    fields = [f for f, kind in SCHEMA[method].items() if kind != "any"]
    how = draw(st.sampled_from(["field", "field", "field", "extra", "not_map"]
                               if fields else ["extra", "not_map"]))
    params: Any = dict(TEMPLATES.get(method, {}))
    if how == "field":
        name = draw(st.sampled_from(fields))
        value, needle = draw(_wrong_value(SCHEMA[method][name], name))
        params[name] = value
        label = f"{method}.{name}"
    elif how == "extra":
        extra = draw(MAP_KEYS.filter(lambda k: k not in SCHEMA[method]))
        params[extra] = draw(VALUE)
        needle, label = "unknown field", f"{method}+{extra!r:.20}"
    else:
        params = draw(_not(dict))
        needle, label = "params must be a map", f"{method}(not a map)"
    return Msg(label, _req(rid, method, params), error=(rid, "InvalidMessageError", needle))


@st.composite
def unknown_method(draw: st.DrawFn, ids: st.SearchStrategy[int]) -> Msg:
    rid = draw(ids)
    method = draw(st.one_of(st.text(max_size=24).filter(lambda m: m not in wire.METHODS),
                            NOT_STR))
    params = draw(st.dictionaries(MAP_KEYS, VALUE, max_size=3))
    needle = "unknown method" if type(method) is str else "method must be a string"
    return Msg(f"method {method!r:.20}", _req(rid, method, params),
               error=(rid, "InvalidMessageError", needle))


def _kind_like(v: Any) -> bool:
    try:
        return bool(v == wire.REQUEST or v == wire.CALLBACK_RESPONSE)
    except Exception:
        return False


@st.composite
def wrong_envelope(draw: st.DrawFn, ids: st.SearchStrategy[int]) -> Msg:
    """An array with an integer id whose kind or length is wrong."""
    rid = draw(ids)
    if draw(st.booleans()):
        kind = draw(VALUE.filter(lambda v: not _kind_like(v)))
        msg = [kind, rid, draw(VALUE), draw(VALUE)]
        needle, label = "message kind", f"kind {kind!r:.20}"
    else:
        first = draw(st.sampled_from([wire.REQUEST, wire.CALLBACK_RESPONSE, 9]))
        rest = draw(st.lists(VALUE, max_size=4).filter(lambda r: len(r) != 2))
        msg = [first, rid, *rest]
        needle, label = "4 elements", f"length {len(msg)}"
    return Msg(label, frame(msg), error=(rid, "InvalidMessageError", needle))


@st.composite
def forged_callback_response(draw: st.DrawFn, ids: st.SearchStrategy[int]) -> Msg:
    """A callback response nobody asked for (no answer), or one whose error field has the
    wrong type (an error)."""
    rid = draw(ids)
    if draw(st.booleans()):
        error = draw(st.one_of(st.none(), st.text(max_size=20), st.lists(VALUE, max_size=3)))
        return Msg("forged callback response",
                   frame([wire.CALLBACK_RESPONSE, rid, error, draw(VALUE)]))
    error = draw(VALUE.filter(lambda e: e is not None and type(e) not in (str, list)))
    return Msg(f"callback response error {error!r:.20}",
               frame([wire.CALLBACK_RESPONSE, rid, error, draw(VALUE)]),
               error=(rid, "InvalidMessageError", "callback response error"))


@st.composite
def not_mine(draw: st.DrawFn, ids: st.SearchStrategy[int]) -> Msg:
    """Valid publish or unregister for a module this connection did not register."""
    rid = draw(ids)
    module_id = "fz-" + draw(st.text(max_size=12))
    if draw(st.booleans()):
        params = {"module_id": module_id, "key": draw(st.text(min_size=1, max_size=20)),
                  "payload": draw(VALUE)}
        return Msg("publish not mine", _req(rid, "publish", params),
                   error=(rid, "InvalidMessageError", "not registered"))
    return Msg("unregister not mine", _req(rid, "unregister", {"module_id": module_id}),
               error=(rid, "InvalidMessageError", "not registered"))


@st.composite
def harmless(draw: st.DrawFn, ids: st.SearchStrategy[int]) -> Msg:
    """A valid call that changes nothing: it must succeed (possibly after later errors)."""
    rid = draw(ids)
    method = draw(st.sampled_from(HARMLESS))
    params: dict[str, Any] = {}
    if method == "hello":
        params = draw(st.fixed_dictionaries({}, optional={"client": st.text(max_size=20),
                                                          "pid": INTS}))
    return Msg(f"{method} ok", _req(rid, method, params), answer=(rid, True))


_actor_ids = itertools.count(1 << 40)  # actor calls get ids of their own (answers come late)


@st.composite
def actor_call(draw: st.DrawFn) -> Msg:
    """Any method of any actor with random arguments: answered (result or error)."""
    actor = draw(st.sampled_from(sorted(ACTOR_TABLE)))
    method = draw(st.sampled_from(sorted(ACTOR_TABLE[actor])))
    names = ACTOR_TABLE[actor][method]
    params: dict[str, Any] = {"actor": actor, "method": method}
    how = draw(st.sampled_from(["positional", "keywords", "both"]))
    if how in ("positional", "both"):
        params["args"] = draw(st.lists(VALUE, max_size=3))
    if how in ("keywords", "both"):
        keys = st.one_of(st.sampled_from(names), st.from_regex(r"[a-z][a-z_]{0,8}",
                                                              fullmatch=True)) \
            if names else st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True)
        params["kwargs"] = draw(st.dictionaries(keys, VALUE, max_size=3))
    rid = next(_actor_ids)
    return Msg(f"{actor}.{method}", _req(rid, "actor", params), answer=(rid, False))


@st.composite
def closer(draw: st.DrawFn) -> tuple[bytes, tuple[str, str]]:
    """A frame after which the daemon must send an id-less error and close."""
    body = msgpack.packb([wire.REQUEST, 1, "status", {"pad": draw(st.text(max_size=8))}])
    how = draw(st.sampled_from(["oversized", "undecodable", "short", "long", "zero",
                                "no envelope", "no id"]))
    header = wire.HEADER.pack
    if how == "oversized":
        n = draw(st.integers(wire.DEFAULT_MAX_FRAME_BYTES + 1, 2**32 - 1))
        return header(n) + draw(st.binary(max_size=64)), ("FramingError", "exceeds")
    if how == "undecodable":
        bad = draw(st.sampled_from([
            b"\xc1",  # the never-used byte
            b"\xd4\xff\x00",  # a timestamp (ext -1) of one byte
            b"\x81\x91\x00\x00",  # a map whose key is an array
            body[:-1],  # a message cut short inside its frame
            b"\x91" * 1100 + b"\xc0",  # nested deeper than msgpack decodes
        ]))
        return header(len(bad)) + bad, ("InvalidMessageError", "undecodable frame")
    if how == "short":  # the prefix ends the frame inside the message
        k = draw(st.integers(1, len(body) - 1))
        return header(k) + body, ("InvalidMessageError", "undecodable frame")
    if how == "long":  # the frame holds the message and more
        extra = draw(st.binary(min_size=1, max_size=16))
        return header(len(body) + len(extra)) + body + extra, ("InvalidMessageError",
                                                                "undecodable frame")
    if how == "zero":
        return header(0), ("InvalidMessageError", "undecodable frame")
    if how == "no envelope":
        return frame(draw(_not(list))), ("InvalidMessageError", "must be an array")
    msg = draw(st.one_of(
        st.lists(VALUE, max_size=1),
        st.tuples(VALUE, VALUE.filter(lambda v: type(v) is not int)).map(list),
        st.tuples(st.just(0), VALUE.filter(lambda v: type(v) is not int), VALUE,
                  VALUE).map(list)))
    needle = "4 elements" if len(msg) != 4 else "id must be an integer"
    return frame(msg), ("InvalidMessageError", needle)


@st.composite
def truncated(draw: st.DrawFn) -> bytes:
    """The beginning of a frame, never completed."""
    body: bytes = msgpack.packb([wire.REQUEST, 2, "status", {}]) + draw(st.binary(max_size=32))
    if draw(st.booleans()):
        return wire.HEADER.pack(len(body))[:draw(st.integers(1, 3))]
    return wire.HEADER.pack(len(body)) + body[:draw(st.integers(0, len(body) - 1))]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    pool = draw(st.lists(INTS.filter(lambda i: i != SENTINEL), min_size=1, max_size=3))
    ids = st.sampled_from(pool)  # few ids per connection: they are reused
    one = st.one_of(wrong_params(ids), wrong_params(ids), wrong_params(ids),
                    unknown_method(ids), wrong_envelope(ids), forged_callback_response(ids),
                    not_mine(ids), harmless(ids), actor_call())
    msgs = draw(st.lists(one, max_size=6))
    ending = draw(st.sampled_from(["hello", "hello", "closed", "eof", "random"]))
    case = Case(msgs, ending, splits=draw(st.lists(st.integers(1, 64), max_size=4)))
    if ending == "closed":
        case.tail, case.closing = draw(closer())
    elif ending == "eof":
        case.tail = draw(truncated())
    elif ending == "random":
        case.tail = draw(st.binary(min_size=1, max_size=600))
    return case


# -- running a case ----------------------------------------------------------------------------


def _split(data: bytes, sizes: list[int]) -> list[bytes]:
    out, i = [], 0
    for size in sizes:
        if i >= len(data):
            break
        out.append(data[i:i + size])
        i += size
    out.append(data[i:])
    return [c for c in out if c]


def run_case(path: Path, case: Case) -> None:
    """Send the case on a fresh connection and check every answer against the protocol."""
    data = b"".join(m.data for m in case.msgs) + case.tail
    errors = [m.error for m in case.msgs if m.error is not None]
    answers: collections.Counter[int] = collections.Counter()
    must_succeed: set[int] = set()
    for m in case.msgs:
        if m.answer is not None:
            answers[m.answer[0]] += 1
            if m.answer[1]:
                must_succeed.add(m.answer[0])
    with RawConnection(path, timeout=READ_S) as raw:
        try:
            for piece in _split(data, case.splits):
                raw.send(piece)
        except (BrokenPipeError, ConnectionResetError):
            assert case.ending in ("closed", "random"), "the daemon closed the connection early"
        got: list[Any] = []
        if case.ending == "hello":
            raw.send(_req(SENTINEL, "hello", {}))
            pending = collections.Counter(answers)
            seen_sentinel = False
            while not seen_sentinel or +pending:
                msg = raw.read(READ_S)
                got.append(msg)
                if type(msg) is list and len(msg) == 4 and msg[1] == SENTINEL:
                    seen_sentinel = True
                elif type(msg) is list and len(msg) == 4 and pending[msg[1]] > 0 and (
                        msg[2] is None or msg[1] not in must_succeed):
                    pending[msg[1]] -= 1
        else:
            if case.ending in ("eof", "random"):
                raw.shutdown_write()
            got = raw.read_until_closed(READ_S)

    for msg in got:
        assert type(msg) is list and len(msg) == 4 and msg[0] == wire.RESPONSE, msg
    expected = iter(errors)
    matched = 0
    left = collections.Counter(answers)
    closing_seen = False
    for msg in got:
        _, rid, error, result = msg
        if rid == SENTINEL and case.ending == "hello":
            assert error is None and result["pid"] > 0, msg
            continue
        if left[rid] > 0 and (error is None or rid not in must_succeed):
            # A control call's answer: whenever it is ready (even after a closing error).
            assert error is None or error[0] not in ("ActorCrashedError", "ActorStoppedError"), \
                msg
            left[rid] -= 1
            continue
        if closing_seen or (case.ending == "random" and matched == len(errors)):
            # After the closing error only id-less errors (the rest of the stream may break
            # the framing too); after random bytes anything well-formed.
            assert case.ending == "random" or (rid is None and error is not None), msg
            continue
        if matched < len(errors):
            want_id, want_type, needle = next(expected)
            matched += 1
            assert rid == want_id and error is not None and result is None, (msg, want_id)
            assert error[0] == want_type and needle in error[1], (msg, want_type, needle)
            continue
        if case.closing is not None and not closing_seen:
            closing_seen = True
            assert rid is None and error is not None, msg
            assert error[0] == case.closing[0] and case.closing[1] in error[1], (
                msg, case.closing)
            continue
        raise AssertionError(f"unexpected answer {msg!r:.300}")
    assert matched == len(errors), (
        f"{len(errors) - matched} expected error(s) missing: {got!r:.500}")
    if case.ending == "hello":
        assert not +left, f"unanswered calls {dict(+left)}"
    if case.closing is not None:
        assert closing_seen, f"no id-less {case.closing} before the connection closed"


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory: pytest.TempPathFactory) -> Any:
    d = DaemonProcess(tmp_path_factory.mktemp("fuzz")).start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def honest(fuzz_daemon: DaemonProcess) -> Any:
    clients = HonestClients(fuzz_daemon.runtime_dir, fuzz_daemon.pid,
                            extra_sources=("fz-pub",))
    yield clients
    clients.close()


class Watch:
    """After every example: the daemon is alive; every ``CHECK_EVERY``: honest clients
    are served and no actor restarted. Remembers the examples since the last check for the
    report. A failure is sticky (hypothesis replays the failing example: it fails again
    instead of looking flaky)."""

    def __init__(self, daemon: DaemonProcess, honest: HonestClients) -> None:
        self.daemon = daemon
        self.honest = honest
        self.n = 0
        self.recent: collections.deque[str] = collections.deque(maxlen=CHECK_EVERY + 1)
        self.restarts = self._restarts()
        self.failure: str | None = None

    def _restarts(self) -> dict[str, int]:
        status = self.honest.pub_client.status().get(READ_S)
        return {name: a["restarts"] for name, a in status["actors"].items()}

    def after(self, what: str, force: bool = False) -> None:
        if self.failure is not None:
            raise AssertionError(self.failure)
        self.n += 1
        self.recent.append(what)
        try:
            self._check(force)
        except Exception as exc:
            self.failure = f"{exc}; the examples since the last check: {list(self.recent)}"
            raise AssertionError(self.failure) from exc

    def _check(self, force: bool) -> None:
        proc = self.daemon.proc
        assert proc is not None and proc.poll() is None, (
            f"the daemon died (exit {proc.returncode if proc else '?'})")
        if force or self.n % CHECK_EVERY == 0:
            try:
                self.honest.check(f"example {self.n}")
            except Exception as exc:
                raise AssertionError(f"honest clients not served: {exc}") from exc
            restarts = self._restarts()
            changed = {a: (self.restarts[a], n) for a, n in restarts.items()
                       if n != self.restarts.get(a)}
            assert not changed, f"actors restarted (before, after): {changed}"
            self.recent.clear()


# -- the tests -----------------------------------------------------------------------------------


@pytest.mark.integration  # quick, but it checks the fuzzer's schema: it lives beside it
def test_schema_covers_the_wire_call_table() -> None:
    """The fuzzer's table is the wire's: every method, and templates that are valid."""
    assert set(SCHEMA) == set(wire.METHODS)
    for method in wire.METHODS:
        params = TEMPLATES.get(method, {})
        assert set(params) == set(SCHEMA[method]), method
        decode_params(method, params)  # raises if the template is not valid
    assert set(ACTOR_TABLE) == set(wire.ACTOR_NAMES)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_fuzzed_frames_get_errors_and_harm_nobody(fuzz_daemon: DaemonProcess,
                                                  honest: HonestClients) -> None:
    watch = Watch(fuzz_daemon, honest)
    labels: collections.Counter[str] = collections.Counter()
    t0 = time.monotonic()
    swept = 0
    for case in table_cases():  # first every field of every method, deterministically
        run_case(fuzz_daemon.socket, case)
        swept += len(case.msgs)
        watch.after(f"the sweep of {case.msgs[0].label}", force=True)

    @_settings(FRAME_EXAMPLES)
    @given(case=cases())
    def run(case: Case) -> None:
        for m in case.msgs:
            labels[m.label.split(" ")[0].split(".")[0].split("+")[0].split("(")[0]] += 1
        labels[f"ending:{case.ending}"] += 1
        try:
            run_case(fuzz_daemon.socket, case)
        except Exception as exc:
            raise AssertionError(f"{type(exc).__name__}: {exc}\n  case: {case.describe()}"
                                 ) from exc
        watch.after(case.describe())

    run()
    watch.after("the last example", force=True)
    elapsed = time.monotonic() - t0
    print(f"\nwire fuzz: {swept} swept messages, then {watch.n - 1 - len(METHOD_LIST)} "
          f"random connections, in {elapsed:.1f} s; {dict(labels)}")
    # Every ending and every kind of message was exercised.
    assert {f"ending:{e}" for e in ("hello", "closed", "eof", "random")} <= set(labels)
    assert {"kind", "length", "forged", "callback", "method"} <= set(labels), labels


def _deep_publish(rid: int, key: str, depth: int, priority: str) -> bytes:
    """A publish frame whose payload is ``depth`` nested arrays around 7, built by hand
    (deeper than msgpack's packer goes)."""
    pack = msgpack.packb
    body: bytes = (b"\x94" + pack(wire.REQUEST) + pack(rid) + pack("publish") + b"\x84"
            + pack("module_id") + pack("fz-pub") + pack("key") + pack(key)
            + pack("priority") + pack(priority) + pack("payload") + b"\x91" * depth + b"\x07")
    return wire.HEADER.pack(len(body)) + body


def _depth_and_leaf(value: Any) -> tuple[int, Any]:
    depth = 0
    while type(value) is list and len(value) == 1:
        value, depth = value[0], depth + 1
    return depth, value


def _same(a: Any, b: Any) -> bool:
    """Equal as msgpack values (NaN equals NaN; lists and maps compare by encoding)."""
    return bool(msgpack.packb(a, use_bin_type=True) == msgpack.packb(b, use_bin_type=True))


def _decodable(depth: int) -> bool:
    try:
        wire.decode_body(_deep_publish(1, "k", depth, "low")[4:])
    except Exception:
        return False
    return True


MAX_DECODABLE = max(d for d in range(900, 1100) if _decodable(d))  # about 1020 levels
LIMIT_FREE_DEPTH = 16  # payloads at most this deep must be accepted, whatever the limits
PAYLOADS = st.one_of(
    ANY.map(lambda v: ("value", v)),
    st.builds(nested, st.integers(1, LIMIT_FREE_DEPTH), LEAF, st.booleans()).map(
        lambda v: ("value", v)),
    st.integers(10_000, 300_000).map(lambda n: ("value", {"blob": b"\xab" * n, "n": n})),
    # Up to where msgpack's decoder gives up (deeper frames are undecodable, which closes
    # the connection: the frames test has those): the last levels decode at publish but
    # leave no room for the batch's envelope.
    st.one_of(st.integers(LIMIT_FREE_DEPTH + 1, 64), st.integers(400, MAX_DECODABLE),
              st.integers(MAX_DECODABLE - 8, MAX_DECODABLE)).map(lambda d: ("deep", d)),
)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_fuzzed_payloads_accepted_are_delivered(fuzz_daemon: DaemonProcess,
                                                honest: HonestClients) -> None:
    watch = Watch(fuzz_daemon, honest)
    raw = RawConnection(fuzz_daemon.socket, timeout=READ_S)
    error, _ = raw.call(1, "register", {"module_id": "fz-pub", "name": "fuzz publisher",
                                        "supported_modes": [], "subscribe": []})
    assert error is None, error
    accepted: dict[str, tuple[int, str, Any]] = {}
    refused: list[tuple[str, Any, Any]] = []
    counter = itertools.count(2)

    @_settings(PAYLOAD_EXAMPLES)
    @given(payload=PAYLOADS, priority=st.sampled_from(PRIORITIES))
    def run(payload: tuple[str, Any], priority: str) -> None:
        rid = next(counter)
        key = f"p-{rid}"
        how, value = payload
        if how == "deep":
            raw.send(_deep_publish(rid, key, value, priority))
            error, seq = _answer_for(raw, rid)
        else:
            error, seq = raw.call(rid, "publish", {"module_id": "fz-pub", "key": key,
                                                   "payload": value, "priority": priority})
        if error is None:
            assert type(seq) is int, seq
            accepted[key] = (seq, how, value)
        else:
            assert error[0] == "InvalidMessageError", (key, how, error)
            assert how == "deep" and value > LIMIT_FREE_DEPTH, (
                f"a payload within every limit was refused: {error} ({value!r:.200})")
            refused.append((key, value, error))
        watch.after(f"{how} {value!r:.100}")

    try:
        run()
        watch.after("the last payload", force=True)

        def all_delivered(_: Any) -> bool:
            return set(accepted) <= set(honest.sub.by_key("fz-pub"))

        try:
            honest.sub.wait(all_delivered, 30, "every accepted payload")
        except AssertionError:
            missing = sorted(set(accepted) - set(honest.sub.by_key("fz-pub")))
            kinds = collections.Counter(
                f"{accepted[k][1]}:{accepted[k][2] if accepted[k][1] == 'deep' else '-'}"
                for k in missing)
            raise AssertionError(f"{len(missing)} of {len(accepted)} accepted payloads never "
                                 f"delivered; by kind: {dict(kinds)}") from None
        delivered = honest.sub.by_key("fz-pub")
        for key, (seq, how, value) in accepted.items():
            update = delivered[key]
            assert update.seq == seq, (key, update.seq, seq)
            if how == "deep":
                assert _depth_and_leaf(update.payload) == (value, 7), key
            else:
                assert _same(update.payload, value), (key, f"{value!r:.200}",
                                                      f"{update.payload!r:.200}")
        print(f"\npayload fuzz: {len(accepted)} accepted and delivered, {len(refused)} "
              f"refused ({sorted({v for _, v, _ in refused})[:10]} levels...)")
    finally:
        raw.close()


def _answer_for(raw: RawConnection, rid: int) -> tuple[Any, Any]:
    """The response to ``rid`` among what was already read (by an intervening call) or
    what comes next."""
    for i, msg in enumerate(raw.other):
        if type(msg) is list and len(msg) == 4 and msg[0] == wire.RESPONSE and msg[1] == rid:
            del raw.other[i]
            return msg[2], msg[3]
    while True:
        msg = raw.read(READ_S)
        if type(msg) is list and len(msg) == 4 and msg[0] == wire.RESPONSE and msg[1] == rid:
            return msg[2], msg[3]
        raw.other.append(msg)


FINAL_ERRORS = st.one_of(st.none(), st.none(), st.text(min_size=1, max_size=30),
                         st.tuples(st.text(max_size=10), st.text(max_size=20)).map(list))


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_forged_callback_responses_harm_nobody(fuzz_daemon: DaemonProcess,
                                               honest: HonestClients) -> None:
    watch = Watch(fuzz_daemon, honest)
    raw = RawConnection(fuzz_daemon.socket, timeout=READ_S)
    error, _ = raw.call(1, "register", {"module_id": "fz-cb", "name": "fuzz callbacks",
                                        "supported_modes": list(MODES), "subscribe": []})
    assert error is None, error
    n = itertools.count()

    @_settings(CALLBACK_EXAMPLES)
    @given(forged=st.lists(st.tuples(st.sampled_from(["other id", "bad error"]), VALUE,
                                     VALUE, st.integers(1, 1000)), max_size=4),
           final_error=FINAL_ERRORS, final_result=ANY)
    def run(forged: list[tuple[str, Any, Any, int]], final_error: Any, final_result: Any
            ) -> None:
        context = {"fuzz": next(n)}
        future = honest.pub_client.coordinate("HYBRID", context)
        while True:  # the daemon's callback request to fz-cb
            msg = raw.other.pop(0) if raw.other else raw.read(READ_S)
            if type(msg) is list and msg[0] == wire.CALLBACK:
                break
        _, cid, method, params = msg
        assert method == "on_mode_change" and params["module_id"] == "fz-cb", msg
        assert params["context"] == context, msg
        expect_errors = 0
        for how, error, result, offset in forged:
            if how == "other id":
                raw.send(frame([wire.CALLBACK_RESPONSE, cid + offset, None, result]))
            else:
                if error is None or type(error) in (str, list):
                    error = 12345
                raw.send(frame([wire.CALLBACK_RESPONSE, cid, error, result]))
                expect_errors += 1
        raw.send(frame([wire.CALLBACK_RESPONSE, cid, final_error, final_result]))
        for _ in range(expect_errors):  # each wrong error field is answered, in order
            msg = raw.read(READ_S)
            while type(msg) is list and msg and msg[0] == wire.EVENT:  # not for us to judge
                msg = raw.read(READ_S)
            assert msg[:2] == [wire.RESPONSE, cid] and msg[2][0] == "InvalidMessageError", msg
        outcome = future.get(READ_S)
        assert "honest-pub" in outcome.results and "honest-sub" in outcome.results, outcome
        if final_error is None:
            assert "fz-cb" not in outcome.errors, outcome.errors
            assert _same(outcome.results["fz-cb"], final_result), (outcome.results, final_result)
        else:
            assert "fz-cb" not in outcome.results and "fz-cb" in outcome.errors, outcome
            text = final_error if type(final_error) is str else ": ".join(map(str, final_error))
            assert text in outcome.errors["fz-cb"], (outcome.errors, final_error)
        watch.after(f"forged {len(forged)}, final {final_error!r:.40} {final_result!r:.60}")

    try:
        run()
        watch.after("the last callback", force=True)
    finally:
        raw.close()


@pytest.mark.integration
def test_actor_calls_with_wrong_argument_types_are_refused(fuzz_daemon: DaemonProcess,
                                                           honest: HonestClients) -> None:
    """Found by the wire fuzz: the coordinator's actor-call table passes arguments on
    unchecked. With an update pending in the debouncer, ``debouncer.cancel`` with a map as
    ``module_id`` crashes the debouncer (``ActorCrashedError``, unhashable type); six such
    requests within 30 s exceed the restart intensity and the daemon stops. Wrong types
    must get an ``InvalidMessageError`` naming the argument, and crash nothing."""
    before = {n: a["restarts"] for n, a in
              honest.pub_client.status().get(READ_S)["actors"].items()}
    calls: list[tuple[str, str, Any, str]] = [
        ("debouncer", "cancel", {"module_id": {}, "key": "k"}, "module_id"),
        ("debouncer", "cancel", {"module_id": "honest-pub", "key": ["k"]}, "key"),
        ("debouncer", "flush", {"module_id": [1], "key": {"a": 1}}, "module_id"),
        ("cache", "shrink", ["abc"], "fraction"),
    ]
    answers = []
    with RawConnection(fuzz_daemon.socket) as raw:
        for rid, (actor, method, args, _) in enumerate(calls, start=1):
            # An update pending in the debouncer (300 ms in HYBRID) while the call runs.
            honest.pub_client.publish("honest-pub", "pending", rid).get(READ_S)
            answers.append(raw.call(rid, "actor", {"actor": actor, "method": method,
                                                   "args": args})[0])
    after = {n: a["restarts"] for n, a in
             honest.pub_client.status().get(READ_S)["actors"].items()}
    assert fuzz_daemon.proc is not None and fuzz_daemon.proc.poll() is None
    honest.check("wrong actor arguments")
    for (actor, method, args, name), error in zip(calls, answers, strict=True):
        assert error is not None and error[0] == "InvalidMessageError", (actor, method, args,
                                                                         error)
        assert name in error[1], (actor, method, error)
    assert after == before, f"actors restarted: {before} -> {after}"
