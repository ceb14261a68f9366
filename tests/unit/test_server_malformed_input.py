"""Malformed input to the real server from real clients over a real Unix socket (a fake
coordinator): wrong types, broken and truncated frames, garbage, a peer that stops
reading; each costs at most its own connection. Tests wait with bounded timeouts."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import wait_for
from server_harness import (
    WAIT,
    Editor,
    FakeCoordinator,
    RawClient,
)

from modcoord.actors import MockClock
from modcoord.actors.errors import ActorStoppedError, NotRunningError
from modcoord.actors.update import Batch, Update
from modcoord.supervisor.client import Client, connect
from modcoord.supervisor.daemon.server import Server
from modcoord.supervisor.protocol.framing import encode_frame
from modcoord.supervisor.protocol.paths import socket_path

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
