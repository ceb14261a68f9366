"""Actor processes, the pure parts: the ledger, the heartbeat's verdict, the frames, and
the config keys that place actors (the processes themselves:
tests/integration/test_actor_processes.py)."""

from __future__ import annotations

import pickle
from pathlib import Path

import msgpack
import pytest

from modcoord.actors import MockClock
from modcoord.actors.batcher import BatcherHandover
from modcoord.actors.debouncer_reports import DebouncerHandover, PendingEntry
from modcoord.actors.errors import (
    ActorCrashedError,
    ActorStoppedError,
    ConfigError,
    QueueFullError,
)
from modcoord.actors.payload import to_wire, with_values
from modcoord.actors.update import Batch, Update
from modcoord.supervisor.daemon.config import (
    SupervisionSettings,
    default_config_dir,
    load_config_dir,
)
from modcoord.supervisor.processes.child import decode_tell, encode_relayed_tell, encode_tell
from modcoord.supervisor.processes.codec import (
    DeliveryFrames,
    PayloadNotEncodable,
    decode_batch,
    decode_error,
    encode_batch,
    encode_error,
    pack,
    pickled,
    unpack,
    unpickled,
)
from modcoord.supervisor.processes.heartbeat import Heartbeat
from modcoord.supervisor.processes.ledger import UpdateLedger, updates_in
from modcoord.supervisor.protocol.delivery import encode_batch as encode_wire_batch
from modcoord.supervisor.protocol.delivery import spliced_frame


def u(key: str, seq: int, module: str = "m", payload: object = None) -> Update:
    return Update(module, key, payload if payload is not None else {"seq": seq}, "medium",
                  seq, float(seq))


# -- the ledger ------------------------------------------------------------------------------


def test_the_ledger_holds_the_newest_update_of_each_key() -> None:
    ledger = UpdateLedger()
    ledger.record([u("a", 1), u("b", 2), u("a", 3)])
    ledger.record([u("a", 2)])  # an older one arriving late does not replace the newer
    assert [(x.key, x.seq) for x in ledger.replay()] == [("b", 2), ("a", 3)]
    assert len(ledger) == 2


def test_release_drops_only_what_a_send_covers() -> None:
    ledger = UpdateLedger()
    ledger.record([u("a", 5), u("b", 6), u("a", 5, module="other")])
    assert ledger.release([("m", "a", 4)]) == 0  # an older send: a:5 still owed
    assert ledger.release([("m", "a", 5), ("m", "b", 9)]) == 2
    assert [(x.module_id, x.key) for x in ledger.replay()] == [("other", "a")]
    ledger.release_updates([u("a", 7, module="other")])
    assert ledger.replay() == ()
    stats = ledger.statistics()
    assert (stats.held, stats.recorded, stats.released) == (0, 3, 3)


def test_replay_is_in_seq_order_and_keeps_entries_until_released() -> None:
    ledger = UpdateLedger()
    ledger.record([u("c", 30), u("a", 10), u("b", 20)])
    first = ledger.replay()
    assert [x.seq for x in first] == [10, 20, 30]
    assert ledger.replay() == first  # replaying is not releasing
    assert ledger.statistics().replayed == 6


def test_cancel_drops_the_key() -> None:
    ledger = UpdateLedger()
    ledger.record([u("a", 1), u("b", 2)])
    assert ledger.cancel("m", "a") is True
    assert ledger.cancel("m", "a") is False
    assert [x.key for x in ledger.replay()] == ["b"]


def test_updates_in_finds_the_updates_a_handover_carries() -> None:
    queued = BatcherHandover(queued=(u("a", 1), u("b", 2)), subscriptions=(("s", ("*",)),),
                             next_batch_id=3)
    pending = DebouncerHandover(entries=(PendingEntry(u("c", 3), 0.0, 1.0),))
    assert [x.seq for x in updates_in(queued)] == [1, 2]
    assert [x.seq for x in updates_in(pending)] == [3]
    assert list(updates_in(None)) == []


# -- the heartbeat -----------------------------------------------------------------------------


def test_heartbeat_pings_on_schedule_and_judges_silence() -> None:
    clock = MockClock()
    hb = Heartbeat(interval=0.1, timeout=0.5, now=clock.monotonic())
    assert hb.ping_due(clock.monotonic()) is None
    clock.advance(0.1)
    assert hb.ping_due(clock.monotonic()) == 1
    assert hb.ping_due(clock.monotonic()) is None  # one per interval
    clock.advance(0.05)
    hb.answer(1, clock.monotonic())
    clock.advance(0.5)
    assert not hb.hung(clock.monotonic())  # exactly the timeout: not yet
    clock.advance(0.01)
    assert hb.hung(clock.monotonic())
    assert hb.silent_for(clock.monotonic()) == pytest.approx(0.51)
    hb.answer(1, clock.monotonic())  # a late answer: it lives after all
    assert not hb.hung(clock.monotonic())


