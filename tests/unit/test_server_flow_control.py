"""Flow control in the real server with real clients over a real Unix socket: publishers
paused while the publish backlog is high or a debounce timer is overdue, never refused or
lost, and never held forever by a stuck backlog. Tests wait with bounded timeouts."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from server_harness import WAIT, FakeCoordinator, RawClient

from modcoord.supervisor.daemon.server import Server
from modcoord.supervisor.protocol.framing import encode_frame
from modcoord.supervisor.protocol.paths import socket_path

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


def _registered_publisher(srv: Server) -> RawClient:
    """A raw connection that registered ``m1`` (its answer read)."""
    pub = RawClient(srv.socket_path)
    pub.send([0, 1, "register", {"module_id": "m1"}])
    pub.recv_response(1)
    return pub


@pytest.fixture
def backlogged() -> BackloggedCoordinator:
    return BackloggedCoordinator()


def test_backpressure_pauses_publishers_only_until_the_backlog_falls(
        backlogged: BackloggedCoordinator, runtime_dir: Path) -> None:
    fake = backlogged
    with Server(fake, socket_path(runtime_dir), backlog_high_water=100,
                backlog_low_water=10) as srv:
        pub = _registered_publisher(srv)
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
        pub = _registered_publisher(srv)
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
        pub = _registered_publisher(srv)
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
        pub = _registered_publisher(srv)
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
