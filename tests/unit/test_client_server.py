"""The real client against the real server over a real Unix socket, with a fake coordinator.

The fake records what reaches it; tests wait on its condition variable or on events with
bounded timeouts (no sleeping).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from daemon_harness import wait_for
from server_harness import (  # noqa: F401 - fixtures
    WAIT,
    Editor,
    FakeCoordinator,
    RawClient,
    client,
    fake,
    registered,
    runtime_dir,
    server,
)

from modcoord.actors import MockClock
from modcoord.actors.errors import (
    ActorCrashedError,
    ActorStoppedError,
    CallTimeoutError,
    ConnectionLostError,
    InvalidMessageError,
    ModcoordError,
    NotRunningError,
    QueueFullError,
    RemoteError,
)
from modcoord.actors.update import Batch, Update
from modcoord.supervisor.client import Client, CoordinationResult, Future, connect
from modcoord.supervisor.daemon.server import Server
from modcoord.supervisor.protocol.framing import FrameDecoder, encode_frame
from modcoord.supervisor.protocol.module import ModuleInfo
from modcoord.supervisor.protocol.paths import (
    pidfile_path,
    resolve_runtime_dir,
    socket_path,
)

# -- paths -----------------------------------------------------------------------------------


def test_runtime_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODCOORD_RUNTIME_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    assert resolve_runtime_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_runtime_dir(None) == tmp_path / "a"
    monkeypatch.setenv("MODCOORD_RUNTIME_DIR", "")
    assert resolve_runtime_dir(None) == tmp_path / "xdg" / "modcoord"
    monkeypatch.delenv("MODCOORD_RUNTIME_DIR")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert resolve_runtime_dir() == Path(f"/tmp/modcoord-{os.getuid()}")
    assert socket_path(tmp_path) == tmp_path / "modcoord.sock"
    assert pidfile_path(tmp_path) == tmp_path / "modcoord.pid"


# -- connecting ------------------------------------------------------------------------------


def test_socket_is_0600_and_hello_answers(server: Server, client: Client,
                                          runtime_dir: Path) -> None:
    mode = stat.S_IMODE(os.stat(socket_path(runtime_dir)).st_mode)
    assert mode == 0o600
    assert client.connected
    assert client.daemon_info["pid"] == os.getpid()
    assert client.daemon_info["mode"] == "HYBRID"
    assert client.daemon_info["max_frame_bytes"] == 1 << 20
    assert client.daemon_info["version"] == 1
    assert server.connections() == 1


def test_connect_without_daemon_raises_not_running(runtime_dir: Path) -> None:
    with pytest.raises(NotRunningError, match="modcoord start"):
        connect(runtime_dir, timeout=1.0)


def test_connect_to_stale_socket_raises_not_running(runtime_dir: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(socket_path(runtime_dir)))
    stale.close()  # the file stays, nobody listens
    with pytest.raises(NotRunningError, match="modcoord start"):
        connect(runtime_dir, timeout=1.0)


def test_connect_honours_environment(server: Server, runtime_dir: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODCOORD_RUNTIME_DIR", str(runtime_dir))
    with connect(timeout=WAIT) as c:
        assert c.status().get()["mode"] == "HYBRID"


def test_server_replaces_stale_socket_but_not_live_one(fake: FakeCoordinator,
                                                       runtime_dir: Path) -> None:
    path = socket_path(runtime_dir)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    first = Server(fake, path).start()
    try:
        with pytest.raises(OSError, match="already listening"):
            Server(fake, path).start()
        with connect(runtime_dir, timeout=WAIT) as c:
            assert c.connected
    finally:
        first.stop()
    assert not path.exists()


def test_peer_of_another_uid_is_refused(fake: FakeCoordinator, runtime_dir: Path) -> None:
    srv = Server(fake, socket_path(runtime_dir), allowed_uid=os.getuid() + 1).start()
    try:
        with pytest.raises(ConnectionLostError, match="refused: peer uid"):
            connect(runtime_dir, timeout=WAIT, reconnect=False)
        raw = RawClient(socket_path(runtime_dir))
        first = raw.recv()
        assert first[0] == 1 and first[2][0] == "PermissionError"
        assert raw.recv() is None
        raw.close()
        assert srv.statistics().refused == 2
        assert srv.statistics().accepted == 0
        assert fake.registrations == [] and fake.calls == []
    finally:
        srv.stop()


# -- requests --------------------------------------------------------------------------------


def test_register_publish_and_priorities(client: Client, fake: FakeCoordinator) -> None:
    answer = client.register(Editor()).get()
    assert answer == {"module_id": "editor", "mode": "HYBRID", "strategy": "balanced"}
    info = fake.registrations[0]
    assert info == ModuleInfo("editor", "Editor", frozenset({"MANUAL", "HYBRID", "FULLY_AUTO"}),
                              ("*",), True)
    seqs = [client.publish("editor", f"doc-{i}", {"i": i}, priority=p).get()
            for i, p in enumerate(["low", "critical", "medium"])]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert fake.published == [("editor", "doc-0", {"i": 0}, "low"),
                              ("editor", "doc-1", {"i": 1}, "critical"),
                              ("editor", "doc-2", {"i": 2}, "medium")]


def test_publish_refusals(client: Client, fake: FakeCoordinator) -> None:
    client.register(Editor()).get()
    with pytest.raises(InvalidMessageError, match="not registered on this connection"):
        client.publish("someone-else", "k", 1).get()
    with pytest.raises(InvalidMessageError, match="'priority'"):
        client.publish("editor", "k", 1, priority="urgent").get()
    fake.full_modules.add("editor")
    with pytest.raises(QueueFullError, match="queue full"):
        client.publish("editor", "k", 1).get()
    assert fake.published == [("editor", "k", 1, "medium")]  # only the one refused as full


def test_pipelined_publishes_are_answered_in_full(client: Client, fake: FakeCoordinator) -> None:
    client.register(Editor()).get()
    futures = [client.publish("editor", f"k{i}", i) for i in range(2000)]
    seqs = [f.get() for f in futures]
    assert len(set(seqs)) == 2000
    assert [item[1] for item in fake.published] == [f"k{i}" for i in range(2000)]
    assert len(fake.publish_calls) < 2000  # several frames per read went in one call


def test_publishes_from_one_read_go_in_one_publish_many(server: Server, fake: FakeCoordinator
                                                        ) -> None:
    raw = RawClient(server.socket_path)
    # register and three publishes in one write: the publishes wait for the registration
    raw.send([0, 1, "register", {"module_id": "m1"}],
             *[[0, 10 + i, "publish", {"module_id": "m1", "key": f"k{i}", "payload": i}]
               for i in range(3)])
    answers = raw.recv_responses([1, 10, 11, 12])
    assert answers[1][2] is None
    assert [answers[rid][3] for rid in (10, 11, 12)] == [1, 2, 3]
    assert fake.publish_calls == [[("m1", f"k{i}", i, "medium") for i in range(3)]]
    raw.close()


def test_coordinate_miss_then_hit(client: Client, fake: FakeCoordinator) -> None:
    client.register(Editor()).get()
    first = client.coordinate("hybrid", {"user": 7}).get()
    assert isinstance(first, CoordinationResult)
    assert first.mode == "HYBRID" and first.strategy == "balanced"
    assert first.results == {"editor": "ok:HYBRID"}
    assert first.cached is False and first.latency_ms == 0.25
    second = client.coordinate("HYBRID", {"user": 7}).get()
    assert second.cached is True
    assert fake.coordinations[0] == ("HYBRID", {"user": 7}, ("editor",))


def test_coordinate_errors(client: Client) -> None:
    with pytest.raises(ActorCrashedError) as crashed:
        client.coordinate("MANUAL", {"refuse": True}).get()
    assert crashed.value.actor == "cache"
    with pytest.raises(RemoteError) as internal:
        client.coordinate("MANUAL", {"explode": True}).get()
    assert internal.value.remote_type == "InternalError"
    assert "coordinator bug" in internal.value.remote_message
    with pytest.raises(InvalidMessageError, match="'mode'"):
        client.coordinate("TURBO").get()
    assert client.status().get()["mode"] == "HYBRID"  # still serving


def test_control_calls_and_actor_proxies(client: Client, fake: FakeCoordinator) -> None:
    assert client.status().get()["pid"] == os.getpid()
    assert client.insights().get() == {"insights": [], "recommendations": []}
    assert client.set_mode("fully-auto").get() == {"method": "set_mode",
                                                   "params": {"mode": "FULLY_AUTO"}}
    for name in ("optimize", "reload", "config", "metrics", "dashboard", "stop"):
        assert getattr(client, name)().get() == {"method": name, "params": {}}
    assert client.cache.statistics().get() == {
        "actor": "cache", "method": "statistics", "args": {}}
    # Positional and keyword arguments are bound to the method's declared params.
    assert client.debouncer.flush("editor", key="doc-1").get() == {
        "actor": "debouncer", "method": "flush", "args": {"module_id": "editor",
                                                          "key": "doc-1"}}
    with pytest.raises(InvalidMessageError, match="fault injection is disabled"):
        client.crash("cache").get()
    with pytest.raises(InvalidMessageError, match="'actor'"):
        client.actor("supervisor").statistics().get()
    # A method the table does not declare never reaches the engine.
    n_calls = len(fake.calls)
    with pytest.raises(InvalidMessageError, match="monitor has no method 'explode'"):
        client.monitor.explode().get()
    with pytest.raises(InvalidMessageError, match="fraction"):
        client.cache.shrink(7).get()
    assert len(fake.calls) == n_calls
    with pytest.raises(RemoteError, match="ZeroDivisionError"):
        client.monitor.trim().get()
    names = [m for m, _ in fake.calls]
    assert names[:3] == ["status", "insights", "set_mode"]
    assert ("crash", {"actor": "cache", "kind": "exception", "kill": False}) in fake.calls


def test_oversized_request_is_refused_before_sending(fake: FakeCoordinator,
                                                     runtime_dir: Path) -> None:
    with Server(fake, socket_path(runtime_dir), max_frame_bytes=4096), \
            connect(runtime_dir, timeout=WAIT) as c:
        c.register(Editor()).get()
        with pytest.raises(InvalidMessageError, match="exceeds the daemon's maximum frame"):
            c.publish("editor", "big", "x" * 5000).get()
        assert c.publish("editor", "small", "x" * 100).get() >= 1
        assert c.connected
        with pytest.raises(InvalidMessageError, match="cannot be serialized"):
            c.publish("editor", "obj", object()).get()


# -- daemon → module -------------------------------------------------------------------------


def test_batch_delivery_runs_on_batch_in_the_callback_thread(client: Client,
                                                             fake: FakeCoordinator) -> None:
    editor = Editor()
    client.register(editor).get()
    batch = Batch(7, (Update("a", "k1", {"x": 1}, "critical", 3),
                      Update("b", "k2", [1, 2], "low", 9)), "window")
    fake.endpoints["editor"].deliver("editor", batch)
    assert editor.got_batch.wait(WAIT)
    (got,) = editor.batches
    assert got.batch_id == 7 and got.reason == "window"
    assert got.updates == batch.updates
    assert editor.batch_threads == ["modcoord-client-callbacks"]
    assert client.statistics().batches_received == 1


def test_batch_delivered_before_the_register_answer_is_not_lost(client: Client) -> None:
    eager = Editor("eager")
    client.register(eager).get()
    assert eager.got_batch.wait(WAIT)
    assert [u.payload for u in eager.batches[0].updates] == ["early"]


def test_callback_round_trip(client: Client, fake: FakeCoordinator) -> None:
    editor = Editor()
    client.register(editor).get()
    endpoint = fake.endpoints["editor"]
    answers: list[tuple[Any, str | None]] = []
    done = threading.Event()

    def reply(result: Any, error: str | None) -> None:
        answers.append((result, error))
        if len(answers) == 3:
            done.set()

    endpoint.mode_change("editor", "MANUAL", "conservative", {"user": 7}, reply)
    endpoint.mode_change("editor", "MANUAL", "conservative", {"fail": True}, reply)
    endpoint.performance_metrics("editor", reply)
    assert done.wait(WAIT)
    assert answers[0] == ("editor in MANUAL/conservative", None)
    assert answers[1] == (None, "ValueError: cannot switch")
    assert answers[2] == ({"coordination_latency": 50}, None)
    assert editor.mode_changes[0][:3] == ("MANUAL", "conservative", {"user": 7})
    assert editor.mode_changes[0][3] == "modcoord-client-callbacks"


def test_outstanding_callbacks_fail_when_connection_closes(server: Server,
                                                           fake: FakeCoordinator) -> None:
    raw = RawClient(server.socket_path)
    raw.send([0, 1, "register", {"module_id": "mute"}])
    assert raw.recv_response(1)[2] is None
    answers: list[tuple[Any, str | None]] = []
    done = threading.Event()

    def answer(r: Any, e: str | None) -> None:
        answers.append((r, e))
        done.set()

    fake.endpoints["mute"].mode_change("mute", "MANUAL", "conservative", {}, answer)
    request = raw.recv()
    assert request[0] == 3 and request[2] == "on_mode_change"
    assert request[3] == {"module_id": "mute", "mode": "MANUAL", "strategy": "conservative",
                          "context": {}}
    raw.close()  # never answers
    assert done.wait(WAIT)
    assert answers == [(None, "connection closed")]
    assert fake.wait_for(lambda: any(m == "mute" for m, _ in fake.unregistrations))
    assert "mute" not in fake.endpoints
    # a callback to a closed connection is answered at once
    late: list[Any] = []
    request_endpoint = fake.unregistrations[0][1]
    request_endpoint.performance_metrics("mute", lambda r, e: late.append(e))
    assert late == ["connection closed"]
    assert server.statistics().callbacks_failed >= 2


def test_raw_callback_response_with_error_list(server: Server, fake: FakeCoordinator) -> None:
    raw = RawClient(server.socket_path)
    raw.send([0, 1, "register", {"module_id": "m"}])
    raw.recv_response(1)
    got: list[Any] = []
    done = threading.Event()

    def answer(r: Any, e: str | None) -> None:
        got.append((r, e))
        done.set()

    fake.endpoints["m"].performance_metrics("m", answer)
    cb = raw.recv()
    raw.send([4, cb[1] + 1000, None, "unknown id: ignored"],
             [4, cb[1], ["KeyError", "nope"], None])
    assert done.wait(WAIT)
    assert got == [(None, "KeyError: nope")]
    raw.close()


def test_closing_the_client_unregisters_its_modules(server: Server, runtime_dir: Path,
                                                    fake: FakeCoordinator) -> None:
    c = connect(runtime_dir, timeout=WAIT)
    c.register(Editor("one")).get()
    c.register(Editor("two")).get()
    c.unregister("one").get()
    assert [m for m, _ in fake.unregistrations] == ["one"]
    c.close()
    assert fake.wait_for(lambda: len(fake.unregistrations) == 2)
    assert fake.unregistrations[1][0] == "two"
    assert fake.endpoints == {}
    assert fake.wait_for(lambda: server.connections() == 0)


def test_module_id_taken_by_another_connection(client: Client, runtime_dir: Path) -> None:
    client.register(Editor()).get()
    with connect(runtime_dir, timeout=WAIT) as other:
        with pytest.raises(InvalidMessageError, match="already registered"):
            other.register(Editor()).get()
        with pytest.raises(InvalidMessageError, match="not registered on this connection"):
            other.publish("editor", "k", 1).get()
        with pytest.raises(InvalidMessageError, match="not registered on this connection"):
            other.unregister("editor").get()
    assert client.publish("editor", "k", 1).get() >= 1


# -- malformed input ---------------------------------------------------------------------------


def test_wrong_types_and_unknown_methods_keep_the_connection(server: Server, client: Client
                                                             ) -> None:
    raw = RawClient(server.socket_path)
    raw.send([0, 1, "explode", {}],
             [0, 2, "publish", {"module_id": "m", "key": 5, "payload": 1}],
             [0, 3, "status", [1, 2]],
             [0, 4, 99, {}],
             [0, 5, "coordinate", {"mode": "HYBRID", "context": "x"}],
             [9, 6, "status", {}],
             [0, 7, "status", {}])
    errors = {rid: msg[2] for rid, msg in raw.recv_responses(list(range(1, 8))).items()}
    assert errors[1][0] == "InvalidMessageError" and "unknown method 'explode'" in errors[1][1]
    assert "Expected `str`, got `int` - at `$.key`" in errors[2][1]
    assert "params must be a map" in errors[3][1]
    assert "method must be a string" in errors[4][1]
    assert "at `$.context`" in errors[5][1]
    assert "kind must be" in errors[6][1]
    assert errors[7] is None  # the valid one after them is served
    assert client.status().get()["mode"] == "HYBRID"
    assert server.statistics().invalid_messages >= 6
    raw.close()


@pytest.mark.parametrize("case", ["garbage_body", "not_an_array", "oversized", "bad_envelope_id"])
def test_broken_frames_close_only_that_connection(server: Server, client: Client,
                                                  fake: FakeCoordinator, case: str) -> None:
    client.register(Editor()).get()
    raw = RawClient(server.socket_path)
    if case == "garbage_body":
        raw.send_bytes(struct.pack(">I", 4) + b"\xc1\xc1\xc1\xc1")
        expected = "undecodable frame"
    elif case == "not_an_array":
        raw.send("just a string")
        expected = "must be an array"
    elif case == "bad_envelope_id":
        raw.send([0, "id", "status", {}])
        expected = "id must be an integer"
    else:
        raw.send_bytes(struct.pack(">I", (1 << 20) + 1) + b"x" * 100)
        expected = "exceeds the maximum"
    msg = raw.recv()
    assert msg[0] == 1 and msg[1] is None
    assert expected in msg[2][1]
    assert raw.at_eof()
    raw.close()
    assert client.publish("editor", "still", "working").get() >= 1
    assert client.coordinate("MANUAL").get().mode == "MANUAL"
    stats = server.statistics()
    assert stats.framing_errors == 1 and stats.connections == 1


def test_truncated_frame_then_close(server: Server, client: Client) -> None:
    raw = RawClient(server.socket_path)
    frame = encode_frame([0, 1, "status", {}])
    raw.send_bytes(frame[:-3])
    raw.sock.shutdown(socket.SHUT_WR)
    assert raw.at_eof()
    raw.close()
    assert client.status().get()["pid"] == os.getpid()


def test_garbage_bytes_without_framing(server: Server, client: Client) -> None:
    raw = RawClient(server.socket_path)
    raw.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # "GET " is a 1.2 GB length
    msg = raw.recv()
    assert msg[1] is None and msg[2][0] == "FramingError"
    assert raw.at_eof()
    raw.close()
    assert client.status().get()["mode"] == "HYBRID"


def test_a_peer_that_stops_reading_is_disconnected_after_the_stall_timeout(
        fake: FakeCoordinator, runtime_dir: Path) -> None:
    """Output pressure does not cut a peer at once; one that takes none of its output for
    ``output_stall_s`` (a mock clock) is disconnected, and what it missed is counted."""
    clock = MockClock()
    with Server(fake, socket_path(runtime_dir), max_buffer_bytes=1 << 20,
                output_stall_s=5.0, clock=clock.monotonic) as srv:
        raw = RawClient(srv.socket_path)
        raw.send([0, 1, "register", {"module_id": "sink"}])
        raw.recv_response(1)
        endpoint = fake.endpoints["sink"]
        payload = "x" * 65536
        started = time.monotonic()
        for i in range(64):  # 4 MiB: well above the 1 MiB mark, never blocking the sender
            endpoint.deliver("sink", Batch(i, (Update("a", "k", payload),)))
        assert time.monotonic() - started < 5.0
        wait_for(lambda: srv.statistics().output_pressure, WAIT, message="output pressure")
        before = srv.statistics()
        # Encoded output stops at the mark (plus the frame that crossed it); the rest is
        # held as references, not as another encoded copy.
        assert before.buffered_out <= (1 << 20) + 65536 + 100
        assert before.held_updates >= 40
        clock.advance(4.9)  # not yet: it may be slow rather than gone
        with pytest.raises(AssertionError):  # the I/O loop looks every 10 ms
            wait_for(lambda: srv.statistics().stalled_disconnects > 0, 0.3)
        assert srv.connections() == 1
        clock.advance(0.2)
        wait_for(lambda: srv.statistics().stalled_disconnects == 1, WAIT,
                 message="the stalled peer to be disconnected")
        assert fake.wait_for(lambda: any(m == "sink" for m, _ in fake.unregistrations))
        stats = srv.statistics()
        # What the kernel took is not counted; the rest of the 64 deliveries is.
        assert 40 <= stats.undelivered_updates < 64
        assert 0 < stats.undelivered_bytes <= before.buffered_out
        assert stats.buffered_out == 0 and stats.held_updates == 0
        wait_for(lambda: not srv.statistics().output_pressure, WAIT, message="pressure off")
        raw.close()


def test_pause_reading_refuses_new_work_but_output_still_flows(
        server: Server, client: Client, fake: FakeCoordinator, runtime_dir: Path) -> None:
    editor = Editor()
    client.register(editor).get()
    endpoint = fake.endpoints["editor"]
    server.pause_reading()
    with pytest.raises(ActorStoppedError, match="stopping"):
        client.publish("editor", "late", 1).get()
    with pytest.raises(ActorStoppedError):
        client.status().get()
    assert fake.published == [] and fake.calls == []
    endpoint.deliver("editor", Batch(3, (Update("src", "k", "flushed"),), "flush"))
    assert editor.got_batch.wait(WAIT)
    answers: list[Any] = []
    done = threading.Event()

    def answer(r: Any, e: str | None) -> None:
        answers.append((r, e))
        done.set()

    endpoint.mode_change("editor", "MANUAL", "conservative", {}, answer)
    assert done.wait(WAIT)
    assert answers == [("editor in MANUAL/conservative", None)]
    assert not server.listening
    with pytest.raises(NotRunningError):
        connect(runtime_dir, timeout=1.0)


# -- losing and regaining the daemon ------------------------------------------------------------


def test_server_stop_fails_pending_futures_quickly(fake: FakeCoordinator,
                                                   runtime_dir: Path) -> None:
    srv = Server(fake, socket_path(runtime_dir)).start()
    c = connect(runtime_dir, timeout=WAIT)
    try:
        pending = c.coordinate("HYBRID", {"hold": True})
        assert fake.wait_for(lambda: len(fake.held) == 1)
        assert not pending.done()
        started = time.monotonic()
        srv.stop()
        with pytest.raises(ConnectionLostError):
            pending.get(timeout=2.0)
        assert time.monotonic() - started < 1.5
        fast = c.status()
        assert fast.done()
        with pytest.raises(ConnectionLostError, match="not connected"):
            fast.get()
        assert not c.connected
        fake.held[0]({"mode": "HYBRID"}, None)  # a late reply to a closed connection is dropped
    finally:
        c.close()


def test_reconnects_and_reregisters_after_restart(runtime_dir: Path) -> None:
    first_fake = FakeCoordinator()
    srv = Server(first_fake, socket_path(runtime_dir)).start()
    c = connect(runtime_dir, timeout=WAIT)
    editor = Editor()
    try:
        c.register(editor).get()
        srv.stop()
        assert first_fake.wait_for(lambda: len(first_fake.unregistrations) == 1)
        second_fake = FakeCoordinator()
        srv = Server(second_fake, socket_path(runtime_dir)).start()
        assert c.wait_connected(WAIT)
        assert registered(second_fake, "editor")
        assert second_fake.registrations[0].module_id == "editor"
        assert c.publish("editor", "after", 1).get() == 1
        second_fake.endpoints["editor"].deliver("editor", Batch(1, (Update("x", "k", 1),)))
        assert editor.got_batch.wait(WAIT)
        stats = c.statistics()
        assert stats.reconnects == 1 and stats.connection_losses == 1
    finally:
        c.close()
        srv.stop()


def test_close_stops_reconnecting(fake: FakeCoordinator, runtime_dir: Path) -> None:
    srv = Server(fake, socket_path(runtime_dir)).start()
    c = connect(runtime_dir, timeout=WAIT)
    srv.stop()
    c.close()
    srv = Server(fake, socket_path(runtime_dir)).start()
    try:
        assert not c.wait_connected(0.3)
        assert srv.connections() == 0
        with pytest.raises(ConnectionLostError):
            c.status().get()
    finally:
        srv.stop()


# -- futures ---------------------------------------------------------------------------------


def test_future_timeout_and_callbacks(client: Client, fake: FakeCoordinator) -> None:
    held = client.coordinate("MANUAL", {"hold": True})
    with pytest.raises(CallTimeoutError):
        held.get(timeout=0.05)
    seen: list[Any] = []
    held.add_done_callback(lambda f: seen.append(f.result()))
    assert fake.wait_for(lambda: len(fake.held) == 1)
    fake.held[0]({"mode": "MANUAL", "strategy": "conservative", "results": {}, "errors": {},
                  "cached": False, "latency_ms": 1.0}, None)
    assert held.get().strategy == "conservative"
    assert held.exception() is None
    assert [r.mode for r in seen] == ["MANUAL"]
    late: list[Any] = []
    held.add_done_callback(late.append)  # already done: runs at once
    assert late == [held]


def test_future_is_awaitable(client: Client, fake: FakeCoordinator) -> None:
    async def main() -> tuple[Any, Any, BaseException | None]:
        status = await client.status()
        result = await client.coordinate("MANUAL", {"k": 1})
        try:
            await client.coordinate("TURBO")
        except InvalidMessageError as exc:
            return status, result, exc
        return status, result, None

    status, result, error = asyncio.run(main())
    assert status["mode"] == "HYBRID"
    assert result.mode == "MANUAL"
    assert isinstance(error, InvalidMessageError)


def test_awaiting_a_held_future_times_out(fake: FakeCoordinator, server: Server,
                                          runtime_dir: Path) -> None:
    with connect(runtime_dir, timeout=0.2) as c:
        async def main() -> None:
            await c.coordinate("MANUAL", {"hold": True})

        with pytest.raises(CallTimeoutError):
            asyncio.run(main())


def test_future_standalone() -> None:
    f: Future[int] = Future(timeout=0.01)
    assert not f.done()
    with pytest.raises(CallTimeoutError):
        f.get()
    assert f.set_result(3) and not f.set_exception(ValueError())
    assert f.get() == 3 and f.exception() is None


def test_server_statistics_count_traffic(server: Server, client: Client) -> None:
    client.register(Editor()).get()
    for i in range(5):
        client.publish("editor", "k", i).get()
    stats = server.statistics()
    assert stats.accepted == 1 and stats.connections == 1
    assert stats.publishes == 5
    assert stats.requests >= 7  # hello, register, 5 publishes
    assert stats.bytes_in > 0
    assert stats.listening and stats.socket_path == str(server.socket_path)


# -- a real module process ---------------------------------------------------------------------

MODULE_SCRIPT = """
import json, sys
from modcoord.supervisor.client import connect