def test_heartbeat_counts_the_start_as_an_answer() -> None:
    clock = MockClock()
    clock.advance(10.0)
    hb = Heartbeat(interval=1.0, timeout=3.0, now=clock.monotonic())
    clock.advance(3.0)
    assert not hb.hung(clock.monotonic())
    clock.advance(0.5)
    assert hb.hung(clock.monotonic())


def test_heartbeat_refuses_non_positive_timings() -> None:
    with pytest.raises(ValueError, match="positive"):
        Heartbeat(interval=0.0, timeout=1.0, now=0.0)


# -- frames ------------------------------------------------------------------------------------


def test_the_data_path_travels_as_arrays_and_comes_back_equal() -> None:
    from modcoord.actors.batcher import Enqueue
    from modcoord.actors.debouncer import PublishMany

    updates = (u("a", 1, payload=b"\x00opaque"), u("b", 2, payload={"x": [1, 2]}))
    for message in (PublishMany(updates), Enqueue(updates)):
        kind, body = encode_tell(message)
        assert kind in ("pm", "eq")
        assert decode_tell(*unpack(pack([[kind, body]]))[0]) == message
    batch = Batch(7, updates, "window")
    assert decode_batch(unpack(pack([encode_batch(batch)]))[0]) == batch


def test_an_encoded_payload_crosses_as_its_bytes_and_stays_encoded() -> None:
    """What the intake accepted (a WirePayload: the value's msgpack bytes) reaches the
    actor process and comes back still encoded, byte for byte, never decoded."""
    from modcoord.actors.debouncer import PublishMany
    from modcoord.actors.payload import encode_value, payload_value

    value = {"text": "héllo", "n": [1, 2**40, -0.0], "blob": b"\x00\xff"}
    wire = encode_value(value)
    updates = (u("a", 1, payload=wire), u("b", 2, payload={"plain": 1}))
    kind, body = encode_tell(PublishMany(updates))
    (back,) = unpack(pack([[kind, body]]))
    crossed = decode_tell(*back).updates
    assert type(crossed[0].payload) is type(wire)
    assert bytes(crossed[0].payload) == bytes(wire)
    assert payload_value(crossed[0].payload) == value
    assert crossed[1].payload == {"plain": 1}
    batch = Batch(3, updates, "window")
    again = decode_batch(unpack(pack([encode_batch(batch)]))[0])
    assert bytes(again.updates[0].payload) == bytes(wire)


def test_a_tell_between_actor_processes_crosses_the_daemon_as_one_bin() -> None:
    """Relayed (debouncer process to batcher process), the rows are one ``bin`` with their
    count: the daemon's reader gets bytes it passes on as they are (no row decoded or
    encoded again there), and the receiving process gets the same updates, an encoded
    payload still encoded."""
    from modcoord.actors.batcher import Enqueue
    from modcoord.actors.debouncer import Cancel, PublishMany
    from modcoord.actors.payload import encode_value

    wire = encode_value({"n": [1, 2**40]})
    updates = (u("a", 1, payload=wire), u("b", 2, payload={"x": [1, 2]}))
    for message in (PublishMany(updates), Enqueue(updates)):
        kind, body, count = encode_relayed_tell(message)
        (at_daemon,) = unpack(pack([["t", "batcher", kind, body, count]]))
        assert type(at_daemon[3]) is bytes and at_daemon[4] == 2
        (at_peer,) = unpack(pack([["t", at_daemon[2], at_daemon[3]]]))
        crossed = decode_tell(at_peer[1], at_peer[2])
        assert crossed == message
        assert bytes(crossed.updates[0].payload) == bytes(wire)
    # anything else is relayed as any tell is
    assert encode_relayed_tell(Cancel("a", "k")) == encode_tell(Cancel("a", "k"))
    with pytest.raises(ValueError):
        decode_tell("eq", b"\xc1 not msgpack")


def wired(key: str, seq: int, value: object = None) -> Update:
    """An update as the daemon holds it: its payload encoded (a WirePayload)."""
    return Update("m", key, to_wire(msgpack.packb(value if value is not None else {"seq": seq})),
                  "medium", seq, float(seq))


