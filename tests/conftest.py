"""Shared fixtures: a mock clock for unit tests, real daemons for integration tests (see
daemon_harness.py; actor unit tests build their actors with actor_harness.py, tests of the
server in-process use server_harness.py, whose fixtures ``runtime_dir``, ``fake``,
``server`` and ``client`` are visible to every test: a module that needs its own, a
server with a MockClock for instance, defines it, and its definition wins).

The tree is checked at collection (:func:`pytest_collection_modifyitems`): every test in
``integration/`` is marked ``integration``, and no test in ``unit/`` is, nor asks for a
real daemon (the ``daemon`` or ``daemon_factory`` fixture). A test in the wrong place stops
the run with a list of what to move or mark.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest
from daemon_harness import DaemonFactory, DaemonProcess, copy_configs
from nats_cluster import NatsCluster
from server_harness import client, fake, runtime_dir, server  # noqa: F401 - fixtures

from modcoord.actors import MockClock

TESTS_DIR = Path(__file__).resolve().parent
UNIT_DIR = TESTS_DIR / "unit"
INTEGRATION_DIR = TESTS_DIR / "integration"
DAEMON_FIXTURES = frozenset({"daemon", "daemon_factory"})


def misplaced(item: pytest.Item) -> str | None:
    """Why ``item`` does not belong in its directory, or ``None`` when it does."""
    path = Path(str(item.path)).resolve()
    marked = item.get_closest_marker("integration") is not None
    if path.is_relative_to(INTEGRATION_DIR) and not marked:
        return "in integration/ but not marked integration"
    if path.is_relative_to(UNIT_DIR):
        if marked:
            return "in unit/ but marked integration (move it to integration/)"
        daemons = DAEMON_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if daemons:
            return f"in unit/ but starts a daemon ({', '.join(sorted(daemons))})"
    return None


def pytest_configure(config: pytest.Config) -> None:
    """Give SIGINT its default handler again when pytest was started with it ignored (a
    background job of a non-interactive shell): the CLI processes the tests start inherit
    the disposition, and the ctrl-c tests would see their interrupt ignored."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse the run when a collected test sits in the wrong directory (see the module
    docstring).

    Raises:
        pytest.UsageError: naming each misplaced test and why.
    """
    wrong = [f"{item.nodeid}: {why}" for item in items if (why := misplaced(item))]
    if wrong:
        raise pytest.UsageError("tests in the wrong directory (unit/: fakes and the test's "
                                "clock; integration/: real daemons and processes, marked "
                                "integration):\n  " + "\n  ".join(wrong))


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    """Stop every actor the test started, at its teardown."""
    yield
    pykka.ActorRegistry.stop_all()


@pytest.fixture(autouse=True)
def _private_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Daemons started without ``--state-dir`` keep their history in the test's own
    directory, never in the user's ``~/.local/state``."""
    monkeypatch.setenv("MODCOORD_STATE_DIR", str(tmp_path / "state-default"))


@pytest.fixture
def clock() -> MockClock:
    return MockClock()


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A copy of the packaged config files, for a test to edit."""
    return copy_configs(tmp_path / "configs")


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[DaemonFactory]:
    """Start real daemons (``factory(*start_args, root=, env=, configs=, preexec_fn=,
    start=True)``, see :class:`DaemonProcess`); all are stopped at teardown."""
    made: list[DaemonProcess] = []

    def factory(*extra: str, root: Path | None = None, start: bool = True,
                **kwargs: Any) -> DaemonProcess:
        d = DaemonProcess(root or tmp_path / f"d{len(made)}", *extra, **kwargs)
        made.append(d)
        return d.start() if start else d

    yield factory
    for d in made:
        d.stop()


@pytest.fixture
def daemon(daemon_factory: DaemonFactory) -> DaemonProcess:
    """One real daemon, started with fault injection allowed."""
    return daemon_factory("--allow-fault-injection")


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A ready 3-node NATS cluster with JetStream on loopback, shared by the module's tests
    (skips without a nats-server binary, see nats_cluster.py). A test that kills a node
    restarts it before it ends, or uses ``nats_cluster_factory`` instead."""
    cluster = NatsCluster(3, root=tmp_path_factory.mktemp("nats"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def nats_cluster_factory(tmp_path: Path) -> Iterator[Callable[..., NatsCluster]]:
    """Start fresh NATS clusters for one test (``factory(n=3, no_advertise=True)``, started
    and ready); all are stopped at teardown."""
    made: list[NatsCluster] = []

    def factory(n: int = 3, *, no_advertise: bool = True) -> NatsCluster:
        cluster = NatsCluster(n, root=tmp_path / f"nats{len(made)}", no_advertise=no_advertise)
        made.append(cluster)
        return cluster.start()

    yield factory
    for cluster in made:
        cluster.stop()
