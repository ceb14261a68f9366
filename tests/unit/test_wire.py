"""The wire protocol: framing, envelopes, params validation, error mapping."""

from __future__ import annotations

import random
import struct
from typing import Any

import msgpack
import pytest

from modcoord.actors.errors import (
    ActorCrashedError,
    CallTimeoutError,
    InvalidMessageError,
    QueueFullError,
    RemoteError,
)
from modcoord.actors.modes import MODES
from modcoord.supervisor.protocol.calls import (
    ACTOR_CALLS,
    ACTOR_NAMES,
    CALLS,
    METHODS,
    PROTOCOL_VERSION,
    ActorParams,
    CoordinateParams,
    PublishParams,
    RegisterParams,
    decode_params,
    publish_item,
)
from modcoord.supervisor.protocol.errors import FramingError, error_from_wire, error_to_wire
from modcoord.supervisor.protocol.framing import (
    CALLBACK_RESPONSE,
    REQUEST,
    BadFrame,
    FrameDecoder,
    encode_acks,
    encode_frame,
    encode_frames,
    request_id_of,
    split_inbound,
)
from modcoord.supervisor.protocol.module import ModuleInfo

# -- framing ---------------------------------------------------------------------------------


def test_encode_frame_is_length_prefixed_msgpack() -> None:
    msg = [0, 7, "publish", {"module_id": "m", "key": "k", "payload": b"\x00\x01"}]
    frame = encode_frame(msg)
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    assert msgpack.unpackb(frame[4:], raw=False) == msg


def test_decoder_roundtrip_of_several_frames_in_one_feed() -> None:
    msgs = [[0, i, "status", {"n": i, "blob": b"x" * i}] for i in range(5)]
    decoder = FrameDecoder()
    assert list(decoder.feed(encode_frames(msgs))) == msgs
    assert decoder.buffered == 0


def test_decoder_handles_frames_split_at_every_byte() -> None:
    msgs = [[1, 1, None, {"a": [1, 2, 3]}], [2, "batch", {"updates": []}], "text", 42]
    data = b"".join(encode_frame(m) for m in msgs)
    decoder = FrameDecoder()
    out: list[Any] = []
    for i in range(len(data)):
        out.extend(decoder.feed(data[i:i + 1]))
    assert out == msgs
    assert decoder.buffered == 0


def test_decoder_keeps_partial_frame_until_complete() -> None:
    frame = encode_frame({"k": "v" * 100})
    decoder = FrameDecoder()
    assert list(decoder.feed(frame[:3])) == []
    assert list(decoder.feed(frame[3:50])) == []
    assert decoder.buffered == 50
    assert list(decoder.feed(frame[50:])) == [{"k": "v" * 100}]


def test_decoder_gives_back_its_buffer_only_between_frames() -> None:
    big = [0, 1, "publish", {"blob": b"x" * 300_000}]
    frame = encode_frame({"k": "v" * 100})
    decoder = FrameDecoder()
    assert list(decoder.feed(encode_frame(big))) == [big]
    assert list(decoder.feed(frame[:20])) == []
    assert decoder.release_buffer() is False  # mid-frame: what is pending stays
    assert decoder.buffered == 20
    assert list(decoder.feed(frame[20:])) == [{"k": "v" * 100}]
    assert decoder.release_buffer() is True
    assert decoder.frames == 2  # the count goes on
    assert list(decoder.feed(encode_frames([big, "after"]))) == [big, "after"]
    broken = FrameDecoder(max_frame_bytes=10)
    with pytest.raises(FramingError):
        list(broken.feed(struct.pack(">I", 11)))
    assert broken.release_buffer() is False  # a broken decoder stays broken
    with pytest.raises(FramingError):
        list(broken.feed(frame))


def test_decoder_oversize_frame_raises_after_yielding_earlier_frames() -> None:
    decoder = FrameDecoder(max_frame_bytes=100)
    good = encode_frame([0, 1, "status", {}])
    oversize_header = struct.pack(">I", 101)
    it = decoder.feed(good + oversize_header + b"x" * 10)
    assert next(it) == [0, 1, "status", {}]
    with pytest.raises(FramingError, match="101 bytes exceeds the maximum of 100"):
        next(it)


def test_decoder_accepts_frame_of_exactly_max_size() -> None:
    body = msgpack.packb("a" * 95)
    decoder = FrameDecoder(max_frame_bytes=len(body))
    assert list(decoder.feed(struct.pack(">I", len(body)) + body)) == ["a" * 95]


