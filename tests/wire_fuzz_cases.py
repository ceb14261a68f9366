"""The cases of the wire fuzzing (``integration/test_wire_fuzz.py``): what each field of
the wire's call table takes and the wrong values for it, the hypothesis strategies that
make wrong messages with the answer each must get, and running one case against a
daemon's socket (its answers checked in order, the connection's fate at the end)."""

from __future__ import annotations

import collections
import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import strategies as st
from wire_raw import RawConnection, frame

from modcoord.actors.update import PRIORITIES
from modcoord.supervisor.daemon.config import MODES
from modcoord.supervisor.protocol import wire
from modcoord.supervisor.protocol.calls import (
    HISTORY_MAX_METRICS,
    HISTORY_MAX_SINCE_S,
    PROTOCOL_VERSION,
)

SENTINEL = 0x5E_5E_5E_5E  # the id of the closing hello (never drawn as a fuzz id)
READ_S = 10.0  # the longest wait for one answer (a loaded machine)


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