class Sensor:
    module_id = "sensor"
    name = "Sensor"
    supported_modes = ["HYBRID"]
    subscribe = []
    def on_mode_change(self, mode, strategy, context):
        return "sensor ok"
    def on_batch(self, batch):
        pass

with connect(sys.argv[1], timeout=10) as coord:
    coord.register(Sensor()).get()
    futures = [coord.publish("sensor", f"t{i}", {"v": i}, priority="high") for i in range(100)]
    seqs = [f.get() for f in futures]
    result = coord.coordinate("HYBRID", {"from": "process"}).get()
    print(json.dumps({"seqs": seqs, "results": result.results}))
"""


def test_module_in_a_separate_process(server: Server, fake: FakeCoordinator,
                                      runtime_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "module.py"
    script.write_text(MODULE_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(runtime_dir)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(set(out["seqs"])) == 100
    assert out["results"] == {"sensor": "ok:HYBRID"}
    assert fake.registrations[0].supported_modes == frozenset({"HYBRID"})
    assert [(m, k, p["v"], pr) for m, k, p, pr in fake.published] == [
        ("sensor", f"t{i}", i, "high") for i in range(100)]
    assert fake.wait_for(lambda: [m for m, _ in fake.unregistrations] == ["sensor"])


def test_errors_share_the_root(client: Client) -> None:
    with pytest.raises(ModcoordError):
        client.publish("nobody", "k", 1).get()
    assert issubclass(NotRunningError, ModcoordError)
    assert isinstance(msgpack.packb([1]), bytes)


# -- write coalescing ----------------------------------------------------------------------------


def test_replies_made_while_handling_a_read_leave_in_one_send(server: Server,
                                                              fake: FakeCoordinator) -> None:
    raw = RawClient(server.socket_path)
    raw.send([0, 1, "register", {"module_id": "m1"}])
    raw.recv_response(1)
    raw.send([0, 2, "coordinate", {"mode": "HYBRID", "context": {"warm": 1}}])
    raw.recv_response(2)  # the miss is answered from another thread; now it is cached
    batch = [[0, 10, "coordinate", {"mode": "HYBRID", "context": {"warm": 1}}],
             [0, 11, "publish", {"module_id": "m1", "key": "a", "payload": 1}],
             [0, 12, "coordinate", {"mode": "HYBRID", "context": {"warm": 1}}],
             [0, 13, "publish", {"module_id": "m1", "key": "b", "payload": 2}],
             [0, 14, "publish", {"module_id": "m1", "key": "", "payload": 3}]]
    raw.send(*batch)
    first = raw.sock.recv(1 << 20)  # one send: everything is there at once
    answers = {m[1]: m for m in FrameDecoder().feed(first)}
    assert sorted(answers) == [10, 11, 12, 13, 14]
    assert answers[10][3]["cached"] is True and answers[12][3]["cached"] is True
    assert answers[11][3] == 1 and answers[13][3] == 2
    assert answers[14][2][0] == "InvalidMessageError"
    raw.close()


def test_a_reply_from_another_thread_is_written_at_once(server: Server,
                                                        fake: FakeCoordinator) -> None:
    raw = RawClient(server.socket_path)
    raw.send([0, 1, "coordinate", {"mode": "MANUAL", "context": {"hold": True}}])
    assert fake.wait_for(lambda: len(fake.held) == 1)
    fake.held[0]({"mode": "MANUAL", "results": {}}, None)
    # Written by the replying thread itself, not left for the I/O loop.
    data = raw.sock.recv(1 << 16, socket.MSG_DONTWAIT)
    assert list(FrameDecoder().feed(data)) == [[1, 1, None, {"mode": "MANUAL", "results": {}}]]
    raw.close()


def test_publish_fast_path_keeps_exact_errors(server: Server, fake: FakeCoordinator) -> None:
    raw = RawClient(server.socket_path)
    raw.send([0, 1, "register", {"module_id": "m1"}])
    raw.recv_response(1)
    good = {"module_id": "m1", "key": "k", "payload": None}
    cases = {
        10: {**good, "extra": 1},  # four fields, one unknown
        11: {"module_id": "m1", "key": "k", "priority": "low"},  # three fields, no payload
        12: {**good, "module_id": ["m1"]},  # unhashable module id
        13: {**good, "key": "k" * 1025},
        14: {**good, "priority": 3},
        15: {**good, "module_id": "m2"},
        16: {**good, "priority": "low"},
        17: good,
    }
    raw.send(*[[0, rid, "publish", params] for rid, params in cases.items()],
             [0, -5, "publish", good])  # a negative id: acknowledged all the same
    answers = raw.recv_responses([*cases, -5])
    errors = {rid: answers[rid][2] for rid in cases}
    assert "unknown field `extra`" in errors[10][1]
    assert "missing required field `payload`" in errors[11][1]
    assert "Expected `str`, got `array` - at `$.module_id`" in errors[12][1]
    assert "length <= 1024 - at `$.key`" in errors[13][1]
    assert "at `$.priority`" in errors[14][1]
    assert "not registered on this connection" in errors[15][1]
    assert errors[16] is None and errors[17] is None and answers[-5][2] is None
    assert [answers[rid][3] for rid in (16, 17, -5)] == [1, 2, 3]
    assert fake.published == [("m1", "k", None, "low"), ("m1", "k", None, "medium"),
                              ("m1", "k", None, "medium")]
    assert server.statistics().invalid_messages == 6
    raw.close()


# -- flow control --------------------------------------------------------------------------------


class BackloggedCoordinator(FakeCoordinator):
    """A fake whose publish backlog the test sets."""

    def __init__(self) -> None:
        super().__init__()
        self.backlog = 0
        self.overdue = False

    def publish_backlog(self) -> int:
        return self.backlog

    def timers_overdue(self) -> bool:
        return self.overdue


def _publish(rid: int, module_id: str = "m1", key: str | None = None) -> list[Any]:
    return [0, rid, "publish", {"module_id": module_id, "key": key or f"k{rid}",
                                "payload": rid}]


def _quiet(raw: RawClient, seconds: float) -> bool:
    """Whether nothing arrives on ``raw`` for ``seconds`` (a bounded negative check)."""
    raw.sock.settimeout(seconds)
    try:
        raw.recv()
    except TimeoutError:
        return True
    finally:
        raw.sock.settimeout(WAIT)
    return False


@pytest.fixture
def backlogged() -> BackloggedCoordinator:
    return BackloggedCoordinator()


def test_backpressure_pauses_publishers_only_until_the_backlog_falls(
        backlogged: BackloggedCoordinator, runtime_dir: Path) -> None:
    fake = backlogged
    with Server(fake, socket_path(runtime_dir), backlog_high_water=100,
                backlog_low_water=10) as srv:
        pub = RawClient(srv.socket_path)
        pub.send([0, 1, "register", {"module_id": "m1"}])
        pub.recv_response(1)
        control = RawClient(srv.socket_path)
        pub.send(_publish(10))
        assert pub.recv_response(10)[3] == 1
        assert srv.statistics().backpressure_pauses == 0  # backlog 0: no pause
        fake.backlog = 101
        pub.send(_publish(11))
        assert pub.recv_response(11)[3] == 2  # taken: the pause applies to what follows
        stats = srv.statistics()
        assert stats.backpressure_pauses == 1 and stats.backpressure_active
        assert stats.backpressure_throttled == 1
        pub.send(_publish(12))
        control.send([0, 1, "status", {}])
        assert control.recv_response(1)[2] is None  # a control-only client is served
        # A connection that starts publishing during the pause is paused after that read.
        late = RawClient(srv.socket_path)
        late.send([0, 1, "register", {"module_id": "m2"}])
        late.recv_response(1)
        late.send(_publish(20, "m2"))
        assert late.recv_response(20)[2] is None
        late.send(_publish(21, "m2"))
        assert _quiet(pub, 0.2) and _quiet(late, 0.05)
        assert [item[1] for item in fake.published] == ["k10", "k11", "k20"]
        assert srv.statistics().backpressure_throttled == 2
        fake.backlog = 11  # above the low-water mark: still paused
        assert _quiet(pub, 0.05)
        fake.backlog = 10
        assert pub.recv_response(12)[3] == 4
        assert late.recv_response(21)[3] == 5
        stats = srv.statistics()
        assert not stats.backpressure_active
        assert stats.backpressure_pauses == 1 and stats.backpressure_stalls == 0
        assert stats.backpressure_paused_s >= 0.25
        for raw in (pub, control, late):
            raw.close()


def test_an_overdue_timer_holds_publishers_until_it_is_served(
        backlogged: BackloggedCoordinator, runtime_dir: Path) -> None:
    """Timers before intake: with the backlog low, an overdue debounce deadline alone
    pauses the publishers; they resume once it is served."""
    fake = backlogged
    with Server(fake, socket_path(runtime_dir), backlog_high_water=100,
                backlog_low_water=10) as srv:
        pub = RawClient(srv.socket_path)
        pub.send([0, 1, "register", {"module_id": "m1"}])
        pub.recv_response(1)
        fake.overdue = True
        pub.send(_publish(10))
        assert pub.recv_response(10)[3] == 1
        assert srv.statistics().backpressure_active
        pub.send(_publish(11))
        assert _quiet(pub, 0.1)
        fake.overdue = False
        assert pub.recv_response(11)[3] == 2
        assert not srv.statistics().backpressure_active
        pub.close()


def test_backpressure_slows_a_publisher_without_refusing_or_losing(
        backlogged: BackloggedCoordinator, runtime_dir: Path) -> None:
    fake = backlogged
    n = 20_000  # about 1.2 MB: more than the socket buffers hold
    with Server(fake, socket_path(runtime_dir), backlog_high_water=100,
                backlog_low_water=10) as srv:
        pub = RawClient(srv.socket_path)
        pub.send([0, 1, "register", {"module_id": "m1"}])
        pub.recv_response(1)
        fake.backlog = 1_000
        data = b"".join(encode_frame(_publish(100 + i)) for i in range(n))
        sent = threading.Event()

        def send_all() -> None:
            pub.sock.sendall(data)
            sent.set()

        threading.Thread(target=send_all, daemon=True).start()
        assert fake.wait_for(lambda: len(fake.published) > 0)
        assert not sent.wait(0.3)  # the publisher is blocked in sendall: slowed
        taken = len(fake.published)
        assert 0 < taken < n and srv.statistics().backpressure_active
        fake.backlog = 0
        assert sent.wait(WAIT)
        acks: dict[int, Any] = {}
        while len(acks) < n:
            chunk = pub.sock.recv(1 << 20)
            assert chunk, "connection closed"
            acks.update((m[1], m) for m in pub.decoder.feed(chunk) if m[1] != 1)
        assert all(m[2] is None for m in acks.values())
        assert sorted(m[3] for m in acks.values()) == list(range(1, n + 1))
        assert [item[1] for item in fake.published] == [f"k{100 + i}" for i in range(n)]
        stats = srv.statistics()
        assert stats.backpressure_pauses >= 1 and stats.backpressure_stalls == 0
        assert stats.invalid_messages == 0 and stats.stalled_disconnects == 0
        pub.close()


def test_a_stuck_backlog_does_not_hold_publishers_forever(
        backlogged: BackloggedCoordinator, runtime_dir: Path) -> None:
    fake = backlogged
    with Server(fake, socket_path(runtime_dir), backlog_high_water=100,
                backlog_low_water=10, backlog_stall_s=0.2) as srv:
        pub = RawClient(srv.socket_path)
        pub.send([0, 1, "register", {"module_id": "m1"}])
        pub.recv_response(1)
        fake.backlog = 500  # never falls
        pub.send(_publish(10))
        pub.recv_response(10)
        assert srv.statistics().backpressure_active
        started = time.monotonic()
        pub.send(_publish(11))
        assert pub.recv_response(11)[2] is None  # served once the pause is deemed stuck
        assert time.monotonic() - started >= 0.15
        stats = srv.statistics()
        assert stats.backpressure_stalls == 1 and not stats.backpressure_active
        pub.close()


def test_flow_control_settings_are_checked(fake: FakeCoordinator, runtime_dir: Path) -> None:
    path = socket_path(runtime_dir)
    with pytest.raises(ValueError, match="water marks"):
        Server(fake, path, backlog_high_water=10, backlog_low_water=10)
    with pytest.raises(ValueError, match="water marks"):
        Server(fake, path, backlog_high_water=10, backlog_low_water=-1)
    with pytest.raises(ValueError, match="backlog_stall_s"):
        Server(fake, path, backlog_stall_s=0)
    Server(fake, path, backlog_high_water=None, backlog_low_water=10**9)  # flow control off


def test_backpressure_with_the_real_coordinator_loses_nothing(runtime_dir: Path) -> None:
    """A real ModuleCoordinator (actors, real clock) behind the server with low water
    marks: one burst of publishes fills the debouncer's backlog, reading pauses, and every
    publish is accepted and delivered."""
    import pykka

    from modcoord.supervisor.daemon.config import load_config_dir
    from modcoord.supervisor.daemon.controller import Controller
    from modcoord.supervisor.daemon.coordinator import ModuleCoordinator

    coordinator = ModuleCoordinator(load_config_dir(), mode="HYBRID").start()
    n = 5_000
    try:
        with Server(Controller(coordinator), socket_path(runtime_dir), backlog_high_water=200,
                    backlog_low_water=50) as srv:
            sub = RawClient(srv.socket_path)
            sub.send([0, 1, "register", {"module_id": "sub", "subscribe": ["src"]}])
            assert sub.recv_response(1)[2] is None
            pub = RawClient(srv.socket_path)
            pub.send([0, 1, "register", {"module_id": "src"}])
            assert pub.recv_response(1)[2] is None
            pub.send(*[_publish(100 + i, "src", f"key-{i}") for i in range(n)])
            answers = pub.recv_responses(list(range(100, 100 + n)))
            assert all(m[2] is None for m in answers.values())
            keys: set[str] = set()
            sub.sock.settimeout(10.0)
            while len(keys) < n:
                msg = sub.recv()
                assert msg is not None
                if msg[0] == 2 and msg[1] == "batch":
                    keys.update(u[1] for u in msg[2]["updates"])
            assert keys == {f"key-{i}" for i in range(n)}
            stats = srv.statistics()
            assert stats.backpressure_pauses >= 1 and stats.backpressure_stalls == 0
            assert coordinator.publish_backlog() == 0
            sub.close()
            pub.close()
    finally:
        coordinator.stop()
        pykka.ActorRegistry.stop_all(timeout=5)