def test_decoder_undecodable_body_yields_badframe_and_stays_in_sync() -> None:
    garbage = b"\xc1\xc1\xc1"  # 0xc1 is never used in msgpack
    data = struct.pack(">I", len(garbage)) + garbage + encode_frame(["ok"])
    out = list(FrameDecoder().feed(data))
    assert isinstance(out[0], BadFrame)
    assert out[0].size == 3
    assert out[1] == ["ok"]


def test_decoder_truncated_body_in_frame_is_badframe() -> None:
    body = msgpack.packb([1, 2, 3])[:-1]  # array header promises 3 items, 2 present
    out = list(FrameDecoder().feed(struct.pack(">I", len(body)) + body))
    assert len(out) == 1 and isinstance(out[0], BadFrame)


def test_decoder_never_unpickles_ext_types() -> None:
    body = msgpack.packb(msgpack.ExtType(42, b"cos\nsystem\n"))
    (msg,) = FrameDecoder().feed(struct.pack(">I", len(body)) + body)
    assert msg == msgpack.ExtType(42, b"cos\nsystem\n")


def test_decoder_rejects_nonpositive_limit() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(0)


def test_decoder_takes_memoryviews_and_keeps_no_reference_to_them() -> None:
    frames = encode_frames([["first", 1], {"second": [2] * 50}])
    buf = bytearray(frames)
    view = memoryview(buf)
    decoder = FrameDecoder()
    cut = len(frames) - 20  # inside the second frame
    assert list(decoder.feed(view[:cut])) == [["first", 1]]
    saved = bytes(buf)
    buf[:] = b"\xc1" * len(buf)  # the caller reuses its buffer
    assert list(decoder.feed(memoryview(saved)[cut:])) == [{"second": [2] * 50}]
    assert decoder.buffered == 0


def test_decoder_after_framing_error_stays_broken() -> None:
    decoder = FrameDecoder(max_frame_bytes=100)
    with pytest.raises(FramingError):
        list(decoder.feed(struct.pack(">I", 500)))
    with pytest.raises(FramingError, match="500 bytes"):
        list(decoder.feed(encode_frame(["fine"])))


def test_decoder_body_holding_two_messages_is_badframe() -> None:
    body = msgpack.packb([1]) + msgpack.packb([2])
    data = struct.pack(">I", len(body)) + body + encode_frame("next")
    out = list(FrameDecoder().feed(data))
    assert isinstance(out[0], BadFrame) and "ExtraData" in out[0].error
    assert out[0].size == len(body)
    assert out[1] == "next"


def test_decoder_small_frame_cannot_claim_a_huge_container() -> None:
    body = b"\xdd\x7f\xff\xff\xff"  # array32 header claiming 2**31 - 1 items, no items
    data = struct.pack(">I", len(body)) + body + encode_frame("after")
    out = list(FrameDecoder().feed(data))
    assert isinstance(out[0], BadFrame)
    assert out[1] == "after"


def test_decoder_frames_above_the_stream_limit_decode_on_their_own() -> None:
    big = {"blob": b"z" * (3 << 20 >> 1), "n": 7}  # a 1.5 MiB frame
    decoder = FrameDecoder(max_frame_bytes=4 << 20)
    data = encode_frames([["small"], big, ["small again"]])
    out: list[Any] = []
    for i in range(0, len(data), 256 << 10):
        out.extend(decoder.feed(data[i:i + (256 << 10)]))
    assert out == [["small"], big, ["small again"]]
    assert decoder.buffered == 0


def _reference_decode(data: bytes, max_frame: int) -> tuple[list[Any], bool]:
    """Frame-by-frame decoding with ``msgpack.unpackb`` (bad bodies as ("bad", size))."""
    out: list[Any] = []
    pos = 0
    while len(data) - pos >= 4:
        (length,) = struct.unpack_from(">I", data, pos)
        if length > max_frame:
            return out, True
        if len(data) - pos - 4 < length:
            break
        body = data[pos + 4:pos + 4 + length]
        try:
            out.append(msgpack.unpackb(body, raw=False, strict_map_key=False))
        except Exception:
            out.append(("bad", length))
        pos += 4 + length
    return out, False


