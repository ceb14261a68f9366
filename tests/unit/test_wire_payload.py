"""Payloads in wire form: encoded once at publish, spliced into deliveries, decoded on demand.

The unit side of ``actors/payload.py``: a delivery batch whose payloads are the intake's
encodings decodes to exactly the published values (every msgpack type, nested, bytes,
64-bit edges, ext types), in one frame or split; its bytes are those the daemon sent before
payloads stayed encoded (the wire did not change); the few places that look inside a value
get it decoded; cache entries are one blob each. Per-update costs on the delivery path
(the histogram's batch recording, the batcher's ordering) give what they gave before.
Through the real daemon and module processes: ``integration/test_wire_payload_daemon.py``.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left
from collections import Counter
from typing import Any

import msgpack
import msgspec
import pytest
from payload_values import VALUES, same

from modcoord.actors.batcher import _rank_seq, order_updates
from modcoord.actors.clock import MockClock
from modcoord.actors.errors import InvalidMessageError
from modcoord.actors.histogram import (
    N_BUCKETS,
    PROMETHEUS_BUCKETS_S,
    LatencyHistogram,
    _bounds,
    _bucket,
    _counts_of,
)
from modcoord.actors.payload import (
    WirePayload,
    encode_value,
    is_wire,
    payload_value,
    with_values,
)
from modcoord.actors.settings import CacheSettings
from modcoord.actors.shared.cache_store import CacheStore
from modcoord.actors.update import Batch, Update, updates_from_rows
from modcoord.supervisor.protocol.delivery import check_payload, encode_batch, encode_payload
from modcoord.supervisor.protocol.framing import EVENT, HEADER, decode_body, encode_frame
from modcoord.supervisor.protocol.module import LocalEndpoint


def _published(values: list[Any]) -> list[Update]:
    return [Update("pub", f"k{i}", encode_payload("pub", f"k{i}", v), "medium", i + 1)
            for i, v in enumerate(values)]


def _rows(frames: list[tuple[bytes, int]]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for frame, n in frames:
        (length,) = HEADER.unpack(frame[:HEADER.size])
        assert length == len(frame) - HEADER.size
        msg = decode_body(frame[HEADER.size:])
        assert msg[0] == EVENT and msg[1] == "batch"
        assert len(msg[2]["updates"]) == n
        rows += msg[2]["updates"]
    return rows


# -- the splice -----------------------------------------------------------------------------


def test_a_payload_is_encoded_once_at_publish_into_one_bytes_blob() -> None:
    for value in VALUES:
        encoded = encode_payload("pub", "k", value)
        assert is_wire(encoded) and type(encoded) is WirePayload
        assert bytes(encoded) == msgpack.packb(value, use_bin_type=True)
        assert same(payload_value(encoded), value)
    raw = msgspec.Raw(msgpack.packb([1, 2]))
    assert encode_payload("pub", "k", raw) is raw  # already encoded: taken as it is


def test_a_delivery_batch_decodes_to_exactly_the_published_values() -> None:
    updates = _published(VALUES)
    out = encode_batch("sub", 7, "size", updates, max_frame_bytes=4 << 20)
    assert not out.failed and out.rest == len(updates) and len(out.frames) == 1
    rows = _rows(out.frames)
    assert [r[:2] + r[3:] for r in rows] == [["pub", f"k{i}", "medium", i + 1]
                                            for i in range(len(VALUES))]
    for row, value in zip(rows, VALUES, strict=True):
        assert same(row[2], value), (row[2], value)


def test_the_wire_did_not_change_same_bytes_as_encoding_the_decoded_values() -> None:
    updates = _published(VALUES)
    spliced = encode_batch("sub", 2**64 - 1, "flush", updates, max_frame_bytes=4 << 20)
    plain = [[u.module_id, u.key, payload_value(u.payload), u.priority, u.seq] for u in updates]
    before = encode_frame([EVENT, "batch", {"module_id": "sub", "batch_id": 2**64 - 1,
                                            "reason": "flush", "updates": plain}])
    assert spliced.frames[0][0] == before


def test_a_split_batch_keeps_every_value_and_the_order() -> None:
    values = [{"i": i, "pad": "p" * 300} for i in range(200)] + VALUES[:20]
    updates = _published(values)
    out = encode_batch("sub", 3, "size", updates, max_frame_bytes=8 << 10)
    assert out.oversized and len(out.frames) > 5 and not out.failed
    for frame, _ in out.frames:
        assert len(frame) - HEADER.size <= 8 << 10
    rows = _rows(out.frames)
    assert [r[1] for r in rows] == [u.key for u in updates]
    assert all(same(r[2], v) for r, v in zip(rows, values, strict=True))


def test_plain_payloads_beside_encoded_ones_are_encoded_by_the_wire_rules() -> None:
    # A batch processor's output carries values, not encodings: delivery encodes them.
    updates = _published([{"a": 1}, [1, 2]])
    updates += [Update("pub", "plain", (1, msgpack.ExtType(3, b"z")), "high", 9),
                Update("pub", "bad", object(), "low", 10)]
    out = encode_batch("sub", 1, "window", updates)
    assert [u.key for u, _ in out.failed] == ["bad"]
    assert "cannot be encoded" in out.failed[0][1]
    rows = _rows(out.frames)
    assert [r[2] for r in rows] == [{"a": 1}, [1, 2], [1, msgpack.ExtType(3, b"z")]]


def test_encode_payload_refuses_what_check_payload_refuses_naming_the_limit() -> None:
    deep: Any = 0
    for _ in range(101):
        deep = [deep]
    cases: list[tuple[Any, str]] = [
        (deep, "nested deeper than 100"), (2**64, "outside 64 bits"), (-(2**63) - 1, "64 bits"),
        (object(), "cannot be encoded"), ("\udc80", "cannot be encoded"),
        (b"x" * (1 << 20), "does not fit one delivery frame"),
    ]
    for value, words in cases:
        for fn in (encode_payload, check_payload):
            with pytest.raises(InvalidMessageError, match=words):
                fn("pub", "k", value)


# -- decoding on demand ---------------------------------------------------------------------


def test_values_are_decoded_where_something_looks_inside_them() -> None:
    updates = _published(VALUES[:10])
    decoded = with_values(updates)
    assert all(not is_wire(u.payload) for u in decoded)
    assert all(same(u.payload, v) for u, v in zip(decoded, VALUES[:10], strict=True))
    plain = Update("pub", "p", {"x": 1})
    assert with_values([plain])[0] is plain  # not encoded: as it is

    got: list[Batch] = []

    class Module:
        def on_batch(self, batch: Batch) -> None:
            got.append(batch)

    LocalEndpoint(Module()).deliver("sub", Batch(4, tuple(updates), "flush"))
    assert [u.payload for u in got[0].updates] == VALUES[:10]
    assert (got[0].batch_id, got[0].reason) == (4, "flush")


def test_the_client_builds_delivered_updates_as_the_constructor_does() -> None:
    rows: list[Any] = [["m", f"k{i}", {"v": i}, "low", i] for i in range(20)]
    assert updates_from_rows(rows) == tuple(Update(*r) for r in rows)
    with pytest.raises(IndexError):
        updates_from_rows([["m", "k", 1, "low"]])


# -- cache entries are blobs ----------------------------------------------------------------


def test_cache_entries_are_one_blob_each_and_every_hit_gets_its_own_value() -> None:
    store = CacheStore(MockClock(), CacheSettings(max_entries=100))
    value = {"mode": "HYBRID", "strategy": "s", "results": {"m": [1, {"a": b"\x00"}]},
             "errors": {}}
    lookup = store.lookup("k")
    assert lookup.lead
    store.complete("k", value)
    entries = store._entries  # the representation is what this test is about
    assert is_wire(entries["k"][0])
    assert bytes(entries["k"][0]) == msgpack.packb(value, use_bin_type=True)
    first, second = store.lookup("k"), store.lookup("k")
    assert first.hit and first.value == value and second.value == value
    assert first.value is not second.value  # a caller changing its copy changes no other
    assert store.get("k") == value
    store.put("odd", {"results": {1, 2}})  # not plain data: kept as the object it is
    assert store.get("odd") == {"results": {1, 2}}
    assert encode_value(entries["k"][0]) is entries["k"][0]
    assert store.statistics().hits == 4 and store.statistics().size == 2


# -- per-update costs: same answers ---------------------------------------------------------


def test_the_bucket_counts_from_the_bits_are_the_bucket_indices_counted() -> None:
    rng = random.Random(13)
    values = [0.0, 5e-324, 1e-300, 2047.9, 1e300, math.inf]
    values += [rng.uniform(0, 1e-5) for _ in range(5000)]
    values += [10 ** rng.uniform(-7, 3.5) for _ in range(20000)]
    for i in range(1, N_BUCKETS):
        lower = _bounds(i)[0]
        values += [lower, math.nextafter(lower, 0), math.nextafter(lower, math.inf)]
    for bound in PROMETHEUS_BUCKETS_S:
        values += [bound, math.nextafter(bound, 0), math.nextafter(bound, math.inf)]
    fine, le = _counts_of(values)
    assert fine == Counter(map(_bucket, values))
    assert dict(le) == Counter(bisect_left(PROMETHEUS_BUCKETS_S, v) for v in values)
    # A batch whose buckets hold no bound counts its bounds from the buckets alone.
    near = [0.0123 + k * 1e-6 for k in range(50)]
    fine, le = _counts_of(near)
    assert fine == Counter(map(_bucket, near))
    assert dict(le) == Counter(bisect_left(PROMETHEUS_BUCKETS_S, v) for v in near)


def test_record_many_records_what_record_does_one_by_one() -> None:
    clock = MockClock()
    rng = random.Random(7)
    values = [rng.choice([-1.0, 0.0, 2e-7, math.nan, math.inf, 1e6])
              if i % 9 == 0 else 10 ** rng.uniform(-6, 1) for i in range(3000)]
    one, many = LatencyHistogram(clock), LatencyHistogram(clock)
    for v in values:
        one.record(v)
    for start in range(0, len(values), 50):
        many.record_many(values[start:start + 50])
    for a, b in ((one.total(), many.total()), (one.recent(), many.recent())):
        assert (a.count, a.p50, a.p95, a.p99, a.max) == (b.count, b.p50, b.p95, b.p99, b.max)
        assert a.mean == pytest.approx(b.mean, rel=1e-9)  # summed in another order
    assert one.cumulative_buckets()[:2] == many.cumulative_buckets()[:2]


def _reference_order(updates: list[Update]) -> list[Update]:
    """The documented batch order, written plainly."""
    ranked = sorted(updates, key=_rank_seq)
    out: list[Update] = []
    for rank in sorted({_rank_seq(u)[0] for u in ranked}):
        same = [u for u in ranked if _rank_seq(u)[0] == rank]
        modules = list(dict.fromkeys(u.module_id for u in same))
        for m in modules:
            out += [u for u in same if u.module_id == m]
    return out


def test_order_updates_gives_the_documented_order_on_every_shape() -> None:
    rng = random.Random(5)
    for trial in range(400):
        n = rng.randint(0, 60)
        modules = ["a", "b", "c"][:rng.randint(1, 3)]
        priorities = ["critical", "high", "medium", "low", "odd"][:rng.randint(1, 5)]
        seqs = rng.sample(range(1000), n) if trial % 2 else sorted(rng.sample(range(1000), n))
        updates = [Update(rng.choice(modules), f"k{i}", i, rng.choice(priorities), s)
                   for i, s in enumerate(seqs)]
        assert order_updates(updates) == _reference_order(updates), trial


def test_a_flush_takes_the_pending_keys_in_deadline_then_arrival_order() -> None:
    from modcoord.actors.debouncer_pending import PendingTable, Slot

    rng = random.Random(11)
    for trial in range(200):
        table = PendingTable()
        n = rng.randint(0, 80)
        seqs = rng.sample(range(10_000), n)
        for i, seq in enumerate(seqs):  # few distinct deadlines: ties broken by seq
            update = Update("m", f"k{i}", i, "medium", i)
            table.entries[("m", f"k{i}")] = Slot(update, 2, 0.0,
                                                 float(rng.randint(0, 5)), seq)
        slots = list(table.entries.values())
        expected = sorted(slots, key=lambda e: (e.deadline, e.seq))
        assert table.ordered() == expected, trial
        assert table.take(None, None) == expected, trial
        assert not table.entries


@pytest.mark.parametrize("chain", [("priority",), ("priority", "example_reverse")])
def test_a_batch_processor_plugin_gets_values_the_built_in_chain_keeps_encodings(
        chain: tuple[str, ...]) -> None:
    if len(chain) > 1:
        pytest.importorskip("modcoord_example_plugins")
    from actor_harness import ActorRig

    from modcoord.actors.batcher import BatcherActor, Enqueue, FlushBatches, Subscribe
    from modcoord.actors.settings import BatchSettings, PluginSettings

    got: list[Batch] = []
    rig = ActorRig(MockClock(), "batcher", BatcherActor, BatchSettings(window_ms=1000),
                   deliver=lambda sub, batch: got.append(batch))
    rig.context.shared.plugins.configure(PluginSettings(batch_processors=chain))
    rig.start()
    rig.tell(Subscribe("sink", ("*",)))
    rig.tell(Enqueue(tuple(_published(VALUES[:6]))))
    assert rig.ask(FlushBatches()) == 6
    payloads = [u.payload for b in got for u in b.updates]
    if len(chain) == 1:  # nothing looked inside: the encodings go on to delivery
        assert all(is_wire(p) for p in payloads)
        payloads = [payload_value(p) for p in payloads]
    else:  # the example reverses the batch it was given: the values, decoded
        assert not any(is_wire(p) for p in payloads)
        payloads.reverse()
    assert all(same(p, v) for p, v in zip(payloads, VALUES[:6], strict=True))
