"""Wire fuzzing: hypothesis-made garbage and wrong frames against a real daemon's socket.

The cases (the call table's fields and their wrong values, the message strategies,
running one case) are in ``tests/wire_fuzz_cases.py``; this module runs them. One real
daemon (packaged configs) serves the whole module. Honest clients of the client
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
import itertools
import os
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from daemon_harness import DaemonProcess
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from wire_fuzz_cases import (
    ACTOR_TABLE,
    ANY,
    LEAF,
    METHOD_LIST,
    READ_S,
    SCHEMA,
    TEMPLATES,
    VALUE,
    Case,
    cases,
    nested,
    run_case,
    table_cases,
)
from wire_raw import HonestClients, RawConnection, frame

from modcoord.actors.update import PRIORITIES
from modcoord.supervisor.daemon.config import MODES
from modcoord.supervisor.protocol import wire
from modcoord.supervisor.protocol.calls import (
    decode_params,
)

SCALE = float(os.environ.get("MODCOORD_FUZZ_SCALE", "1"))
FRAME_EXAMPLES = max(1, int(1000 * SCALE))
PAYLOAD_EXAMPLES = max(1, int(120 * SCALE))
CALLBACK_EXAMPLES = max(1, int(40 * SCALE))
CHECK_EVERY = 10  # examples between two honest-client checks


def _settings(max_examples: int) -> Callable[[Any], Any]:
    return settings(
        max_examples=max_examples, deadline=None, derandomize=True, database=None,
        phases=(Phase.explicit, Phase.generate), print_blob=False,
        suppress_health_check=list(HealthCheck),
    )


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