@pytest.mark.parametrize("seed", range(4))
def test_decoder_agrees_with_frame_by_frame_decoding(seed: int) -> None:
    rng = random.Random(seed)

    def body() -> bytes:
        kind = rng.choice(["good"] * 6 + ["garbage", "truncated", "extra", "empty", "utf8"])
        if kind == "good":
            return bytes(msgpack.packb([0, rng.randrange(1 << 40), "k" * rng.randrange(9),
                                        {"p": list(range(rng.randrange(5))), "b": b"\x00" * 3}]))
        if kind == "garbage":
            return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
        if kind == "truncated":
            return bytes(msgpack.packb([1, 2, "abc", [4, 5]]))[:-rng.randrange(1, 4)]
        if kind == "extra":
            return bytes(msgpack.packb({"a": 1})) + b"\x01"
        if kind == "empty":
            return b""
        return b"\xa2\xff\xfe"  # a str that is not UTF-8

    for _ in range(150):
        data = b"".join(struct.pack(">I", len(b)) + b
                        for b in (body() for _ in range(rng.randrange(1, 15))))
        if rng.random() < 0.1:
            data += struct.pack(">I", 1000) + b"x"
        expected, broken = _reference_decode(data, 999)
        decoder = FrameDecoder(max_frame_bytes=999)
        got: list[Any] = []
        raised = False
        pos = 0
        try:
            while pos < len(data):
                step = rng.choice([1, 3, 17, 64, len(data)])
                got.extend(("bad", m.size) if isinstance(m, BadFrame) else m
                           for m in decoder.feed(data[pos:pos + step]))
                pos += step
        except FramingError:
            raised = True
        assert (got, raised) == (expected, broken)


def test_encode_acks_are_response_frames() -> None:
    ids = [0, 1, 127, 128, 70000, 2**40, 2**64 - 1]
    seqs = [5, 2**33, 0, 1, 9, 12, 3]
    data = encode_acks(ids, seqs)
    decoded = list(FrameDecoder().feed(data))
    assert decoded == [[1, rid, None, seq] for rid, seq in zip(ids, seqs, strict=True)]
    assert encode_acks([], []) == b""


@pytest.mark.parametrize("ids, values, error", [
    ([1, 2], [3], ValueError),
    ([1], [QueueFullError("full")], struct.error),
    ([-1], [3], struct.error),
    ([1], [2**64], struct.error),
    ([1], [1.5], struct.error),
])
def test_encode_acks_refuses_what_is_not_a_plain_ack(ids: list[Any], values: list[Any],
                                                     error: type[Exception]) -> None:
    with pytest.raises(error):
        encode_acks(ids, values)


# -- envelopes -------------------------------------------------------------------------------


def test_split_inbound_request_and_callback_response() -> None:
    assert split_inbound([0, 3, "status", {}]) == (REQUEST, 3, "status", {})
    assert split_inbound([4, 9, None, {"x": 1}]) == (CALLBACK_RESPONSE, 9, None, {"x": 1})
    assert split_inbound([4, 9, "ValueError: no", None])[2] == "ValueError: no"


@pytest.mark.parametrize(
    ("msg", "fragment", "rid"),
    [
        ({"a": 1}, "must be an array", None),
        ("hello", "must be an array", None),
        ([0, 1, "status"], "4 elements", 1),
        ([0, "1", "status", {}], "id must be an integer", None),
        ([0, True, "status", {}], "id must be an integer", None),
        ([0, 1, 5, {}], "method must be a string", 1),
        ([0, 1, "status", [1]], "params must be a map", 1),
        ([1, 1, None, None], "kind must be", 1),
        ([7, 1, "x", {}], "kind must be", 1),
        ([False, 1, "status", {}], "kind must be", 1),
        ([0.0, 1, "status", {}], "kind must be", 1),
        ([4, 2, 5, None], "callback response error", 2),
        (BadFrame("boom", 3), "undecodable frame", None),
    ],
)
def test_split_inbound_rejects_malformed_envelopes(msg: Any, fragment: str,
                                                   rid: int | None) -> None:
    with pytest.raises(InvalidMessageError, match=fragment):
        split_inbound(msg)
    assert request_id_of(msg) == rid


# -- params (the call table) ----------------------------------------------------------------


def _names(text: str, field: str) -> bool:
    """Whether an error message names ``field`` (quoted 'so', or as msgspec's `$.path`)."""
    bare = field.strip("'")
    return (field in text or f"`$.{bare}`" in text or f"`{bare}`" in text
            or f"'{bare}'" in text)


