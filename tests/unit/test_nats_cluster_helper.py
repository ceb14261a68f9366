"""How the NATS test cluster finds its binary (tests/nats_cluster.py): the override first,
and a missing binary skips the test, or fails it when the run requires the tool."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats_cluster
import pytest


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MODCOORD_NATS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(nats_cluster, "DEBIAN_BINARY", str(tmp_path / "nowhere"))


def test_the_override_comes_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "my-nats-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("MODCOORD_NATS_SERVER", str(fake))
    assert nats_cluster.find_nats_server() == str(fake)


@pytest.mark.usefixtures("no_server")
def test_a_missing_server_skips_saying_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODCOORD_REQUIRE_TOOLS", "promtool lnav")
    assert nats_cluster.find_nats_server() is None
    with pytest.raises(pytest.skip.Exception, match="scripts/get-tools"):
        nats_cluster.nats_server_or_skip()


@pytest.mark.usefixtures("no_server")
def test_a_missing_server_fails_when_the_run_requires_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODCOORD_REQUIRE_TOOLS", "promtool nats-server")
    with pytest.raises(pytest.fail.Exception, match="MODCOORD_REQUIRE_TOOLS lists"):
        nats_cluster.nats_server_or_skip()


def test_a_cluster_of_no_nodes_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one node"):
        nats_cluster.NatsCluster(0, binary="/bin/true")


def test_run_bounded_returns_the_result_and_ends_what_the_scenario_left() -> None:
    left: list[asyncio.Task[bool]] = []

    async def scenario() -> int:
        left.append(asyncio.create_task(asyncio.Event().wait()))  # never awaited
        await asyncio.sleep(0)
        return 7

    assert nats_cluster.run_bounded(scenario(), 10, "a scenario") == 7
    assert left[0].cancelled()


@pytest.mark.timeout(10)
def test_run_bounded_fails_a_hung_scenario_with_where_it_hung(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A scenario stuck for good (a library's close ignoring its cancellation): the test
    fails within the bound, naming the coroutine it was stuck in; it does not hang."""
    monkeypatch.setattr(nats_cluster, "CANCEL_WAIT_S", 0.1)
    release = asyncio.Event()

    async def stuck_in_close() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()  # ignores its cancellation for good

    async def scenario() -> None:
        await stuck_in_close()

    with pytest.raises(AssertionError, match=r"(?s)not done within 0\.2 s.*stuck_in_close"):
        nats_cluster.run_bounded(scenario(), 0.2, "a hung scenario")


@pytest.mark.timeout(10)
def test_await_bounded_fails_a_hung_stop_with_where_it_hung() -> None:
    """A stop that hangs inside a running scenario fails naming the coroutine it waited
    in (not a bare TimeoutError), and the awaited task is cancelled."""
    cancelled = asyncio.Event()

    async def stop_waiting_on_a_dead_socket() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def scenario() -> None:
        with pytest.raises(AssertionError,
                           match=r"(?s)a stop: not done within 0\.2 s.*dead_socket"):
            await nats_cluster.await_bounded(stop_waiting_on_a_dead_socket(), 0.2, "a stop")
        assert cancelled.is_set()

    asyncio.run(scenario())


@pytest.mark.timeout(10)
def test_await_bounded_returns_the_result_in_time() -> None:
    async def quick() -> int:
        await asyncio.sleep(0)
        return 5

    async def scenario() -> int:
        return await nats_cluster.await_bounded(quick(), 5, "quick")

    assert asyncio.run(scenario()) == 5
