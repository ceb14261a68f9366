"""The client's fast paths: callers that read the socket themselves (leader/follower) and
coalesced writes, against the real server over a real Unix socket with a fake coordinator.

Every wait is bounded (events, futures, the fake's condition variable); nothing sleeps.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest
from daemon_harness import wait_for
from server_harness import WAIT, Editor, FakeCoordinator, registered

from modcoord.actors.errors import CallTimeoutError, ConnectionLostError
from modcoord.actors.update import Batch, Update
from modcoord.supervisor.client import Client, connect
from modcoord.supervisor.daemon.server import Server
from modcoord.supervisor.protocol.paths import socket_path

_CACHED = {"mode": "MANUAL", "strategy": "conservative", "results": {}, "errors": {},
           "cached": False, "latency_ms": 1.0}


def _in_thread(target: Any, *args: Any) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``target`` in a thread; exceptions are collected for the test to re-raise."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target(*args)
        except BaseException as exc:  # handed to the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


# -- callers read ------------------------------------------------------------------------------


def test_a_waiting_caller_reads_its_own_answer(client: Client) -> None:
    before = client.statistics().caller_reads
    for i in range(20):
        answer = client.debouncer.flush(f"m{i}", key="x").get()
        assert answer == {"actor": "debouncer", "method": "flush",
                          "args": {"module_id": f"m{i}", "key": "x"}}
    # No other thread waits here: a blocking call is read by the caller itself (unless
    # the reader thread got the answer before the caller waited: rare, under load).
    assert client.statistics().caller_reads >= before + 10


def _pair(answer: dict[str, Any]) -> list[str]:
    """The (module_id, key) arguments the fake engine got for a debouncer call."""
    return [answer["args"]["module_id"], answer["args"]["key"]]


def test_concurrent_callers_from_several_threads_get_their_own_answers(
        client: Client) -> None:
    threads_n, calls_n = 6, 40
    answers: dict[int, list[Any]] = {t: [] for t in range(threads_n)}
    start = threading.Barrier(threads_n)

    def caller(t: int) -> None:
        start.wait(WAIT)
        for i in range(calls_n):
            if i % 2:
                answers[t].append(_pair(client.debouncer.cancel(f"{t}", f"{i}").get()))
            else:  # pipelined pairs too: the second may already be answered by then
                first = client.debouncer.cancel(f"{t}", f"{i}")
                second = client.debouncer.flush(f"{t}", f"{-i}")
                answers[t].append(_pair(first.get()))
                assert _pair(second.get()) == [f"{t}", f"{-i}"]
    workers = [_in_thread(caller, t) for t in range(threads_n)]
    for thread, errors in workers:
        thread.join(WAIT * 2)
        assert not thread.is_alive()
        assert not errors, errors
    for t in range(threads_n):
        assert answers[t] == [[f"{t}", f"{i}"] for i in range(calls_n)]
    stats = client.statistics()
    assert stats.pending == 0 and stats.caller_reads > 0


def test_a_long_waiting_caller_reads_for_other_threads(client: Client,
                                                       fake: FakeCoordinator) -> None:
    held = client.coordinate("MANUAL", {"hold": True})
    got: dict[str, Any] = {}

    def long_waiter() -> None:
        got["result"] = held.get(timeout=WAIT)

    thread, errors = _in_thread(long_waiter)
    assert fake.wait_for(lambda: len(fake.held) == 1)
    # The long waiter is (or soon becomes) the reader; quick calls from this thread are
    # answered meanwhile, without waiting for it.
    started = time.monotonic()
    for i in range(30):
        assert client.status().get(timeout=WAIT)["mode"] == "HYBRID", i
    assert time.monotonic() - started < WAIT
    assert not held.done() and thread.is_alive()
    fake.held[0](_CACHED, None)
    thread.join(WAIT)
    assert not errors, errors
    assert got["result"].strategy == "conservative"


def test_events_keep_flowing_while_a_caller_reads(client: Client,
                                                  fake: FakeCoordinator) -> None:
    editor = Editor()
    client.register(editor).get()
    dispatchers: list[str] = []

    class SpyQueue:
        """Records which thread dispatched each item to the callback thread."""

        def __init__(self, queue: Any) -> None:
            self.queue = queue

        def put(self, item: Any) -> None:
            dispatchers.append(threading.current_thread().name)
            self.queue.put(item)

    client._callbacks._queue = cast(Any, SpyQueue(client._callbacks._queue))
    held = client.coordinate("MANUAL", {"hold": True})
    delivered = threading.Event()

    def deliver_then_release() -> None:
        assert fake.wait_for(lambda: len(fake.held) == 1)
        wait_for(lambda: client._connection._caller_reading, WAIT, message="the caller reads")
        endpoint = fake.endpoints["editor"]
        for n in range(1, 6):
            endpoint.deliver("editor", Batch(n, (Update("src", f"k{n}", n),)))
        wait_for(lambda: len(editor.batches) == 5, WAIT, message="five batches")
        delivered.set()
        fake.held[0](_CACHED, None)

    thread, errors = _in_thread(deliver_then_release)
    assert held.get(timeout=WAIT).mode == "MANUAL"  # this thread reads meanwhile
    thread.join(WAIT)
    assert not errors, errors
    assert delivered.is_set()  # all five arrived before the held answer was released
    assert [b.batch_id for b in editor.batches] == [1, 2, 3, 4, 5]
    assert dispatchers.count(threading.current_thread().name) == 5
    # Once no caller reads, the reader thread takes over again.
    fake.endpoints["editor"].deliver("editor", Batch(6, (Update("src", "k6", 6),)))
    wait_for(lambda: len(editor.batches) == 6, WAIT, message="the sixth batch")
    assert editor.batches[-1].batch_id == 6


def test_a_caller_read_times_out_and_the_next_call_still_works(client: Client,
                                                               fake: FakeCoordinator) -> None:
    held = client.coordinate("MANUAL", {"hold": True})
    started = time.monotonic()
    with pytest.raises(CallTimeoutError):
        held.get(timeout=0.1)
    elapsed = time.monotonic() - started
    assert 0.09 <= elapsed < 1.0
    assert client.status().get()["mode"] == "HYBRID"  # the reading token was handed back
    assert fake.wait_for(lambda: len(fake.held) == 1)
    fake.held[0](_CACHED, None)
    assert held.get().strategy == "conservative"


def test_connection_loss_during_a_caller_read_fails_the_future_promptly(
        fake: FakeCoordinator, runtime_dir: Path) -> None:
    srv = Server(fake, socket_path(runtime_dir)).start()
    c = connect(runtime_dir, timeout=WAIT)
    try:
        held = c.coordinate("HYBRID", {"hold": True})
        reads_before = c.statistics().caller_reads
        stopped_at: list[float] = []

        def stop_when_held() -> None:
            assert fake.wait_for(lambda: len(fake.held) == 1)
            wait_for(lambda: c._connection._caller_reading, WAIT, message="the caller reads")
            stopped_at.append(time.monotonic())
            srv.stop()

        thread, errors = _in_thread(stop_when_held)
        with pytest.raises(ConnectionLostError, match="connection to the daemon lost"):
            held.get(timeout=WAIT)
        failed_at = time.monotonic()
        thread.join(WAIT)
        assert not errors, errors
        assert failed_at - stopped_at[0] < 1.0
        assert c.statistics().caller_reads == reads_before + 1
        assert not c.connected
    finally:
        c.close()


def test_caller_reads_after_a_reconnection(runtime_dir: Path) -> None:
    first = FakeCoordinator()
    srv = Server(first, socket_path(runtime_dir)).start()
    c = connect(runtime_dir, timeout=WAIT)
    editor = Editor()
    try:
        c.register(editor).get()
        srv.stop()
        second = FakeCoordinator()
        srv = Server(second, socket_path(runtime_dir)).start()
        assert c.wait_connected(WAIT)
        assert registered(second, "editor")
        assert [c.publish("editor", f"k{i}", i).get() for i in range(5)] == [1, 2, 3, 4, 5]
        # A caller reads the new connection (its answer comes while it reads).
        reads = c.statistics().caller_reads
        held = c.coordinate("MANUAL", {"hold": True})

        def release_when_read() -> None:
            assert second.wait_for(lambda: len(second.held) == 1)
            wait_for(lambda: c._connection._caller_reading, WAIT, message="the caller reads")
            second.held[0](_CACHED, None)

        thread, errors = _in_thread(release_when_read)
        assert held.get(timeout=WAIT).strategy == "conservative"
        thread.join(WAIT)
        assert not errors, errors
        assert c.statistics().caller_reads > reads
    finally:
        c.close()
        srv.stop()


# -- coalesced writes -----------------------------------------------------------------------------


def test_coalesced_publishes_are_all_answered_in_order(client: Client,
                                                       fake: FakeCoordinator) -> None:
    client.register(Editor()).get()
    writes_before = client.statistics().writes
    n = 3000
    futures = [client.publish("editor", f"k{i}", {"i": i}) for i in range(n)]
    assert [f.get() for f in futures] == list(range(1, n + 1))
    assert [(k, p["i"]) for _m, k, p, _pr in fake.published] == [
        (f"k{i}", i) for i in range(n)]
    writes = client.statistics().writes - writes_before
    assert 1 <= writes < n // 2  # many requests per write


def test_requests_buffered_during_a_write_go_out_together(client: Client,
                                                          fake: FakeCoordinator) -> None:
    client.register(Editor()).get()
    writes_before = client.statistics().writes
    # Hold the writing side (as a slow write would): requests accumulate meanwhile.
    with client._connection._write_lock:
        futures = [client.publish("editor", f"k{i}", i) for i in range(200)]
        assert not any(f.done() for f in futures)
        assert fake.published == []
    assert [f.get() for f in futures] == list(range(1, 201))
    assert client.statistics().writes - writes_before <= 2
    assert len(fake.publish_calls) <= 3  # one read of the server, or a few


def test_a_request_nobody_waits_for_is_written_soon(client: Client,
                                                    fake: FakeCoordinator) -> None:
    client.register(Editor()).get()
    answered = threading.Event()
    started = time.monotonic()
    future = client.publish("editor", "lonely", 1)
    future.add_done_callback(lambda _: answered.set())
    assert fake.wait_for(lambda: len(fake.published) == 1, timeout=1.0)
    arrived = time.monotonic() - started
    assert fake.published == [("editor", "lonely", 1, "medium")]
    assert answered.wait(WAIT)  # read and settled by the reader thread
    assert future.get(0) == 1
    assert arrived < 0.5  # a background write (about 0.5 ms), not a waiter's


def test_a_request_buffered_while_a_caller_waits_elsewhere_is_written(
        client: Client, fake: FakeCoordinator) -> None:
    client.register(Editor()).get()
    held = client.coordinate("MANUAL", {"hold": True})
    thread, errors = _in_thread(lambda: held.get(timeout=WAIT))
    assert fake.wait_for(lambda: len(fake.held) == 1)
    # Another thread reads; this fire-and-forget publish still goes out on its own.
    future = client.publish("editor", "meanwhile", 2)
    assert fake.wait_for(lambda: len(fake.published) == 1, timeout=1.0)
    fake.held[0](_CACHED, None)
    thread.join(WAIT)
    assert not errors, errors
    assert future.get() == 1


def test_close_writes_what_is_buffered(server: Server, runtime_dir: Path,
                                       fake: FakeCoordinator) -> None:
    c = connect(runtime_dir, timeout=WAIT)
    c.register(Editor()).get()
    # The server holds a connection's messages back until it has finished a registration
    # (and drops what it held if the connection closes meanwhile): one round trip more.
    assert c.status().get()["modules"] == 1
    with c._connection._write_lock:  # nothing leaves before close
        futures = [c.publish("editor", f"last{i}", i) for i in range(3)]
    c.close()
    assert fake.wait_for(lambda: len(fake.published) == 3)
    assert [k for _m, k, _p, _pr in fake.published] == ["last0", "last1", "last2"]
    for f in futures:  # answers may not arrive before the close: then they fail
        assert f.done()


def test_awaiting_writes_and_reads(client: Client) -> None:
    import asyncio

    async def main() -> list[Any]:
        futures = [client.cache.shrink(i / 10) for i in range(10)]
        return [(await f)["args"]["fraction"] for f in futures]

    assert asyncio.run(main()) == [i / 10 for i in range(10)]