def test_publish_good_and_default_priority() -> None:
    def item(params: dict[str, Any]) -> tuple[str, str, Any, str]:
        decoded = decode_params("publish", params)
        assert isinstance(decoded, PublishParams)
        assert publish_item(params) == decoded.item()  # the fast path agrees
        return decoded.item()

    assert item({"module_id": "m", "key": "k", "payload": None}) == ("m", "k", None, "medium")
    assert item({"module_id": "m", "key": "k", "payload": [1], "priority": "critical"}
                ) == ("m", "k", [1], "critical")
    assert item({"module_id": "m", "key": "k" * 1024, "payload": 1})[1] == "k" * 1024


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"key": "k", "payload": 1}, "'module_id'"),
        ({"module_id": "m", "payload": 1}, "'key'"),
        ({"module_id": "m", "key": "k"}, "'payload'"),
        ({"module_id": 5, "key": "k", "payload": 1}, "'module_id'"),
        ({"module_id": "", "key": "k", "payload": 1}, "'module_id'"),
        ({"module_id": "m", "key": "", "payload": 1}, "'key'"),
        ({"module_id": "m", "key": "k" * 1025, "payload": 1}, "'key'"),
        ({"module_id": "m", "key": ["k"], "payload": 1}, "'key'"),
        ({"module_id": "m", "key": "k", "payload": 1, "priority": "urgent"}, "'priority'"),
        ({"module_id": "m", "key": "k", "payload": 1, "priority": ["high"]}, "'priority'"),
        ({"module_id": "m", "key": "k", "payload": 1, "extra": 1}, "'extra'"),
        ({"module_id": "m", "key": "k", "payload": 1, "priority": "low", "x": 0}, "'x'"),
    ],
)
def test_publish_names_the_bad_field(params: dict[str, Any], field: str) -> None:
    assert publish_item(params) is None  # the fast path refuses what the struct refuses
    with pytest.raises(InvalidMessageError) as info:
        decode_params("publish", params)
    assert _names(str(info.value), field), str(info.value)
    assert str(info.value).startswith("publish:")


def test_coordinate_normalizes_mode_and_context() -> None:
    def pair(params: dict[str, Any]) -> tuple[str, Any]:
        decoded = decode_params("coordinate", params)
        assert isinstance(decoded, CoordinateParams)
        return decoded.mode, decoded.context

    assert pair({"mode": "hybrid"}) == ("HYBRID", {})
    assert pair({"mode": "Fully-Auto", "context": {"u": 7}}) == ("FULLY_AUTO", {"u": 7})
    assert pair({"mode": "MANUAL", "context": None}) == ("MANUAL", {})


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "'mode'"),
        ({"mode": 3}, "'mode'"),
        ({"mode": "TURBO"}, "'mode'"),
        ({"mode": "HYBRID", "context": [1]}, "'context'"),
        ({"mode": "HYBRID", "ctx": {}}, "'ctx'"),
        ({"mode": "HYBRID", "context": {}, "ctx": {}}, "'ctx'"),
    ],
)
def test_coordinate_names_the_bad_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidMessageError) as info:
        decode_params("coordinate", params)
    assert _names(str(info.value), field), str(info.value)


GOOD: list[tuple[str, dict[str, Any], Any]] = [
    ("hello", {}, {"client": "", "pid": 0, "protocol": 0}),
    ("hello", {"client": "editor", "pid": 42},
     {"client": "editor", "pid": 42, "protocol": 0}),
    ("hello", {"client": "editor", "protocol": PROTOCOL_VERSION},
     {"client": "editor", "pid": 0, "protocol": PROTOCOL_VERSION}),
    ("unregister", {"module_id": "m"}, {"module_id": "m"}),
    ("publish", {"module_id": "m", "key": "k", "payload": 1},
     {"module_id": "m", "key": "k", "payload": 1, "priority": "medium"}),
    ("coordinate", {"mode": "manual"}, {"mode": "MANUAL", "context": {}}),
    ("set_mode", {"mode": "fully_auto"}, {"mode": "FULLY_AUTO"}),
    ("status", {}, {}),
    ("insights", {}, {}),
    ("history", {}, {"metrics": None, "since_s": 3600.0}),
    ("history", {"metrics": ["modules"], "since_s": 60},
     {"metrics": ["modules"], "since_s": 60.0}),
    ("dashboard", {}, {}),
    ("optimize", {}, {}),
    ("reload", {}, {}),
    ("config", {}, {}),
    ("metrics", {}, {}),
    ("stop", {}, {}),
    ("crash", {"actor": "cache"}, {"actor": "cache", "kind": "exception", "kill": False}),
    ("crash", {"actor": "batcher", "kind": "base_exception"},
     {"actor": "batcher", "kind": "base_exception", "kill": False}),
    ("crash", {"actor": "batcher", "kill": True},
     {"actor": "batcher", "kind": "exception", "kill": True}),
    ("actor", {"actor": "cache", "method": "statistics"}, {}),
    ("actor", {"actor": "debouncer", "method": "flush", "args": ["m"],
               "kwargs": {"key": "k"}}, {"module_id": "m", "key": "k"}),
    ("actor", {"actor": "debouncer", "method": "flush"}, {"module_id": None, "key": None}),
    ("actor", {"actor": "cache", "method": "shrink", "args": {"fraction": 0.5}},
     {"fraction": 0.5}),
    ("actor", {"actor": "cache", "method": "shrink", "args": [1]}, {"fraction": 1.0}),
]


