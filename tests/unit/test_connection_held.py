"""Unit tests of a connection's held deliveries (daemon/connection.py) with a fake server
around the real output accounting (daemon/flow.py's PublisherFlow) and a real socket pair:
no daemon, no I/O thread. The test drives ``flush_out`` the way the server's loop does —
only while the connection wants to write — so a delivery held with no write pending is
seen as what it is in the daemon: never sent.

Through the real daemon: integration/test_delivery_limits_daemon.py."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any, cast

import msgpack
import pytest

from modcoord.actors.payload import to_wire
from modcoord.actors.update import Batch, Update
from modcoord.supervisor.daemon.connection import Connection, PeerCredentials
from modcoord.supervisor.daemon.flow import FlowHooks, PublisherFlow
from modcoord.supervisor.processes.codec import DeliveryFrames, pack, unpack
from modcoord.supervisor.protocol.framing import FrameDecoder

FRAME = 16 << 10  # the frame limit here: a batch of 40 updates of 2 KiB needs 6 frames
MARK = 1 << 20  # a connection's output mark and the budget


class _Other:
    """Another connection, whose queued output spends the output budget."""

    def __init__(self) -> None:
        self.full = False
        self.held = ()


class _Server:
    """What a Connection needs from its server; the output accounting is the real one."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.posts: list[tuple[str, Any]] = []
        self.flow = PublisherFlow(
            FlowHooks(update_interest=lambda conn: None, close=lambda conn, reason: None,
                      count=self.count, now=self.now),
            conns=lambda: [], backlog=None, overdue=lambda: False, high_water=None,
            low_water=0, stall_s=1.0, max_buffer_bytes=MARK, output_budget_bytes=MARK,
            output_stall_s=1.0)
        self.max_frame_bytes = FRAME
        self.max_buffer_bytes = MARK
        self.output_budget_bytes = MARK
        self.oversized_batch = 0
        self.output_added = self.flow.output_added
        self.output_taken = self.flow.output_taken
        self.output_held = self.flow.output_held
        self.over_budget = self.flow.over_budget

    @property
    def out_total(self) -> int:
        return self.flow.out_total

    def now(self) -> float:
        return 0.0

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def post(self, kind: str, conn: Any, reason: str) -> None:
        self.posts.append((kind, conn))

    def post_write(self, conn: Any) -> None:
        self.post("write", conn, "")

    def post_close(self, conn: Any, reason: str) -> None:
        self.post("close", conn, reason)

    def count_undelivered(self, conn: Any, updates: int, size: int, reason: str,
                          module_id: str | None = None) -> None:
        self.count("undelivered_updates", updates)

    def count_undeliverable(self, module_id: str, batch_id: int, failed: Any,
                            sent: int) -> None:
        self.count("undeliverable_updates", len(failed))


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    peer.setblocking(False)
    yield ours, peer
    ours.close()
    peer.close()


def _updates(n: int, size: int) -> tuple[Update, ...]:
    return tuple(Update("pub", f"k{i}", to_wire(msgpack.packb(bytes([i]) * size)), seq=i + 1)
                 for i in range(n))


def _read_messages(peer: socket.socket, decoder: FrameDecoder) -> list[Any]:
    messages: list[Any] = []
    while True:
        try:
            data = peer.recv(1 << 20)
        except BlockingIOError:
            return messages
        messages += decoder.feed(data)

def _read_seqs(peer: socket.socket, decoder: FrameDecoder) -> list[int]:
    """The seqs of the updates in the batch frames the peer has received so far."""
    return [row[4] for message in _read_messages(peer, decoder)
            for row in message[2]["updates"]]


def test_a_batch_held_over_the_budget_is_sent_when_its_first_frame_went_whole(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """Over the output budget (other connections' output), a delivery to an idle reader
    encodes one frame and holds the rest. The frame fits the socket and goes at once, so
    nothing is queued: the connection must still ask for a write, or what it holds is
    never encoded (the reader got 3 of 240 updates in the daemon; output pressure never
    ended, since a holding connection stays full)."""
    ours, peer = pair
    server = _Server()
    other = cast(Connection, _Other())
    assert server.flow.output_added(other, MARK + 1, MARK + 1)  # pressure: over budget
    assert server.over_budget()
    conn = Connection(server, ours, PeerCredentials(1, 1, 1), 1)
    batch = Batch(7, _updates(40, 2048))
    conn.deliver("reader", batch)
    decoder = FrameDecoder(FRAME)
    got = _read_seqs(peer, decoder)
    assert 0 < len(got) < 40 and conn.held_updates == 40 - len(got)  # one frame went
    assert not conn.out  # ... whole: nothing queued behind it
    assert conn.want_write, "deliveries held and no write pending: they would never go"
    assert ("write", conn) in server.posts  # the I/O thread is woken to flush it
    # The server's loop: flush while the connection wants to write (the socket is
    # writable: the peer reads everything).
    for _ in range(100):
        if not conn.want_write:
            break
        conn.flush_out()
        got += _read_seqs(peer, decoder)
    assert got == [u.seq for u in batch.updates]
    assert not conn.held and conn.held_updates == 0 and not conn.want_write
    assert not conn.full  # it leaves the full set: pressure can end
    assert server.counts.get("undelivered_updates", 0) == 0


def _crossed(batch: Batch) -> Batch:
    """``batch`` as the daemon gets it from an actor process: in wire form."""
    frame = DeliveryFrames().frame("reader", batch)
    assert frame[0] == "dw"
    got = DeliveryFrames().batch(unpack(pack([frame]))[0])
    assert got.wire is not None
    return got



def test_a_batch_in_wire_form_reaches_the_reader_as_the_encoded_one_does(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """Spliced or split, held or not, a batch that crossed in wire form arrives exactly
    as the same batch encoded from its updates."""
    ours, peer = pair
    server = _Server()
    conn = Connection(server, ours, PeerCredentials(1, 1, 1), 1)
    decoder = FrameDecoder(FRAME)
    small, large = Batch(3, _updates(5, 100), "size"), Batch(4, _updates(40, 2048), "flush")
    for batch in (small, large):
        conn.deliver("reader", batch)
        plain = _read_messages(peer, decoder)
        conn.deliver("reader", _crossed(batch))
        assert _read_messages(peer, decoder) == plain
    assert len(plain) > 1  # the large one was split, from its updates
    # Held over the budget: every update still arrives, in order.
    other = cast(Connection, _Other())
    assert server.flow.output_added(other, MARK + 1, MARK + 1)
    crossed = [_crossed(Batch(10 + i, _updates(40, 2048), "window")) for i in range(3)]
    for batch in crossed:
        conn.deliver("reader", batch)
    seqs = _read_seqs(peer, decoder)
    server.flow.output_taken(other, MARK + 1, 0)
    for _ in range(200):
        if not conn.want_write:
            break
        conn.flush_out()
        seqs += _read_seqs(peer, decoder)
    assert seqs == [u.seq for b in crossed for u in b.updates]
    assert server.counts.get("undelivered_updates", 0) == 0


def test_a_batch_in_wire_form_for_a_closed_connection_is_counted(
        pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _ = pair
    server = _Server()
    conn = Connection(server, ours, PeerCredentials(1, 1, 1), 1)
    conn.closed = True
    conn.deliver("reader", _crossed(Batch(5, _updates(7, 10))))
    assert server.counts["undelivered_updates"] == 7