def test_a_batch_for_several_subscribers_crosses_once_and_is_decoded_once() -> None:
    """The first subscriber's frame carries the batch, the others name it; the daemon's
    side hands every subscriber the one batch it decoded."""
    sender, receiver = DeliveryFrames(), DeliveryFrames()
    first = Batch(1, (wired("a", 1, b"x" * 1000), wired("b", 2)), "window")
    second = Batch(2, (wired("c", 3),), "window")
    frames = [sender.frame(sub, batch) for batch in (first, second)
              for sub in ("s1", "s2", "s3")]
    assert [f[0] for f in frames] == ["dw", "dr", "dr", "dw", "dr", "dr"]
    crossed = unpack(pack(frames))
    got = [(f[1], receiver.batch(f)) for f in crossed]
    assert [sub for sub, _ in got] == ["s1", "s2", "s3"] * 2
    assert [b for _, b in got[:3]] == [first] * 3 and [b for _, b in got[3:]] == [second] * 3
    assert got[0][1] is got[1][1] is got[2][1]  # one copy in the daemon, not three
    assert got[3][1] is not got[0][1]
    # An equal but distinct batch (a filtered part) crosses in full.
    part = Batch(2, second.updates, "window")
    assert sender.frame("s4", part)[0] == "dw"


def test_a_batch_crosses_in_the_subscribers_wire_form_and_is_spliced_as_it_came() -> None:
    """The daemon's side keeps the rows' bytes: each subscriber's frame is exactly what
    encoding the updates makes, and the updates are made only when something looks."""
    sender, receiver = DeliveryFrames(), DeliveryFrames()
    batch = Batch(7, (wired("a", 1, {"v": [1, 2]}), Update("p", "k", b"plain", "critical", 2,
                                                            2.5)), "size")
    (crossed,) = unpack(pack([sender.frame("sub", batch)]))
    got = receiver.batch(crossed)
    assert got.wire is not None and len(got.updates) == 2
    expected = encode_wire_batch("sub", 7, "size", batch.updates)
    assert spliced_frame("sub", 7, "size", got.wire) == expected.frames[0][0]
    assert spliced_frame("other", 7, "size", got.wire) == encode_wire_batch(
        "other", 7, "size", batch.updates).frames[0][0]
    # Looking makes the updates: every field as it was sent, a plain payload encoded.
    assert [(x.module_id, x.key, x.priority, x.seq, x.published_at) for x in got.updates] == [
        ("m", "a", "medium", 1, 1.0), ("p", "k", "critical", 2, 2.5)]
    assert with_values(got.updates) == with_values(batch.updates)
    assert got.updates[1:] == tuple(got.updates)[1:] and got.updates[0] is got.updates[0]
    assert got.updates[0] == batch.updates[0]  # an encoded payload crosses as it is
    assert got == Batch(7, tuple(got.updates), "size")  # its wire form is not compared
    assert pickle.loads(pickle.dumps(got)).updates == tuple(got.updates)  # as a tuple
    # Too large for one frame: no splice (the connection then splits the updates).
    assert spliced_frame("sub", 7, "size", got.wire, max_frame_bytes=len(got.wire)) is None


def test_a_batch_whose_payload_cannot_be_encoded_crosses_as_values() -> None:
    """A batch processor's output that msgpack cannot carry leaves the wire form aside:
    the batch crosses as values, and the daemon's encoder leaves that update out (and
    counts it), as for a batcher in the daemon."""
    sender = DeliveryFrames()
    batch = Batch(1, (wired("a", 1), Update("m", "b", 1 << 70, "medium", 2, 2.0),
                      Update("m", "c", [3], "medium", 3, 3.0)), "window")
    frame = sender.frame("sub", batch)
    assert frame[0] == "d"
    got = DeliveryFrames().batch(unpack(pack([frame]))[0])
    assert got.wire is None and [x.key for x in got.updates] == ["a", "b", "c"]
    bad = got.updates[1].payload
    assert isinstance(bad, PayloadNotEncodable) and "OverflowError" in bad.why
    assert with_values(got.updates[::2]) == with_values(batch.updates[::2])
    encoded = encode_wire_batch("sub", 1, "window", got.updates)
    assert [x.key for x, _ in encoded.failed] == ["b"]
    assert [n for _, n in encoded.frames] == [2]