@pytest.mark.parametrize(("method", "params", "expected"), GOOD)
def test_decode_params_good(method: str, params: dict[str, Any], expected: Any) -> None:
    decoded = decode_params(method, params)
    assert isinstance(decoded, CALLS[method].params)
    if isinstance(decoded, ActorParams):  # the bound arguments of the actor method
        assert decoded.keywords() == expected
    else:
        assert decoded.to_wire() == expected


def test_decode_params_register_builds_module_info() -> None:
    decoded = decode_params("register", {
        "module_id": "editor", "name": "Editor", "supported_modes": ["MANUAL", "HYBRID"],
        "subscribe": ["*"], "has_metrics": True})
    assert isinstance(decoded, RegisterParams)
    assert decoded.info() == ModuleInfo("editor", "Editor", frozenset({"MANUAL", "HYBRID"}),
                                        ("*",), True)
    defaults = decode_params("register", {"module_id": "m", "subscribe": "src"})
    assert isinstance(defaults, RegisterParams)
    assert defaults.info() == ModuleInfo("m", "m", frozenset(MODES), ("src",), False)


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("hello", {"client": 5}, "'client'"),
    ("hello", {"pid": "1"}, "'pid'"),
    ("hello", {"version": 1}, "'version'"),
    ("hello", {"protocol": "1"}, "'protocol'"),
    ("register", {}, "'module_id'"),
    ("register", {"module_id": 7}, "module_id"),
    ("register", {"module_id": "m" * 201}, "module_id"),
    ("register", {"module_id": "m", "supported_modes": ["TURBO"]}, "supported_modes"),
    ("register", {"module_id": "m", "supported_modes": "MANUAL"}, "supported_modes"),
    ("register", {"module_id": "m", "subscribe": [1]}, "subscribe"),
    ("register", {"module_id": "m", "name": 3}, "name"),
    ("register", {"module_id": "m", "has_metrics": "yes"}, "'has_metrics'"),
    ("register", {"module_id": "m", "colour": "red"}, "'colour'"),
    ("unregister", {}, "'module_id'"),
    ("unregister", {"module_id": ""}, "'module_id'"),
    ("unregister", {"module_id": "m", "x": 1}, "'x'"),
    ("publish", {"module_id": "m", "key": "k"}, "'payload'"),
    ("coordinate", {"mode": None}, "'mode'"),
    ("set_mode", {}, "'mode'"),
    ("set_mode", {"mode": "FAST"}, "'mode'"),
    ("status", {"verbose": True}, "'verbose'"),
    ("insights", {"x": 1}, "'x'"),
    ("history", {"since_s": 0}, "since_s"),
    ("history", {"metrics": "modules"}, "metrics"),
    ("optimize", {"x": 1}, "'x'"),
    ("dashboard", {"x": 1}, "'x'"),
    ("reload", {"x": 1}, "'x'"),
    ("config", {"x": 1}, "'x'"),
    ("metrics", {"x": 1}, "'x'"),
    ("stop", {"x": 1}, "'x'"),
    ("crash", {}, "'actor'"),
    ("crash", {"actor": "supervisor"}, "'actor'"),
    ("crash", {"actor": "cache", "kind": "segfault"}, "'kind'"),
    ("actor", {"method": "statistics"}, "'actor'"),
    ("actor", {"actor": "cache"}, "'method'"),
    ("actor", {"actor": "nope", "method": "statistics"}, "'actor'"),
    ("actor", {"actor": "cache", "method": "_private"}, "'method'"),
    ("actor", {"actor": "cache", "method": 5}, "'method'"),
    ("actor", {"actor": "cache", "method": "nope"}, "no method 'nope'"),
    ("actor", {"actor": "cache", "method": "shrink", "args": "0.5"}, "'args'"),
    ("actor", {"actor": "cache", "method": "shrink", "kwargs": [1]}, "'kwargs'"),
    ("actor", {"actor": "cache", "method": "shrink", "kwargs": {"not an id": 1}},
     "keyword argument"),
    ("actor", {"actor": "cache", "method": "shrink", "args": {1: 0.5}}, "keyword argument"),
    ("actor", {"actor": "cache", "method": "shrink", "kwargs": {"size": 1}}, "'size'"),
    ("actor", {"actor": "cache", "method": "shrink", "args": [2]}, "'fraction'"),
    ("actor", {"actor": "cache", "method": "shrink", "args": [True]}, "'fraction'"),
    ("actor", {"actor": "cache", "method": "shrink", "args": [0.1, 0.2]}, "positional"),
    ("actor", {"actor": "cache", "method": "shrink", "args": [0.1],
               "kwargs": {"fraction": 0.2}}, "given twice"),
    ("actor", {"actor": "debouncer", "method": "cancel", "args": [{}, "k"]}, "'module_id'"),
    ("actor", {"actor": "cache", "method": "statistics", "extra": 1}, "'extra'"),
]


