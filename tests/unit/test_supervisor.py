"""The supervisor: restarts with pending work kept, strategies, intensity, backoff."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Any

import pykka
import pytest
from pydantic import BaseModel, ConfigDict

from modcoord.actors import (
    ActorCrashedError,
    ActorHandle,
    ActorStoppedError,
    Crash,
    ManagedActor,
    Message,
    MockClock,
    ModeSettings,
    Statistics,
)
from modcoord.actors._base import handles
from modcoord.supervisor.supervisor import (
    ChildSpec,
    ChildStatus,
    CrashChild,
    RestartPolicy,
    SetMode,
    StartChildren,
    StopChildren,
    SupervisionPolicy,
    SupervisorActor,
)


class ToySettings(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


@dataclass(frozen=True)
class Hold(Message):
    item: int


@dataclass(frozen=True)
class Reconfigurations(Message):
    """Reply: how many Reconfigure messages the toy applied."""


flushed: list[tuple[str, tuple[int, ...]]] = []
flush_lock = threading.Lock()


class _Toy(ManagedActor):
    """Holds items as 'pending work'; flushes them into ``flushed`` on stop."""

    settings_type = ToySettings

    def __init__(self, settings: Any, context: Any, takeover: Any = None) -> None:
        super().__init__(settings, context, takeover)
        self.items: list[int] = []
        self.reconfigured = 0

    @handles(Hold)
    def _hold(self, message: Hold) -> int:
        self.items.append(message.item)
        return len(self.items)

    @handles(Reconfigurations)
    def _reconfigurations(self, message: Reconfigurations) -> int:
        return self.reconfigured

    def statistics(self) -> tuple[int, ...]:
        return tuple(self.items)

    def apply_settings(self, old: Any, new: Any) -> None:
        self.reconfigured += 1

    def export_pending(self) -> tuple[int, ...]:
        return tuple(self.items)

    def restore(self, pending: Any) -> None:
        self.items = list(pending)

    def flush_pending(self) -> None:
        with flush_lock:
            flushed.append((self.actor_name, tuple(self.items)))
        self.items.clear()


def _toy(name: str) -> type[_Toy]:
    return type(f"Toy_{name}", (_Toy,), {"actor_name": name})


NAMES = ("monitor", "memory", "cache", "batcher", "debouncer")
TOYS = {n: _toy(n) for n in NAMES}


@pytest.fixture(autouse=True)
def _cleanup() -> Any:
    flushed.clear()
    yield
    pykka.ActorRegistry.stop_all(timeout=5)


def start(clock: MockClock, policy: SupervisionPolicy | None = None,
          restart: dict[str, RestartPolicy] | None = None, escalations: list[str] | None = None,
          ) -> tuple[pykka.ActorRef[Any], dict[str, ActorHandle]]:
    specs = [ChildSpec(n, TOYS[n], (restart or {}).get(n, "permanent")) for n in NAMES]
    hs = {n: ActorHandle(n) for n in NAMES}
    modes = {m: ModeSettings() for m in ("MANUAL", "HYBRID", "FULLY_AUTO")}
    sup = SupervisorActor.start(
        specs, hs, modes, "HYBRID", clock, policy=policy or SupervisionPolicy(),
        fault_injection=True, rng=random.Random(1),
        on_escalate=(escalations.append if escalations is not None else None),
    )
    sup.ask(StartChildren(), timeout=5)
    return sup, hs


def wait_restarts(sup: pykka.ActorRef[Any], name: str, n: int,
                  timeout: float = 5.0) -> dict[str, Any]:
    """Wait until ``name`` has restarted ``n`` times and is running (bounded)."""
    done = threading.Event()
    status: dict[str, Any] = {}
    for _ in range(int(timeout / 0.01)):
        status = sup.ask(ChildStatus(), block=True, timeout=2)
        if status[name]["restarts"] >= n and status[name]["state"] == "running":
            done.set()
            break
        done.wait(0.01)
    assert done.is_set(), status
    return status


def test_children_start_in_order_and_stop_in_reverse_flushing(clock: MockClock) -> None:
    sup, hs = start(clock)
    for i, n in enumerate(NAMES):
        hs[n].ask(Hold(i))
    sup.ask(StopChildren(), timeout=10)
    assert [name for name, _ in flushed] == list(reversed(NAMES))
    assert dict(flushed) == {n: (i,) for i, n in enumerate(NAMES)}
    with pytest.raises(ActorStoppedError):
        hs["cache"].tell(Hold(9))


def test_crash_restarts_with_pending_work_and_caller_gets_error(clock: MockClock) -> None:
    sup, hs = start(clock)
    hs["batcher"].ask(Hold(1))
    hs["batcher"].ask(Hold(2))
    with pytest.raises(ActorCrashedError) as info:
        hs["batcher"].ask(Crash())
    assert info.value.actor == "batcher"
    # Sent during the restart window: buffered by the handle, handled by the successor.
    assert hs["batcher"].ask(Hold(3), timeout=5) == 3
    status = wait_restarts(sup, "batcher", 1)
    assert hs["batcher"].ask(Statistics()) == (1, 2, 3)
    assert status["cache"]["restarts"] == 0


def test_base_exception_is_contained(clock: MockClock) -> None:
    sup, hs = start(clock)
    hs["cache"].ask(Hold(7))
    with pytest.raises(ActorCrashedError):
        hs["cache"].ask(Crash(kind="base_exception"))
    wait_restarts(sup, "cache", 1)
    for n in NAMES:
        assert hs[n].is_alive(), n
    assert hs["cache"].ask(Statistics()) == (7,)


def test_tell_crash_is_restarted_and_later_messages_kept(clock: MockClock) -> None:
    sup, hs = start(clock)
    hs["debouncer"].tell(Hold(1))
    hs["debouncer"].tell(Crash())
    hs["debouncer"].tell(Hold(2))
    assert hs["debouncer"].ask(Statistics(), timeout=5) == (1, 2)
    wait_restarts(sup, "debouncer", 1)


@pytest.mark.parametrize(
    ("strategy", "crashed", "expected"),
    [
        ("one_for_one", "cache", {"cache"}),
        ("one_for_all", "cache", set(NAMES)),
        ("rest_for_one", "cache", {"cache", "batcher", "debouncer"}),
    ],
)
def test_strategies_restart_the_right_children_keeping_work(
    clock: MockClock, strategy: str, crashed: str, expected: set[str]
) -> None:
    sup, hs = start(clock, SupervisionPolicy(strategy=strategy))  # type: ignore[arg-type]
    for i, n in enumerate(NAMES):
        hs[n].ask(Hold(i))
    sup.ask(CrashChild(crashed), timeout=5)
    wait_restarts(sup, crashed, 1)
    status = sup.ask(ChildStatus(), block=True, timeout=5)
    restarted = {n for n in NAMES if status[n]["restarts"] == 1}
    assert restarted == expected
    for i, n in enumerate(NAMES):
        assert hs[n].ask(Statistics()) == (i,), n
    assert not flushed  # handed over, not flushed


def test_backoff_first_at_once_then_waits_on_the_clock(clock: MockClock) -> None:
    policy = SupervisionPolicy(max_restarts=10, within_s=60, backoff_initial_s=0.5,
                               backoff_max_s=4.0, jitter=0.0)
    sup, hs = start(clock, policy)
    sup.ask(CrashChild("memory"), timeout=5)
    wait_restarts(sup, "memory", 1)
    sup.ask(CrashChild("memory"), timeout=5)
    hs["memory"].ask_future(Statistics())  # forces the crash to be processed first
    status = sup.ask(ChildStatus(), block=True, timeout=5)
    for _ in range(200):
        status = sup.ask(ChildStatus(), block=True, timeout=5)
        if status["memory"]["state"] == "restarting":
            break
    assert status["memory"]["state"] == "restarting"
    clock.advance(0.49)
    assert sup.ask(ChildStatus(), block=True, timeout=5)["memory"]["restarts"] == 1
    clock.advance(0.02)
    wait_restarts(sup, "memory", 2)


def test_intensity_exceeded_escalates_and_flushes(clock: MockClock) -> None:
    escalations: list[str] = []
    policy = SupervisionPolicy(max_restarts=2, within_s=10, backoff_initial_s=0.0)
    sup, hs = start(clock, policy, escalations=escalations)
    hs["batcher"].ask(Hold(42))
    for n in range(1, 3):
        sup.ask(CrashChild("batcher"), timeout=5)
        wait_restarts(sup, "batcher", n)
    sup.ask(CrashChild("batcher"), timeout=5)
    for _ in range(500):
        if escalations:
            break
        threading.Event().wait(0.01)
    assert escalations and "intensity" in escalations[0]
    assert ("batcher", (42,)) in flushed
    with pytest.raises(ActorStoppedError):
        hs["batcher"].tell(Hold(1))


def test_restarts_outside_the_window_do_not_count(clock: MockClock) -> None:
    escalations: list[str] = []
    policy = SupervisionPolicy(max_restarts=1, within_s=10, backoff_initial_s=0.0)
    sup, _ = start(clock, policy, escalations=escalations)
    sup.ask(CrashChild("cache"), timeout=5)
    wait_restarts(sup, "cache", 1)
    clock.advance(11)
    sup.ask(CrashChild("cache"), timeout=5)
    wait_restarts(sup, "cache", 2)
    assert not escalations


def test_temporary_child_is_not_restarted(clock: MockClock) -> None:
    sup, hs = start(clock, restart={"monitor": "temporary"})
    with pytest.raises(ActorCrashedError):
        hs["monitor"].ask(Crash())
    for _ in range(500):
        if sup.ask(ChildStatus(), block=True, timeout=5)["monitor"]["state"] == "stopped":
            break
    assert sup.ask(ChildStatus(), block=True, timeout=5)["monitor"]["state"] == "stopped"
    with pytest.raises(ActorStoppedError):
        hs["monitor"].ask(Statistics())


def test_set_mode_reconfigures_every_child(clock: MockClock) -> None:
    sup, hs = start(clock)
    assert sup.ask(SetMode("MANUAL"), timeout=5) == "HYBRID"
    for n in NAMES:
        assert hs[n].ask(Reconfigurations()) == 1, n
    status = sup.ask(ChildStatus(), block=True, timeout=5)
    assert all(s["alive"] for s in status.values())


def test_fault_injection_refused_when_disabled(clock: MockClock) -> None:
    specs = [ChildSpec(n, TOYS[n]) for n in NAMES]
    hs = {n: ActorHandle(n) for n in NAMES}
    modes = {m: ModeSettings() for m in ("MANUAL", "HYBRID", "FULLY_AUTO")}
    sup = SupervisorActor.start(specs, hs, modes, "HYBRID", clock, fault_injection=False)
    sup.ask(StartChildren(), timeout=5)
    from modcoord.actors.errors import InvalidMessageError

    with pytest.raises(InvalidMessageError, match="allow-fault-injection"):
        sup.ask(CrashChild("cache"), timeout=5)
