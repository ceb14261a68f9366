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
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from server_harness import (
    WAIT,
    Editor,
    FakeCoordinator,
    RawClient,
    registered,
)

from modcoord.actors.errors import (
    ActorCrashedError,
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
from modcoord.supervisor.protocol.framing import FrameDecoder
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