@pytest.mark.parametrize(("rows", "published", "match"), [
    (b"\xc1", [], "rows of batch 3 are malformed"),
    (msgpack.packb([["m", "k", 1, "medium"]]), [0.0], "rows of batch 3 are malformed"),
    (msgpack.packb([["m", "k", 1, "medium", 1]]), [], "1 rows and 0 publish times"),
])
def test_rows_that_are_not_a_batch_events_are_refused(rows: bytes, published: list[float],
                                                      match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DeliveryFrames().batch(["dw", "sub", 3, "window", rows, published])


def test_a_repeated_delivery_of_a_batch_that_did_not_come_is_refused() -> None:
    with pytest.raises(ValueError, match="batch 1, which did not come before it"):
        DeliveryFrames().batch(["dr", "s1", 1])
    receiver = DeliveryFrames()
    receiver.batch(["d", "s1", encode_batch(Batch(1, (u("a", 1),), "window"))])
    with pytest.raises(ValueError, match="batch 2"):  # the frame carrying 2 was lost
        receiver.batch(["dr", "s2", 2])


class _Forged:
    """Pickles as a call of ``target(*args)``: what a forged control body would do."""

    def __init__(self, target: object, *args: object) -> None:
        self.target, self.args = target, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.target, self.args


def test_control_bodies_of_modcoord_types_and_plain_data_cross() -> None:
    import msgspec

    from modcoord.actors.batcher import Enqueue

    handover = BatcherHandover(queued=(u("a", 1, payload=msgspec.Raw(b"\x01")),),
                               subscriptions=(("s", ("a",)),), next_batch_id=4)
    for value in (handover, Enqueue((u("b", 2),)), {"n": [1, 2.5, None], "s": {1}},
                  (b"x", bytearray(b"y"), frozenset({"z"})), ValueError("bad")):
        back = unpickled(pickled(value))
        assert type(back) is type(value)
        if not isinstance(value, BaseException):
            assert back == value
    assert str(unpickled(pickled(ValueError("bad")))) == "bad"


@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "builtins.getattr",
                                    "subprocess.Popen", "modcoord-function"])
def test_a_body_that_names_a_function_or_a_foreign_type_is_refused_before_any_call(
        target: str, tmp_path: Path) -> None:
    import builtins
    import os
    import subprocess

    from modcoord.supervisor.processes import codec

    marker = tmp_path / "ran"
    made = {"os.system": _Forged(os.system, f"touch {marker}"),
            "builtins.eval": _Forged(builtins.eval, f"open({str(marker)!r}, 'w')"),
            "builtins.getattr": _Forged(builtins.getattr, marker, "touch"),
            "subprocess.Popen": _Forged(subprocess.Popen, ["touch", str(marker)]),
            "modcoord-function": _Forged(codec.pickled, "x")}[target]
    body = pickled(made)
    with pytest.raises(pickle.UnpicklingError, match="frame refused"):
        unpickled(body)
    assert not marker.exists()


def test_errors_keep_their_type_across_the_pipe() -> None:
    stopped = decode_error(encode_error(ActorStoppedError("batcher", "actor is stopped")),
                           "batcher")
    assert isinstance(stopped, ActorStoppedError)
    assert str(stopped) == "batcher: actor is stopped"
    full = decode_error(encode_error(QueueFullError("batch queue full")), "batcher")
    assert isinstance(full, QueueFullError) and str(full) == "batch queue full"
    other = decode_error(encode_error(ZeroDivisionError("boom")), "batcher")
    assert isinstance(other, ActorCrashedError)
    assert "ZeroDivisionError: boom" in str(other)


def test_a_malformed_write_is_refused() -> None:
    with pytest.raises(ValueError, match="array of frames"):
        unpack(pack({"not": "frames"}))  # type: ignore[arg-type]


# -- config --------------------------------------------------------------------------------------


def _daemon_yaml(tmp_path: Path, supervisor: str) -> Path:
    directory = tmp_path / "configs"
    directory.mkdir()
    for f in default_config_dir().glob("*.yaml"):
        (directory / f.name).write_text(f.read_text())
    path = directory / "daemon.yaml"
    text = path.read_text()
    start = text.index("supervisor:")
    end = text.index("history:")
    path.write_text(text[:start] + supervisor + text[end:])
    return directory


def test_out_of_process_is_read_and_defaults_to_the_daemon(tmp_path: Path) -> None:
    text = "supervisor:\n  out_of_process: [batcher, debouncer]\n"
    cfg = load_config_dir(_daemon_yaml(tmp_path, text))
    assert cfg.daemon.supervisor.out_of_process == ("batcher", "debouncer")
    assert SupervisionSettings().out_of_process == ()


@pytest.mark.parametrize(("supervisor", "problem"), [
    ("supervisor:\n  out_of_process: [cache]\n", "'cache' cannot run out of process"),
    ("supervisor:\n  heartbeat_interval_ms: 500\n  heartbeat_timeout_ms: 600\n",
     "at least twice heartbeat_interval_ms"),
    ("supervisor:\n  heartbeat_interval_ms: 0\n", "greater than or equal to 10"),
])
def test_bad_placement_and_heartbeat_keys_are_refused(tmp_path: Path, supervisor: str,
                                                      problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_dir(_daemon_yaml(tmp_path, supervisor))
    assert info.value.file.endswith("daemon.yaml")
    assert problem in info.value.problem