@pytest.mark.parametrize(("method", "params", "field"), BAD)
def test_decode_params_bad_names_the_field(method: str, params: dict[str, Any],
                                           field: str) -> None:
    with pytest.raises(InvalidMessageError) as info:
        decode_params(method, params)
    text = str(info.value)
    assert _names(text, field), text
    assert text.startswith(f"{method}:")


def test_every_method_has_good_and_bad_cases() -> None:
    good = {m for m, _, _ in GOOD} | {"register"}
    bad = {m for m, _, _ in BAD}
    assert good == set(METHODS)
    assert bad == set(METHODS)


def test_decode_params_unknown_method_and_non_map_params() -> None:
    with pytest.raises(InvalidMessageError, match="unknown method 'explode'"):
        decode_params("explode", {})
    with pytest.raises(InvalidMessageError, match="params must be a map"):
        decode_params("status", [])


def test_every_actor_method_is_declared_once_and_statistics_everywhere() -> None:
    assert ACTOR_NAMES == ("debouncer", "cache", "batcher", "memory", "monitor")
    for actor, methods in ACTOR_CALLS.items():
        assert "statistics" in methods
        for name, decl in methods.items():
            assert (decl.actor, decl.name) == (actor, name)


# -- errors ----------------------------------------------------------------------------------


def test_error_to_wire_keeps_modcoord_types_and_hides_others() -> None:
    assert error_to_wire(QueueFullError("full")) == ["QueueFullError", "full"]
    assert error_to_wire(ActorCrashedError("cache", "boom")) == [
        "ActorCrashedError", "cache: boom"]
    assert error_to_wire(KeyError("x")) == ["InternalError", "KeyError: 'x'"]


def test_error_from_wire_rebuilds_known_types() -> None:
    err = error_from_wire(["InvalidMessageError", "publish: 'key' bad"])
    assert type(err) is InvalidMessageError and str(err) == "publish: 'key' bad"
    assert type(error_from_wire(["QueueFullError", "full"])) is QueueFullError
    assert type(error_from_wire(["CallTimeoutError", "slow"])) is CallTimeoutError
    assert type(error_from_wire(["FramingError", "big"])) is FramingError
    crashed = error_from_wire(error_to_wire(ActorCrashedError("cache", "boom")))
    assert type(crashed) is ActorCrashedError
    assert crashed.actor == "cache" and str(crashed) == "cache: boom"


def test_error_from_wire_unknown_types_are_remote_errors() -> None:
    err = error_from_wire(["InternalError", "KeyError: 'x'"])
    assert isinstance(err, RemoteError)
    assert err.remote_type == "InternalError" and err.remote_message == "KeyError: 'x'"
    assert isinstance(error_from_wire("plain text"), RemoteError)
    odd = error_from_wire(["ConfigError", "daemon.yaml: socket: bad"])
    assert isinstance(odd, RemoteError) and odd.remote_type == "ConfigError"
